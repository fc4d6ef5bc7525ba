"""Reading an ONNX model that someone else made, safely: one place for every ``onnx.load`` of a user's file.

An ONNX file is a protobuf that declares each weight's shape and may keep the weights in other files beside it
(external data: a ``location`` relative to the model, an ``offset`` and a ``length``). Before anything is
allocated or opened through it:

- the model file is a regular file of at most ``MAX_MODEL_BYTES`` (never a FIFO or a device);
- it is parsed without its external data, and every tensor's declared shape is held against the bytes that
  carry it: inline ``raw_data`` (or typed values) of exactly the declared size, at most ``MAX_TENSOR_ELEMENTS``
  elements — a small file cannot make NumPy allocate what its header declares;
- every external-data file is named by a relative path that resolves inside the model's directory (a symlink that
  leads out of it is refused: the file is never read through it), is a regular file, and holds the declared
  ``offset + length``.
"""

from __future__ import annotations

import math
from pathlib import Path

from mfnpatch.deploy.mxnet import ConvertError
from mfnpatch.fsutil import UnsafePath, confined, inside, regular_file

MAX_MODEL_BYTES = 2 << 30  # protobuf's own limit for one message
MAX_TENSOR_ELEMENTS = 1 << 28  # 1 GiB of float32 in one tensor (MobileFaceNet's largest: 0.3 M)
HINT = "give the .onnx file torch2onnx.py (or convert ncnn) wrote, with its external data files beside it"

# TensorProto.DataType -> bytes per element (strings and unknown types are refused)
_SIZES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}
# the typed repeated field a tensor without raw_data keeps its values in, and how many of them make one element
_FIELDS = {1: ("float_data", 1), 14: ("float_data", 2), 11: ("double_data", 1), 15: ("double_data", 2),
           7: ("int64_data", 1), 12: ("uint64_data", 1), 13: ("uint64_data", 1),
           **{k: ("int32_data", 1) for k in (2, 3, 4, 5, 6, 9, 10, 16)}}  # fmt: skip


def _tensors(model):
    """Every TensorProto of the graph (initializers, and those in node attributes, subgraphs included)."""
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)


def _check_tensor(t, path: Path, root: Path) -> None:
    name = t.name or "(unnamed)"
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        raise ConvertError(f"{path}: tensor {name} declares a negative dimension {dims}", hint=HINT)
    n = math.prod(dims)
    if n > MAX_TENSOR_ELEMENTS:
        raise ConvertError(f"{path}: tensor {name} declares {dims} = {n:,} elements, over the {MAX_TENSOR_ELEMENTS:,} "
                           "one tensor holds here: refused before allocating it", hint=HINT)  # fmt: skip
    size = _SIZES.get(t.data_type)
    if size is None:
        raise ConvertError(f"{path}: tensor {name} has data type {t.data_type}, not a numeric type", hint=HINT)
    want = n * size
    if t.data_location == 1:  # EXTERNAL
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        try:
            rel = confined(loc, f"tensor {name}'s external data location")
            f = inside(root, root / rel, f"tensor {name}'s external data")
        except UnsafePath as e:
            raise ConvertError(f"{path}: {e.message}", hint=HINT) from None
        try:
            offset, length = int(info.get("offset", "0")), int(info.get("length", str(want)))
        except ValueError:
            raise ConvertError(f"{path}: tensor {name}: its external data offset or length is not a number",
                               hint=HINT) from None  # fmt: skip
        have = regular_file(f, f"tensor {name}'s external data file", MAX_MODEL_BYTES, hint=HINT)
        if length != want or offset < 0 or offset + length > have:
            raise ConvertError(f"{path}: tensor {name} declares {dims} ({want:,} bytes) at offset {offset}, length "
                               f"{length}, in {f.name} of {have:,} bytes", hint=HINT)  # fmt: skip
        return
    if t.HasField("raw_data"):
        have = len(t.raw_data)
    else:
        field, per = _FIELDS[t.data_type]
        have = len(getattr(t, field)) // per * size
    if have != want:
        raise ConvertError(f"{path}: tensor {name} declares {dims} ({want:,} bytes) but carries {have:,}", hint=HINT)


def check_onnx(path: Path):
    """The model proto of ``path`` without its external data, once every check above holds."""
    import onnx

    p = Path(path)
    if not p.exists():
        raise ConvertError(f"{p}: no such ONNX file", hint=HINT)
    try:
        regular_file(p, "ONNX model", MAX_MODEL_BYTES, hint=HINT)
    except Exception as e:
        raise ConvertError(getattr(e, "message", str(e)), hint=HINT) from None
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # onnx raises many types for a damaged file
        raise ConvertError(f"{p}: not a valid ONNX model ({type(e).__name__}: {str(e)[:200]})", hint=HINT) from None
    root = p.resolve().parent
    for t in _tensors(m):
        _check_tensor(t, p, root)
    return m


def load_onnx(path: Path):
    """The whole model (external data read in) once ``check_onnx`` holds."""
    import onnx

    m = check_onnx(path)
    try:
        onnx.load_external_data_for_model(m, str(Path(path).resolve().parent))
    except Exception as e:
        raise ConvertError(f"{path}: its external data does not load ({type(e).__name__}: {str(e)[:200]})",
                           hint=HINT) from None  # fmt: skip
    return m
