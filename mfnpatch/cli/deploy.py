"""Commands for deployment: convert slim, ncnn, verify; bench."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mfnpatch.cli.app import (
    CTX,
    JsonOpt,
    app,
    convert_app,
    deploy_app,
    emit_json,
    err,
    out,
    write_stdout,
)
from mfnpatch.errors import (
    EXIT_OK,
    MfnError,
)

# --------------------------------------------------------------------------------------------
# convert / bench


@convert_app.command("slim")
def convert_slim(
    checkpoint: Annotated[str, typer.Argument(help="PREFIX,EPOCH of a training checkpoint.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="New prefix (default PREFIX-slim).")] = None,
):
    """Keep fc1_output, drop fc7*: write PREFIX-slim-symbol.json and -0000.params (the training symbol stays)."""
    from mfnpatch.deploy.mxnet import slim

    sym, params = slim(checkpoint, output)
    out.print(f"wrote {escape(str(sym))} and {escape(str(params))}")
    return EXIT_OK


@convert_app.command("ncnn")
def convert_ncnn_cmd(
    checkpoint: Annotated[str, typer.Argument(help="PREFIX,EPOCH (a training or slim checkpoint).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the converted models.")],
    verify_after: Annotated[
        bool, typer.Option("--verify", help="Then verify all engines (writes verify.json).")
    ] = False,
    flush_denormals: Annotated[
        bool,
        typer.Option(
            "--flush-denormals",
            help="Zero every weight below 1e-30 (denormals included) before converting: they slow ARM CPUs.",
        ),
    ] = False,
    as_json: JsonOpt = False,
):
    """MXNet -> ONNX -> ncnn (pnnx, BatchNorm folded), plus the unfolded ncnn model the seed's mxnet2ncnn made.

    Reports how many weights are denormal or below 1e-30, per parameter in convert.json (--flush-denormals
    zeroes them, for every engine)."""
    from mfnpatch.deploy.convert import convert_ncnn

    CTX.json = as_json
    if as_json:
        r = convert_ncnn(checkpoint, output, verify_after=verify_after, flush_denormals=flush_denormals)
    else:
        with err.status("converting …") as st:
            r = convert_ncnn(
                checkpoint,
                output,
                verify_after=verify_after,
                flush_denormals=flush_denormals,
                on_step=lambda s: st.update(escape(s)),
            )
    code = r.exit_code
    if as_json:
        from dataclasses import asdict

        emit_json(asdict(r) | {"exit_code": code})
        return code
    out.print(f"[green]converted[/] {escape(checkpoint)} -> {escape(str(output))} in {r.seconds:.1f} s")
    out.print(
        f"  ONNX      {escape(r.onnx)} (fixes: {len(r.fixes)}; onnxruntime vs MXNet cosine "
        f"{r.onnx_check['min_cosine']:.7f})"
    )
    for label, m in (("folded", r.folded), ("unfolded", r.unfolded)):
        layers = sum(m["layers"].values())
        out.print(f"  ncnn {label:8s} {escape(m['param'])}: {layers} layers, {m['batchnorm']} BatchNorm")
    if r.denormals is not None:
        _print_denormals(r.denormals)
    if r.verify:
        _print_verify(r.verify)
    return code


def _print_denormals(d: dict) -> None:
    if not d["below"]:
        out.print(f"  weights   none of {d['weights']} is denormal or below 1e-30")
        return
    worst = sorted(d["params"], key=lambda p: -p["below"])[:3]
    where = ", ".join(f"{p['name']} {p['below']}" for p in worst) + (", …" if len(d["params"]) > 3 else "")
    what = "zeroed" if d["flushed"] else "kept (--flush-denormals zeroes them)"
    out.print(
        f"  weights   {d['below']} of {d['weights']} below 1e-30 ({d['denormal']} denormal) in "
        f"{len(d['params'])} parameter(s): {escape(where)}; {what}"
    )


def _print_verify(v: dict) -> None:
    for engine, c in v["engines"].items():
        ok = c["min_cosine"] >= v["threshold"]
        out.print(
            f"  {'[green]ok[/]  ' if ok else '[red]FAIL[/]'} {engine:14s} cosine min {c['min_cosine']:.7f}, "
            f"max |diff| {c['max_abs_diff']:.3g} (values up to {c['max_abs_value']:.3g})"
        )
    verdict = "[green]PASS[/]" if v["passed"] else "[red]FAIL[/]"
    out.print(
        f"{verdict}: {v['inputs']} inputs ({v['face_like']} face-like, {v['inputs'] - v['face_like']} noise), "
        f"every engine cosine >= {v['threshold']}: min {v['min_cosine']:.7f}"
    )


@convert_app.command("verify")
def convert_verify(
    model_dir: Annotated[Path, typer.Argument(help="A directory made by mfnpatch convert ncnn.")],
    inputs: Annotated[int, typer.Option("--inputs", min=8, help="How many inputs (face-like and noise).")] = 10,
    as_json: JsonOpt = False,
):
    """Embeddings of MXNet, onnxruntime and both ncnn models on the same inputs: cosine >= 0.9999 each."""

    from mfnpatch.deploy.verify import verify as do_verify

    CTX.json = as_json
    result = do_verify(model_dir, inputs)
    v, code = asdict(result), result.exit_code
    if as_json:
        emit_json(v | {"exit_code": code})
        return code
    _print_verify(v)
    return code


@app.command("bench")
def bench_cmd(
    model_dir: Annotated[Path, typer.Argument(help="A directory made by mfnpatch convert ncnn.")],
    threads: Annotated[str, typer.Option("--threads", help="Thread counts, comma separated.")] = "1,2",
    loops: Annotated[int, typer.Option("--loops", min=1, help="Timed runs per engine and thread count.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 3,
    as_json: JsonOpt = False,
):
    """benchncnn-style latency (min/max/avg ms, batch 1): ncnn folded and unfolded, onnxruntime, MXNet.

    Writes MODEL_DIR/bench.json; shows the seed's Snapdragon 625 numbers and this machine's FLOP bound.
    """

    from mfnpatch.deploy.bench import bench, table

    CTX.json = as_json
    try:
        counts = [int(t) for t in threads.split(",") if t.strip()]
    except ValueError:
        raise MfnError(f"--threads {threads!r}: write thread counts like 1,2") from None
    with err.status("benchmarking …"):
        res = bench(model_dir, counts, loops, warmup, reference=_bench_reference())
    if as_json:
        emit_json(asdict(res))
        return EXIT_OK
    write_stdout(table(res) + "\n")
    return EXIT_OK


def _bench_reference() -> dict:
    """The seed's benchncnn numbers (recipes/expected.yaml), printed beside this machine's as context."""
    from mfnpatch.logs.expected import load_expected

    try:
        b = load_expected().bench
    except MfnError:
        return {}
    return {"source": b.source, "device": b.device, "model": b.model,
            "threads": {t: r.model_dump() for t, r in b.threads.items()},
            "folding_gain_estimate": b.folding_gain_estimate}  # fmt: skip


@deploy_app.command("align")
def deploy_align(
    image: Annotated[Path, typer.Argument(help="A photo (JPEG, PNG, BMP), read as OpenCV's imread reads it (BGR).")],
    landmarks: Annotated[
        str,
        typer.Option(
            "--landmarks",
            help="x1,y1,…,x5,y5 in image pixels: left eye, right eye, nose tip, left and right mouth corners "
            "(what a face detector such as RetinaFace or MTCNN gives).",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The 112x112 crop (.png to compare pixels).")],
    as_json: JsonOpt = False,
):
    """The reference 112x112 crop: the similarity transform of the five landmarks onto InsightFace's template
    (as its norm_crop does), so an app's own alignment can be compared with it pixel for pixel.

    Example: mfnpatch deploy align face.jpg --landmarks 180,210,260,208,222,255,190,300,252,298 -o crop.png
    """
    from mfnpatch.deploy.align import align, parse_landmarks

    CTX.json = as_json
    a = align(image, parse_landmarks(landmarks), output)
    if as_json:
        emit_json(asdict(a))
        return EXIT_OK
    m = a.matrix
    out.print(f"wrote {escape(a.output)} (112x112, from {escape(a.image)}, {a.image_size[1]}x{a.image_size[0]})")
    out.print(f"  M = [[{m[0][0]:.6f}, {m[0][1]:.6f}, {m[0][2]:.4f}], [{m[1][0]:.6f}, {m[1][1]:.6f}, {m[1][2]:.4f}]]")
    out.print(f"  landmarks land {a.residual_px:.2f} px from the template on average")
    return EXIT_OK
