"""How much arithmetic a converted model does per image, counted from its ONNX graph (never assumed): every
convolution and fully connected layer's multiply-adds, from the shapes ONNX's shape inference gives each tensor.
Element-wise ops (BatchNorm, PReLU, Add) are left out, as papers count MobileFaceNet's 221 M multiply-adds."""

from __future__ import annotations

import math
from pathlib import Path

from mfnpatch.deploy.onnxfile import load_onnx


def multiply_adds(onnx_path: Path) -> int:
    """Multiply-adds of one image (batch 1) through the graph's Conv, Gemm and MatMul nodes."""
    import onnx

    m = onnx.shape_inference.infer_shapes(load_onnx(onnx_path))
    shapes: dict[str, list[int]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            w, out = shapes.get(n.input[1]), shapes.get(n.output[0])
            if w and out:  # each output value: Cin/group x kh x kw multiply-adds (the weight's dims after the first)
                total += math.prod(out[1:]) * math.prod(w[1:])
        elif n.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(n.input[0]), shapes.get(n.output[0])
            if a and out:
                k = a[-1]
                if n.op_type == "Gemm" and any(x.name == "transA" and x.i for x in n.attribute):
                    k = a[0]
                total += math.prod(out[1:] if len(out) > 1 else out) * k
    return total


def gflop(onnx_path: Path) -> float:
    """GFLOP per image: two floating-point operations per multiply-add."""
    return 2 * multiply_adds(onnx_path) / 1e9
