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
    progress_bar,
    write_stdout,
)
from mfnpatch.errors import (
    EXIT_OK,
    MfnError,
    UsageError,
)

# --------------------------------------------------------------------------------------------
# convert / bench

ArmOpt = Annotated[
    str | None,
    typer.Option(
        "--arm",
        metavar="CPUS",
        help="Also what phones compute: the model through the aarch64 build of the same ncnn on emulated CPU "
        "classes (cortex-a53, cortex-a76, max, comma separated, or all), under QEMU (the arm64-qemu environment: "
        "mfnpatch env create arm64-qemu --prefix DIR). Slow: about 1 s of CPU per image in fp32, 4-5 s with fp16 "
        "arithmetic.",
    ),
]
ArmEnvOpt = Annotated[
    Path | None,
    typer.Option("--arm-env", help="The arm64-qemu environment (default: $MFNPATCH_ARM_ENV, else "
                 "~/.local/share/mfnpatch/arm64-qemu)."),
]  # fmt: skip


def _arm(cpus: str | None, env: Path | None) -> list[str]:
    """--arm's CPU classes (checked), with --arm-env taken as the environment for this command."""
    import os

    from mfnpatch.deploy.registry import parse_targets

    if env is not None:
        os.environ["MFNPATCH_ARM_ENV"] = str(Path(env).absolute())
    if cpus is None:
        if env is not None:
            raise UsageError("--arm-env without --arm: say which CPU classes to run (--arm all)")
        return []
    try:
        return parse_targets(cpus)
    except MfnError as e:
        raise UsageError(e.message, hint=e.hint) from None


