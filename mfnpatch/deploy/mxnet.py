"""MXNet checkpoints for deployment: loading one, and slimming it (keep fc1_output, drop fc7 — what the pinned
``deploy/model_slim.py`` does, without overwriting the training symbol)."""

from __future__ import annotations

import os
from pathlib import Path

from mfnpatch.checkpoint import Checkpoint, CheckpointError
from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write, replacing

# MXNet's MKLDNN subgraph backend breaks asnumpy() on the slim model ("We can't generate TBlob for MKLDNN
# data"): inference here runs without it.
os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")


INPUT_SHAPE = (1, 3, 112, 112)
FOLDED = "mobilefacenet"
SUPPORTED = (
    "Convolution", "BatchNorm", "LeakyReLU", "Activation", "elemwise_add", "_Plus", "broadcast_add",
    "FullyConnected", "_minus_scalar", "_mul_scalar", "_plus_scalar", "Flatten", "Dropout", "Pooling",
)  # fmt: skip


class ConvertError(MfnError):
    pass


def _mx():
    try:
        import mxnet as mx
    except ImportError as e:
        raise ConvertError(
            f"MXNet is needed to convert ({e})", hint="run in the cpu environment (mfnpatch env create cpu)"
        ) from None
    return mx


# --------------------------------------------------------------------------------------------
# Checkpoints


def parse_spec(spec: str) -> Checkpoint:
    """``PREFIX,EPOCH`` as the convert commands take it (a ConvertError otherwise)."""
    try:
        return Checkpoint.parse(spec)
    except CheckpointError:
        raise ConvertError(
            f"{spec!r}: write PREFIX,EPOCH", hint="e.g. ../models/MobileFaceNet/model-y1-arcface,40"
        ) from None


def load_checkpoint(spec: str):
    mx = _mx()
    ck = parse_spec(spec)
    sym_path, params_path = ck.files()
    if ck.missing():
        raise ConvertError(
            f"{ck.missing()[0]}: no such file",
            hint=f"is {spec} a checkpoint? (expects {sym_path.name} and {params_path.name})",
        )
    try:
        sym, arg, aux = mx.model.load_checkpoint(ck.prefix, ck.number)
    except Exception as e:  # MXNet raises MXNetError or ValueError on corrupt files
        raise ConvertError(
            f"{params_path}: MXNet cannot load this checkpoint ({str(e).splitlines()[0][:200]})"
        ) from None
    return sym, arg, aux


def slim_symbol(sym, arg):
    """Keep the graph up to fc1 and drop fc7* parameters (what deploy/model_slim.py does)."""
    internals = sym.get_internals()
    outputs = internals.list_outputs()
    if "fc1_output" not in outputs:
        raise ConvertError("the model has no fc1 output (fc1_output)", hint="is it an InsightFace recognition model?")
    if sym.list_outputs() == ["fc1_output"]:
        return sym, {k: v for k, v in arg.items() if not k.startswith("fc7")}
    return internals["fc1_output"], {k: v for k, v in arg.items() if not k.startswith("fc7")}


def check_input_shape(sym, arg) -> None:
    """The model must take MobileFaceNet's 1x3x112x112 input with the weights it has."""
    shapes = {k: v.shape for k, v in arg.items()}
    try:
        sym.infer_shape(data=INPUT_SHAPE, **{k: v for k, v in shapes.items() if k in sym.list_arguments()})
    except Exception as e:
        reason = " ".join(str(e).split())
        at = reason.find("Error in operator")
        raise ConvertError(
            f"the model does not take a {'x'.join(map(str, INPUT_SHAPE))} input: "
            + (reason[at : at + 240] if at >= 0 else reason[:240]),
            hint="MobileFaceNet takes 112x112 RGB images; was this checkpoint made for another input size?",
        ) from None


def slim(spec: str, out_prefix: str | None = None) -> tuple[Path, Path]:
    """Write the slim model to a new prefix; the training symbol is never overwritten."""
    mx = _mx()
    prefix = parse_spec(spec).prefix
    out_prefix = out_prefix or f"{prefix}-slim"
    if Path(out_prefix).resolve() == Path(prefix).resolve():
        raise ConvertError(
            f"-o {out_prefix} is the checkpoint's own prefix: its training symbol would be lost",
            hint="give another prefix (the default is PREFIX-slim)",
        )
    sym, arg, aux = load_checkpoint(spec)
    ssym, sarg = slim_symbol(sym, arg)
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    sym_path, params_path = Checkpoint(out_prefix, 0).files()
    with replacing(params_path) as tmp:
        mx.nd.save(str(tmp), {**{f"arg:{k}": v for k, v in sarg.items()}, **{f"aux:{k}": v for k, v in aux.items()}})
    atomic_write(sym_path, ssym.tojson())
    return sym_path, params_path
