"""An ONNX model as the source of a conversion (the PyTorch lineage: arcface_torch's torch2onnx.py output), in
place of an MXNet checkpoint. onnxruntime on the source graph is the reference every engine is checked against.

arcface_torch's models take a normalised input, ``(x / 255 - 0.5) / 0.5``, which its apps compute themselves;
the MXNet lineage's graph normalises inside (``(x - 127.5) * 0.0078125``) and takes 0..255. ``prepare`` puts the
same two steps in front of the ONNX graph (Sub, Mul), so every converted model of both lineages takes the same
input (0..255 RGB, NCHW) and the deployment contract says the same: the app must not normalise again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mfnpatch.deploy.mxnet import ConvertError
from mfnpatch.deploy.onnxfile import load_onnx

INPUT = "data"


@dataclass
class OnnxSource:
    path: Path
    input: str
    output: str
    dim: int
    mean: float
    scale: float  # the input the source graph wants is (x - mean) * scale


def is_onnx(spec: str) -> bool:
    return spec.lower().endswith(".onnx")


def inspect(path: Path, mean: float = 127.5, std: float = 127.5) -> OnnxSource:
    """The source graph's one input (N, 3, 112, 112) and one output (N, D); a clear error for anything else."""
    import onnx

    p = Path(path)
    m = load_onnx(p)  # a regular file, declared sizes held against its bytes, external data confined
    try:
        onnx.checker.check_model(m)
    except Exception as e:  # onnx raises many types for a damaged file
        raise ConvertError(f"{p}: not a valid ONNX model ({type(e).__name__}: {str(e)[:200]})") from None
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(m.graph.output) != 1:
        raise ConvertError(f"{p}: {len(inputs)} inputs and {len(m.graph.output)} outputs; a face embedding model "
                           "has one of each")  # fmt: skip
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if dims[1:] != [3, 112, 112]:
        raise ConvertError(f"{p}: input {inputs[0].name} has shape {dims}; expected (N, 3, 112, 112)")
    out_dims = [d.dim_value or None for d in m.graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) != 2 or not out_dims[1]:
        raise ConvertError(f"{p}: output {m.graph.output[0].name} has shape {out_dims}; expected (N, D)")
    if std <= 0:
        raise ConvertError(f"--onnx-input-norm: std {std} must be positive")
    return OnnxSource(p, inputs[0].name, m.graph.output[0].name, int(out_dims[1]), mean, 1.0 / std)


def prepare(src: OnnxSource, out: Path) -> list[str]:
    """Write the graph with the normalisation in front (input ``data``: 0..255 RGB) to ``out``; what was done."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    m = load_onnx(src.path)
    g = m.graph
    inner = src.input if src.input != INPUT else "mfnpatch_normalised"
    if inner != src.input:
        for n in g.node:
            n.input[:] = [inner if x == src.input else x for x in n.input]
    old = next(i for i in g.input if i.name == src.input)
    new_in = helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["N", 3, 112, 112])
    g.input.remove(old)
    g.input.insert(0, new_in)
    g.initializer.extend([numpy_helper.from_array(np.array(src.mean, np.float32), "mfnpatch_mean"),
                          numpy_helper.from_array(np.array(src.scale, np.float32), "mfnpatch_scale")])  # fmt: skip
    sub = helper.make_node("Sub", [INPUT, "mfnpatch_mean"], ["mfnpatch_centred"], name="mfnpatch_minus_mean")
    mul = helper.make_node("Mul", ["mfnpatch_centred", "mfnpatch_scale"], [inner], name="mfnpatch_scale")
    g.node.insert(0, mul)
    g.node.insert(0, sub)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return [
        f"normalisation put in front of the graph: (x - {src.mean:g}) * {src.scale:g} (the input arcface_torch's "
        f"models take), so the converted models take 0..255 RGB as the MXNet lineage's do"
    ]


def embeddings_source(src: OnnxSource, inputs, threads: int = 1):
    """The reference: onnxruntime on the source graph, the input normalised as its apps do."""
    import numpy as np

    from mfnpatch.deploy.engines import _batch, onnx_session

    s, _ = onnx_session(src.path, threads)
    out = []
    for i in range(len(inputs)):
        x = ((_batch(inputs, i, i + 1) - src.mean) * src.scale).astype(np.float32)
        out.append(s.run(None, {src.input: x})[0].reshape(-1))
    return np.stack(out)