def _step_printer(st):
    """convert's steps: the status line on a terminal, one line each elsewhere (a log file shows progress)."""
    if err.is_terminal:
        return lambda s: st.update(escape(s))
    return lambda s: err.print(escape(s))


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
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="PREFIX,EPOCH (a training or slim checkpoint), or MODEL.onnx (the PyTorch lineage: arcface_torch's "
            "torch2onnx.py output)."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the converted models.")],
    verify_after: Annotated[
        bool, typer.Option("--verify", help="Then verify all engines (writes verify.json).")
    ] = False,
    onnx_input_norm: Annotated[
        str,
        typer.Option(
            "--onnx-input-norm",
            metavar="MEAN,STD",
            help="For an ONNX source: the input its graph takes is (x - MEAN) / STD of 0..255 RGB pixels "
            "(arcface_torch: 127.5,127.5); that step is put in front of the graph, so every converted model takes "
            "0..255 as the MXNet lineage's do.",
        ),
    ] = "127.5,127.5",
    flush_denormals: Annotated[
        bool,
        typer.Option(
            "--flush-denormals",
            help="Zero every weight below 1e-30 (denormals included) before converting: they slow ARM CPUs.",
        ),
    ] = False,
    evaluate_data: Annotated[
        Path | None,
        typer.Option(
            "--evaluate",
            metavar="DATA",
            help="Then measure every engine on DATA's verification sets (convert evaluate; writes evaluate.json "
            "and the thresholds and golden inputs of deploy.json).",
        ),
    ] = None,
    sets: SetsOpt = "lfw,cfp_fp,agedb_30",
    threads: ThreadsOpt = None,
    arm: ArmOpt = None,
    arm_inputs: Annotated[
        int, typer.Option("--arm-inputs", min=2, help="Test inputs each emulated CPU class is checked on.")
    ] = 8,
    arm_fix: Annotated[
        bool,
        typer.Option("--arm-fix/--no-arm-fix", help="Mask the layers an emulated CPU computes wrongly (default)."),
    ] = True,
    arm_env: ArmEnvOpt = None,
    lineage: Annotated[
        str | None,
        typer.Option(
            "--lineage",
            metavar="NAME",
            help="The lineage that trained the model, said in deploy.json (default: the one whose export it is: "
            "insightface_mxnet for a checkpoint, arcface_torch for an ONNX graph).",
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """MXNet -> ONNX -> ncnn (pnnx, BatchNorm folded), plus the unfolded ncnn model the seed's mxnet2ncnn made;
    or ONNX -> ncnn for the PyTorch lineage (onnxruntime on the source graph is then the reference).

    Reports how many weights are denormal or below 1e-30, per parameter in convert.json (--flush-denormals
    zeroes them, for every engine, and keeps the original weights in unflushed/ for evaluate and bench).

    With --arm, each emulated phone CPU class runs the folded model with ncnn's default options (what an app gets;
    on ARMv8.2, fp16 arithmetic) against ncnn float32 here; a layer it computes wrongly is named and masked in the
    .param (ncnn's per-layer feature mask, 31=), and checked again; deploy.json records, per CPU class, the options
    verified and the layers masked and why. About 2 minutes for the three classes with 8 inputs on 2 cores.

    Example: mfnpatch convert ncnn models/model-y1-arcface,40 -o models/ncnn --verify --arm all"""
    from mfnpatch.deploy.convert import convert_ncnn

    CTX.json = as_json
    try:
        mean, std = (float(x) for x in onnx_input_norm.split(","))
    except ValueError:
        raise UsageError(f"--onnx-input-norm {onnx_input_norm!r}: give MEAN,STD, e.g. 127.5,127.5") from None
    set_names = _sets(sets) if evaluate_data is not None else []
    nthreads = _threads(threads)
    targets = _arm(arm, arm_env)
    kw = {"verify_after": verify_after, "flush_denormals": flush_denormals, "onnx_norm": (mean, std),
          "arm": targets, "arm_inputs": arm_inputs, "arm_fix": arm_fix, "lineage": lineage}  # fmt: skip
    if as_json:
        r = convert_ncnn(checkpoint, output, **kw)  # type: ignore[arg-type]
    else:
        with err.status("converting …") as st:
            r = convert_ncnn(checkpoint, output, on_step=_step_printer(st), **kw)  # type: ignore[arg-type]
    code = r.exit_code
    ev = None
    if evaluate_data is not None:
        ev = _run_evaluate(output, evaluate_data, set_names, None, nthreads, as_json)
        code = max(code, ev.exit_code)
    if as_json:
        emit_json(asdict(r) | {"evaluate": ev.to_dict() if ev else None, "exit_code": code})
        return code
    out.print(f"[green]converted[/] {escape(checkpoint)} -> {escape(str(output))} in {r.seconds:.1f} s "
              f"(trained by {r.lineage})")  # fmt: skip
    ref = "the ONNX source" if r.source_kind == "onnx" else "MXNet"
    out.print(
        f"  ONNX      {escape(r.onnx)} (fixes: {len(r.fixes)}; onnxruntime vs {ref} cosine "
        f"{r.onnx_check['min_cosine']:.7f})"
    )
    for label, m in (("folded", r.folded), ("unfolded", r.unfolded)):
        if not m:
            continue
        layers = sum(m["layers"].values())
        out.print(f"  ncnn {label:8s} {escape(m['param'])}: {layers} layers, {m['batchnorm']} BatchNorm")
    if r.denormals is not None:
        _print_denormals(r.denormals)
    if r.verify:
        _print_verify(r.verify)
    for t, c in (r.arm or {}).items():
        _print_target(t, c)
    if ev is not None:
        _print_evaluate(ev)
    return code


def _print_target(name: str, c: dict) -> None:
    from mfnpatch.finite import is_finite

    def cos(x) -> str:
        return f"{x:.6f}" if is_finite(x) else "nan"

    mark = "[green]ok[/]  " if c["holds"] else "[red]FAIL[/]"
    fixed = f" -> {cos(c['min_cosine'])} with {len(c['masked'])} layer(s) masked" if c["masked"] else ""
    out.print(f"  {mark} {name:10s} {escape(c['options'])}: min cosine {cos(c['min_cosine_before'])}{fixed} "
              f"vs ncnn float32 here ({c['inputs']} inputs)")  # fmt: skip
    for m in c["masked"]:
        out.print(f"       masked {escape(m['layer'])} ({escape(m['type'])}, 31={m['featmask']}): {escape(m['why'])}")
    if c.get("note"):
        out.print(f"       {escape(c['note'])}")


SetsOpt = Annotated[str, typer.Option("--sets", help="Verification sets, comma separated: DATA/<set>.bin for each.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="Threads per engine (default: every core; MXNet's if not yet started)."),
]


def _sets(text: str) -> list[str]:
    from mfnpatch.deploy.evaluate import parse_sets

    try:
        return parse_sets(text)
    except MfnError as e:
        raise UsageError(e.message) from None


def _threads(threads: int | None) -> int:
    """--threads, and MXNet's thread count with it: MXNet reads OMP_NUM_THREADS once, when it is imported."""
    import os
    import sys

    n = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if "mxnet" not in sys.modules and (threads is not None or "OMP_NUM_THREADS" not in os.environ):
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def _run_evaluate(model_dir: Path, data: Path, sets: list[str], engines: list[str] | None, threads: int, quiet: bool,
                  arm: list[str] | None = None, arm_pairs: int = 20):  # fmt: skip
    from mfnpatch.deploy.evaluate import evaluate

    with progress_bar(not quiet, lines=True) as progress:
        return evaluate(model_dir, data, sets, engines, threads, on_progress=progress, arm=arm, arm_pairs=arm_pairs)


def _print_evaluate(ev) -> None:
    ref = "MXNet" if ev.reference == "mxnet" else ev.reference
    w = max([8, *(len(r.engine) for r in ev.rows)])
    out.print(f"{'set':9s} {'engine':{w}s} {'accuracy':>17s} {'threshold (cos)':>16s} {'vs ' + ref:>9s} "
              f"{'min cosine':>10s} {'images/s':>8s}")  # fmt: skip
    for r in ev.rows:
        delta = "–" if r.delta is None else f"{r.delta:+.5f}"
        cos = "–" if r.min_cosine is None else f"{r.min_cosine:.7f}"
        flag = "" if r.holds else "  [red]outside[/]"
        acc, thr = f"{r.accuracy:.5f} ± {r.std:.5f}", f"{r.threshold:.3f} ({r.threshold_cosine:.3f})"
        speed = f"{r.images_per_s:8,.2f}" if r.emulated else f"{r.images_per_s:8,.0f}"
        out.print(f"{escape(r.set):9s} {escape(r.engine):{w}s} {acc:>17s} {thr:>16s} {delta:>9s} {cos:>10s} "
                  f"{speed}{flag}")  # fmt: skip
    arm_rows = [r for r in ev.rows if r.emulated]
    if arm_rows:
        samples = sorted({f"{r.set}: {r.sampled}" for r in arm_rows})
        out.print(f"  emulated  the rows '@ CPU' ran ncnn's ARM kernels under QEMU on a sample of each set, judged "
                  f"against {ref} on the same images ({escape('; '.join(samples))}); their images/s are emulation's "
                  "cost, not a phone's latency")  # fmt: skip
    sets = ", ".join(f"{s['name']} {s['pairs']} pairs" for s in ev.sets)
    out.print(f"  sets      {escape(sets)} (10 folds, with flip, as the pinned verification.py); "
              f"{ev.threads} thread(s)")  # fmt: skip
    out.print(f"  fp16      {escape(ev.fp16['note'])}")
    dn = ev.denormals
    kept = " (converted with --flush-denormals: the rows 'denormals kept' are the original weights)"
    out.print(f"  weights   {dn['below_1e-30']} of {dn['weights']} below 1e-30"
              + (kept if dn["flushed_at_conversion"] else ""))  # fmt: skip
    for name, th in ev.thresholds.get("sets", {}).items():
        fars = "; ".join(
            f"FAR {f['far']:g}: cosine > {f['threshold']:.3f}, TAR {f['tar']:.4f}"
            + ("" if f["resolvable"] else f" (not measurable with {th['different']} different pairs)")
            for f in th["far"]
        )
        out.print(f"  {escape(name):9s} best accuracy at cosine > {th['best_accuracy_threshold']:.3f} "
                  f"({th['best_accuracy']:.4f}); {escape(fars)}")  # fmt: skip
    out.print(f"  deploy.json thresholds and {len(ev.golden)} golden inputs (golden/*.png with {ref}'s embeddings) "
              "written")  # fmt: skip
    tol = ev.tolerance
    rule = (f"accuracy within {tol['accuracy']} (or 1 pair) of {ref}'s, every embedding's cosine >= "
            f"{tol['cosine']['fp32']} (fp32) / {tol['cosine']['fp16']} (fp16)")  # fmt: skip
    if ev.passed:
        out.print(f"[green]PASS[/]: every engine holds on every set: {rule}")
        return
    out.print(f"[red]FAIL[/]: {escape(', '.join(ev.outside))} outside ({rule})")
    for r in ev.rows:
        if not r.holds:
            out.print(f"  {escape(r.set)} {escape(r.engine)}: {escape(r.why)}")
    for engine, div in ev.divergence.items():
        out.print(f"  {escape(engine)} on {escape(div['probe'])}: {escape(div['text'])}")


@convert_app.command("evaluate")
def convert_evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A directory made by mfnpatch convert ncnn.")],
    data: Annotated[Path, typer.Option("--data", help="The directory holding the verification sets (<set>.bin).")],
    sets: SetsOpt = "lfw,cfp_fp,agedb_30",
    engines: Annotated[
        str | None,
        typer.Option("--engines", help="Engines beside MXNet, comma separated (default: all five)."),
    ] = None,
    threads: ThreadsOpt = None,
    arm: ArmOpt = None,
    arm_pairs: Annotated[
        int,
        typer.Option(
            "--arm-pairs",
            min=20,
            help="Pairs of each set the emulated CPUs compute (spread over the 10 "
            "folds, half matching; each image once, unflipped, as an app does).",
        ),
    ] = 20,
    arm_env: ArmEnvOpt = None,
    as_json: JsonOpt = False,
):
    """Accuracy of the converted models on the verification sets, through every engine.

    The pinned verification.py's protocol (10 folds, with flip: accuracy ± std, the best threshold) on each set
    for MXNet, onnxruntime, ncnn folded and unfolded, each ncnn model with fp16 storage and arithmetic off and
    on (what ARMv8.2 phones run), and, where the model has denormal weights, before and after flushing them.
    Exit 0 only when every engine is within the tolerance of MXNet's row; an engine outside is taken apart layer
    by layer and the first layer whose output diverges from MXNet's is named. Writes evaluate.json, and the
    cosine thresholds (best accuracy, FAR 1e-3 and 1e-4 with TAR) and golden inputs into deploy.json.

    How long, measured on 2 cores: per verification set of 6,000 pairs (12,000 images, twice with the flips) about
    7 minutes for MXNet, 4.5 for onnxruntime and 3 for each ncnn engine: some 25 minutes a set for every engine,
    over an hour for the three sets. --sets lfw and --engines 'ncnn folded' make it shorter; where no terminal is
    attached, a progress line with an ETA is printed every 30 s (MFNPATCH_PROGRESS_EVERY). With --arm, each
    emulated CPU class adds its engines on --arm-pairs pairs of each set: about 1.5 s of CPU per image in fp32 and
    5-6 s with fp16 or bf16 arithmetic (20 pairs on the three classes: about 10 minutes on 2 cores); the rows say
    what was sampled, and deploy.json's targets record each class's accuracy.

    Example: mfnpatch convert evaluate models/ncnn --data ~/datasets/faces_ms1m_112x112 --arm all
    """
    CTX.json = as_json
    set_names = _sets(sets)
    targets = _arm(arm, arm_env)
    names = None
    if engines is not None:
        names = [e.strip() for e in engines.split(",") if e.strip()]
    ev = _run_evaluate(model_dir, data, set_names, names, _threads(threads), as_json, targets, arm_pairs)
    if as_json:
        emit_json(ev.to_dict())
        return ev.exit_code
    _print_evaluate(ev)
    return ev.exit_code


@convert_app.command("int8")
def convert_int8(
    model_dir: Annotated[Path, typer.Argument(help="A directory made by mfnpatch convert ncnn.")],
    data: Annotated[Path, typer.Option("--data", help="The training data directory (train.rec, <set>.bin).")],
    sets: SetsOpt = "lfw,cfp_fp,agedb_30",
    images: Annotated[int, typer.Option("--images", min=10, help="Faces to calibrate on.")] = 200,
    calibrate_on: Annotated[
        str, typer.Option("--calibrate-on", help="train (faces spread over DATA/train.rec) or a verification set.")
    ] = "train",
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            help="How far int8's accuracy may fall from the reference's on a set and still "
            "be listed as verified in deploy.json.",
        ),
    ] = 0.01,
    arm: ArmOpt = None,
    arm_pairs: Annotated[int, typer.Option("--arm-pairs", min=20, help="Pairs of each set per emulated CPU.")] = 20,
    arm_env: ArmEnvOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
):
    """int8 for the folded model: calibrated here (KL, as ncnn2table does), written as ncnn's int8 model
    (DIR/int8/, with its table), and measured: accuracy on the verification sets on this machine and, with --arm,
    on each emulated CPU class (their int8 paths differ: a53 multiply-accumulate, a76 sdot, max smmla); the layers
    that lose most are named. deploy.json lists int8 among a CPU class's verified options only when its accuracy
    is within --tolerance of the reference's. The same faces give the same table and the same bytes.

    How long: calibration about 30 s for 200 faces; the sets as convert evaluate (one engine); --arm adds about
    4 minutes per CPU class for 20 pairs on 2 cores.

    Example: mfnpatch convert int8 models/ncnn --data ~/datasets/faces_ms1m_112x112 --sets lfw --arm all
    """
    from mfnpatch.deploy.int8eval import int8

    CTX.json = as_json
    set_names = _sets(sets)
    targets = _arm(arm, arm_env)
    if calibrate_on != "train":
        _sets(calibrate_on)
    with progress_bar(not as_json, lines=True) as progress:
        res = int8(model_dir, data, set_names, images, calibrate_on, tolerance, targets, arm_pairs, _threads(threads),
                   on_progress=progress, on_step=None if as_json else lambda s: err.print(escape(s)))  # fmt: skip
    if as_json:
        emit_json(res.to_dict())
        return res.exit_code
    cal = res.calibration
    out.print(f"[green]int8[/] {escape(str(Path(model_dir) / 'int8'))}: calibrated on {cal['images']} faces of "
              f"{escape(cal['from'])} ({cal['method']}); table {escape(cal['table'])}")  # fmt: skip
    for r in res.rows:
        mark = "[green]ok[/]  " if r["within"] else "[red]FAIL[/]"
        cos = "nan" if r["min_cosine"] is None else f"{r['min_cosine']:.5f}"
        delta = "nan" if r["delta"] is None else f"{r['delta']:+.5f}"
        where = f" ({escape(r['sampled'])})" if r["sampled"] else ""
        out.print(f"  {mark} {escape(r['set']):9s} {escape(r['engine']):26s} accuracy {r['accuracy']:.5f} "
                  f"({delta} vs the reference's {r['reference_accuracy']:.5f}), min cosine {cos}{where}")  # fmt: skip
    names = ", ".join(f"{x['layer']} (+{x['adds']:.3g})" for x in res.losing_layers)
    out.print(f"  layers that lose most (relative error each adds, int8 vs float32 here): {escape(names)}")
    verdict = "[green]within[/]" if res.passed else "[red]outside[/]"
    out.print(f"{verdict} the tolerance {res.tolerance} on every set"
              + ("" if res.passed else ": deploy.json does not list int8 where it is outside"))  # fmt: skip
    return res.exit_code


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
    from mfnpatch.finite import at_least

    def num(x, fmt: str) -> str:  # NaN (or null, read back from JSON) shown as nan, never a crash
        return format(float("nan") if x is None else x, fmt)

    for engine, c in v["engines"].items():
        ok = at_least(c["min_cosine"], c.get("threshold", v["threshold"]))
        out.print(
            f"  {'[green]ok[/]  ' if ok else '[red]FAIL[/]'} {engine:14s} cosine min {num(c['min_cosine'], '.7f')}, "
            f"max |diff| {num(c['max_abs_diff'], '.3g')} (values up to {num(c.get('max_abs_value'), '.3g')})"
        )
    verdict = "[green]PASS[/]" if v["passed"] else "[red]FAIL[/]"
    out.print(
        f"{verdict}: {v['inputs']} inputs ({v['face_like']} face-like, {v['inputs'] - v['face_like']} noise), "
        f"every engine cosine >= {v['threshold']}"
        + (
            " (0.999 where it computes in half precision)"
            if any(c.get("threshold", 1) < v["threshold"] for c in v["engines"].values())
            else ""
        )
        + f": min {num(v['min_cosine'], '.7f')}"
    )


@convert_app.command("verify")
def convert_verify(
    model_dir: Annotated[Path, typer.Argument(help="A directory made by mfnpatch convert ncnn.")],
    inputs: Annotated[int, typer.Option("--inputs", min=8, help="How many inputs (face-like and noise).")] = 10,
    arm: ArmOpt = None,
    arm_env: ArmEnvOpt = None,
    as_json: JsonOpt = False,
):
    """Embeddings of MXNet, onnxruntime and both ncnn models on the same inputs: cosine >= 0.9999 each.

    With --arm, the folded ncnn model on each emulated phone CPU class too, once with ncnn's defaults (what an app
    gets) and once per precision switched explicitly (fp32; fp16 storage; bf16 where the CPU has it), held to
    0.999 where it computes in half precision. About 1 s of CPU per input in fp32, 4-5 s with fp16 arithmetic.
    """
    from mfnpatch.deploy.registry import HOST_ENGINES, arm_engines
    from mfnpatch.deploy.verify import source_of
    from mfnpatch.deploy.verify import verify as do_verify

    CTX.json = as_json
    targets = _arm(arm, arm_env)
    engines = None
    if targets:
        source = "onnx" if source_of(model_dir) else "mxnet"
        engines = [e for e in HOST_ENGINES[source] if not e.half] + arm_engines(targets)
    result = do_verify(model_dir, inputs, engines=engines)
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
