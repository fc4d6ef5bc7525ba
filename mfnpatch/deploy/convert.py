"""Deployment: slim a checkpoint, convert it to ncnn (BatchNorm folded, and unfolded as the seed's was),
and prove every converted model computes what the MXNet model computes.

    mfnpatch convert slim PREFIX,EPOCH [-o NEWPREFIX]
    mfnpatch convert ncnn PREFIX,EPOCH -o DIR [--verify]
    mfnpatch convert verify DIR

``convert ncnn`` writes into DIR: ``mxnet-symbol.json``/``mxnet-0000.params`` (the slim model it converted),
``model.onnx`` (MXNet 1.9's exporter, with the fixes below), ``mobilefacenet.param``/``.bin`` (ncnn via
pnnx, BatchNorm folded into the convolutions), ``unfolded/mobilefacenet.param``/``.bin`` (one ncnn layer per
MXNet op, BatchNorm kept: what the seed's mxnet2ncnn made) and ``convert.json``.

Fixes the export needs (each covered by a test): FullyConnected nodes get ``flatten=True`` (without it
the ONNX Gemm breaks onnxruntime); PReLU slopes become ``[C,1,1]`` (ONNX broadcasts ``[C]`` over width);
BatchNorm with ``fix_gamma=True`` exports gamma = 1 (MXNet ignores the stored gamma, which is often 0).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mfnpatch.deploy import contract
from mfnpatch.deploy.denormals import count as count_denormals
from mfnpatch.deploy.denormals import flush, refuse_nonfinite
from mfnpatch.deploy.engines import embeddings_mxnet, embeddings_onnx
from mfnpatch.deploy.export import export_onnx
from mfnpatch.deploy.mxnet import ConvertError, _mx, check_input_shape, load_checkpoint, slim_symbol
from mfnpatch.deploy.ncnn import layer_counts, param_io, run_pnnx, write_unfolded
from mfnpatch.deploy.onnxfile import load_onnx
from mfnpatch.deploy.onnxsource import embeddings_source, inspect, is_onnx, prepare
from mfnpatch.deploy.verify import compare, test_inputs, verify
from mfnpatch.finite import at_least
from mfnpatch.fsutil import atomic_write, atomic_write_json, replacing
from mfnpatch.lineages import of_model

# MXNet's MKLDNN subgraph backend breaks asnumpy() on the slim model ("We can't generate TBlob for MKLDNN
# data"): inference here runs without it.
os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")


# --------------------------------------------------------------------------------------------
# convert ncnn


@dataclass
class ConvertResult:
    source: str
    out_dir: str
    onnx: str
    folded: dict
    unfolded: dict
    fixes: list[str]
    onnx_check: dict
    seconds: float
    verify: dict | None = None
    denormals: dict | None = None  # the slim model's weights below 1e-30 (denormals.py), and whether flushed
    source_kind: str = "mxnet"  # mxnet: a checkpoint; onnx: an ONNX model (the PyTorch lineage's torch2onnx output)
    onnx_source: dict | None = None  # the ONNX source: its path, input, output, the normalisation put in front
    arm: dict | None = None  # emulated CPU class -> mask.TargetCheck (convert ncnn --arm)
    lineage: str | None = None  # the lineage that trained the model (mfnpatch/lineages/), as deploy.json says

    @property
    def exit_code(self) -> int:
        """0, or 1 when the conversion was verified and an engine disagreed with MXNet, or an emulated CPU class
        computes what this machine does not even after masking."""
        arm_ok = all(t["holds"] for t in (self.arm or {}).values())
        return 0 if (not self.verify or self.verify["passed"]) and arm_ok else 1


def _check_output_dir(out_dir: Path) -> None:
    """-o may be new, empty, or an earlier conversion (which is replaced whole); nothing else."""
    if out_dir.is_symlink():
        raise ConvertError(
            f"-o {out_dir} is a symlink{' (dangling)' if not out_dir.exists() else ''}: mfnpatch "
            "does not write through or replace links",
            hint="give the path of a real directory",
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"{out_dir} is a file", hint="give a directory for -o")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "convert.json").is_file():
        raise ConvertError(
            f"{out_dir} is not empty and holds no earlier conversion (no convert.json); not writing into it",
            hint="give a new or empty directory for -o",
        )


def _relocate(x, old: str, new: str):
    if isinstance(x, str):
        return new + x[len(old) :] if x == old or x.startswith(old + os.sep) else x
    if isinstance(x, dict):
        return {k: _relocate(v, old, new) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_relocate(v, old, new) for v in x)
    return x


def convert_ncnn(
    spec: str,
    out_dir: Path,
    *,
    verify_after: bool = False,
    flush_denormals: bool = False,
    on_step=None,
    onnx_norm: tuple[float, float] | None = None,
    arm: list[str] | None = None,
    arm_inputs: int = 8,
    arm_fix: bool = True,
    lineage: str | None = None,
) -> ConvertResult:
    """Convert into a staging directory beside ``out_dir`` and swap it into place at the end: a failed or
    interrupted conversion leaves ``out_dir`` as it was. ``lineage``: the lineage that trained the model (default:
    the one whose export a checkpoint or an ONNX graph is), said in deploy.json."""
    out_dir = Path(out_dir).absolute()
    _check_output_dir(out_dir)
    trained_by = of_model("onnx" if is_onnx(spec) else "mxnet", lineage).name
    if is_onnx(spec):
        if flush_denormals:
            raise ConvertError("--flush-denormals is not supported for an ONNX source yet",
                               hint="convert without it; convert.json still counts the denormal weights")  # fmt: skip
        inspect(Path(spec), *(onnx_norm or (127.5, 127.5)))
    else:
        load_checkpoint(spec)  # a bad checkpoint fails before anything is made
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.converting-", dir=out_dir.parent))
    try:
        if is_onnx(spec):
            result = _convert_onnx_into(Path(spec).absolute(), stage, onnx_norm or (127.5, 127.5),
                                        verify_after=verify_after, on_step=on_step, lineage=trained_by)  # fmt: skip
        else:
            result = _convert_into(spec, stage, verify_after=verify_after, flush_denormals=flush_denormals,
                                   on_step=on_step, lineage=trained_by)  # fmt: skip
        if arm:
            from mfnpatch.deploy.mask import arm_checks

            t_arm = time.perf_counter()
            result.arm = arm_checks(stage, arm, arm_inputs, arm_fix, on_step)
            if verify_after and any(t["masked"] for t in result.arm.values()):
                result.verify = asdict(verify(stage))  # the masked model, verified again
            result.seconds = round(result.seconds + time.perf_counter() - t_arm, 3)
        result = ConvertResult(**_relocate(asdict(result), str(stage), str(out_dir)))
        atomic_write_json(stage / "convert.json", asdict(result))
        if result.verify:
            atomic_write_json(stage / "verify.json", result.verify)
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
            os.rename(out_dir, old)
        os.rename(stage, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return result
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _save_mxnet(d: Path, sym, arg, aux) -> None:
    mx = _mx()
    d.mkdir(parents=True, exist_ok=True)
    with replacing(d / "mxnet-0000.params") as tmp:
        mx.nd.save(str(tmp), {**{f"arg:{k}": v for k, v in arg.items()}, **{f"aux:{k}": v for k, v in aux.items()}})
    atomic_write(d / "mxnet-symbol.json", sym.tojson())


def _convert_into(spec: str, out_dir: Path, *, verify_after: bool, flush_denormals: bool, on_step,
                  lineage: str) -> ConvertResult:  # fmt: skip
    t0 = time.perf_counter()
    say = on_step or (lambda s: None)
    sym, arg, aux = load_checkpoint(spec)
    sym, arg = slim_symbol(sym, arg)
    check_input_shape(sym, arg)
    denormals = count_denormals({**arg, **aux})
    refuse_nonfinite(denormals, spec)
    if flush_denormals and denormals.below:
        # the original weights stay beside, as MXNet and folded ncnn models, so that convert evaluate and
        # bench can show the accuracy and the latency before and after
        say("saving the model as it was, denormals kept (unflushed/)")
        _save_mxnet(out_dir / "unflushed", sym, arg, aux)
        export_onnx(sym, arg, aux, out_dir / "unflushed" / "model.onnx")
        run_pnnx(out_dir / "unflushed" / "model.onnx", out_dir / "unflushed")
        (out_dir / "unflushed" / "model.onnx").unlink()
        say(f"zeroing {denormals.below} weights below 1e-30")
        arg, aux = flush(arg), flush(aux)
    denormals.flushed = flush_denormals
    say("saving the slim MXNet model")
    _save_mxnet(out_dir, sym, arg, aux)
    say("writing the unfolded ncnn model (one layer per MXNet op)")
    uparam, ubin = write_unfolded(sym, arg, aux, out_dir / "unfolded")
    say("exporting ONNX (MXNet exporter + fixes)")
    onnx_path = out_dir / "model.onnx"
    fixes = export_onnx(sym, arg, aux, onnx_path)
    say("checking ONNX with onnxruntime")
    inputs = test_inputs(4, seed=7)
    ref = embeddings_mxnet(sym, arg, aux, inputs)
    got = embeddings_onnx(onnx_path, inputs)
    check = compare(ref, got)
    if not at_least(check["min_cosine"], 0.999):
        raise ConvertError(
            f"the exported ONNX model disagrees with MXNet (cosine {check['min_cosine']:.6f})",
            hint="a conversion bug: rerun with --debug and report it",
        )
    say("converting ONNX to ncnn with pnnx (BatchNorm folded)")
    fparam, fbin = run_pnnx(onnx_path, out_dir)
    fl, ul = layer_counts(fparam), layer_counts(uparam)
    result = ConvertResult(
        source=spec, out_dir=str(out_dir), onnx=str(onnx_path),
        folded={"param": str(fparam), "bin": str(fbin), "layers": dict(fl), "batchnorm": fl.get("BatchNorm", 0),
                "io": param_io(fparam)},
        unfolded={"param": str(uparam), "bin": str(ubin), "layers": dict(ul), "batchnorm": ul.get("BatchNorm", 0),
                  "io": param_io(uparam)},
        fixes=fixes, onnx_check=check, seconds=0.0, denormals=denormals.to_dict(), lineage=lineage,
    )  # fmt: skip
    if result.folded["batchnorm"]:
        raise ConvertError(f"pnnx left {result.folded['batchnorm']} BatchNorm layers unfolded in {fparam}")
    say("writing the deployment contract (deploy.json)")
    atomic_write_json(out_dir / "convert.json", asdict(result))  # the contract's lineage is read from it
    contract.write(out_dir, contract.make(out_dir, sym, arg, lineage))
    if verify_after:
        say("verifying MXNet, onnxruntime and both ncnn models on the same inputs")
        result.verify = asdict(verify(out_dir))
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _convert_onnx_into(path: Path, out_dir: Path, norm: tuple[float, float], *, verify_after: bool,
                       on_step, lineage: str) -> ConvertResult:  # fmt: skip
    """An ONNX source (arcface_torch's torch2onnx.py output): the normalisation put in front of its graph, then pnnx
    (BatchNorm folded). There is no unfolded model: the seed's mxnet2ncnn needs an MXNet symbol."""
    from onnx import numpy_helper

    t0 = time.perf_counter()
    say = on_step or (lambda s: None)
    src = inspect(path, *norm)
    weights = {i.name: numpy_helper.to_array(i) for i in load_onnx(path).graph.initializer}
    denormals = count_denormals({k: v for k, v in weights.items() if v.dtype.kind == "f"})
    refuse_nonfinite(denormals, str(path))
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    say("putting the input normalisation in front of the ONNX graph")
    fixes = prepare(src, onnx_path)
    say("checking the prepared graph against the source with onnxruntime")
    inputs = test_inputs(4, seed=7)
    check = compare(embeddings_source(src, inputs), embeddings_onnx(onnx_path, inputs))
    if not at_least(check["min_cosine"], 0.99999):
        raise ConvertError(f"the prepared ONNX graph disagrees with its source (cosine {check['min_cosine']:.6f})",
                           hint="a conversion bug: rerun with --debug and report it")  # fmt: skip
    say("converting ONNX to ncnn with pnnx (BatchNorm folded)")
    fparam, fbin = run_pnnx(onnx_path, out_dir)
    fl = layer_counts(fparam)
    if fl.get("BatchNorm", 0):
        raise ConvertError(f"pnnx left {fl['BatchNorm']} BatchNorm layers unfolded in {fparam}")
    result = ConvertResult(
        source=str(path), out_dir=str(out_dir), onnx=str(onnx_path),
        folded={"param": str(fparam), "bin": str(fbin), "layers": dict(fl), "batchnorm": 0, "io": param_io(fparam)},
        unfolded={}, fixes=fixes, onnx_check=check, seconds=0.0, denormals=denormals.to_dict(), source_kind="onnx",
        onnx_source={"path": str(path), "input": src.input, "output": src.output, "dim": src.dim, "mean": src.mean,
                     "std": round(1.0 / src.scale, 6)}, lineage=lineage,
    )  # fmt: skip
    say("writing the deployment contract (deploy.json)")
    atomic_write_json(out_dir / "convert.json", asdict(result))  # the source and the lineage are read from it
    contract.write(out_dir, contract.make_onnx(out_dir, src, lineage))
    if verify_after:
        say("verifying onnxruntime and the ncnn model on the same inputs")
        result.verify = asdict(verify(out_dir))
    result.seconds = round(time.perf_counter() - t0, 3)
    return result
