"""MXNet -> ONNX with MXNet 1.9's exporter, and the fixes the export needs (each covered by a test):
FullyConnected nodes get ``flatten=True`` (without it the ONNX Gemm breaks onnxruntime); PReLU slopes become
``[C,1,1]`` (ONNX broadcasts ``[C]`` over width); BatchNorm with ``fix_gamma=True`` exports gamma = 1 (MXNet
ignores the stored gamma, which is often 0)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mfnpatch.deploy.mxnet import INPUT_SHAPE, ConvertError, _mx
from mfnpatch.fsutil import replacing

# MXNet's MKLDNN subgraph backend breaks asnumpy() on the slim model ("We can't generate TBlob for MKLDNN
# data"): inference here runs without it.
os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")


# --------------------------------------------------------------------------------------------
# MXNet -> ONNX


def graph(sym) -> dict:
    return json.loads(sym.tojson())


def _fix_gamma(node: dict) -> bool:
    return str(node.get("attrs", {}).get("fix_gamma", "True")).lower() in ("true", "1")


def param_inputs(g: dict, n: dict) -> list[str]:
    """The names of a node's parameter inputs in MXNet's order (Convolution/FullyConnected: weight, bias;
    BatchNorm: gamma, beta, moving_mean, moving_var; PReLU: gamma). Taken from the graph, not made from
    the node's name: the pinned fmobilefacenet.py feeds pre_fc1 a variable named fc1_weight."""
    nodes = g["nodes"]
    return [nodes[s]["name"] for s, _, _ in n["inputs"] if nodes[s]["op"] == "null" and nodes[s]["name"] != "data"]


def prepare_for_onnx(sym, arg, aux, *, fixes=("flatten", "fix_gamma")):
    """The symbol and params the exporter gets: FC flatten=True, fix_gamma BatchNorm gamma = 1."""
    mx = _mx()
    g = graph(sym)
    applied = []
    arg = dict(arg)
    for n in g["nodes"]:
        if n["op"] == "FullyConnected" and "flatten" in fixes:
            if n.setdefault("attrs", {}).get("flatten") != "True":
                n["attrs"]["flatten"] = "True"
                applied.append(f"{n['name']}: flatten=True")
        if n["op"] == "BatchNorm" and _fix_gamma(n) and "fix_gamma" in fixes:
            name = param_inputs(g, n)[0]
            if name in arg:
                arg[name] = mx.nd.ones(arg[name].shape)
                applied.append(f"{n['name']}: fix_gamma, gamma exported as 1")
    return mx.sym.load_json(json.dumps(g)), arg, aux, applied


def export_onnx(sym, arg, aux, path: Path, *, fixes=("flatten", "fix_gamma", "prelu")) -> list[str]:
    mx = _mx()
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise ConvertError(
            f"onnx is needed ({e})", hint="pip install 'onnx<1.16' (the cpu environment has it)"
        ) from None
    sym, arg, aux, applied = prepare_for_onnx(sym, arg, aux, fixes=fixes)
    with replacing(Path(path), ".onnx") as tmp:
        try:
            mx.onnx.export_model(
                sym, {**arg, **aux}, in_shapes=[INPUT_SHAPE], in_types=["float32"], onnx_file_path=str(tmp)
            )
        except Exception as e:
            raise ConvertError(
                f"MXNet's ONNX exporter failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            ) from None
        m = onnx.load(str(tmp))
        inits = {i.name: i for i in m.graph.initializer}
        if "prelu" in fixes:
            for node in m.graph.node:
                if node.op_type == "PRelu" and node.input[1] in inits:
                    t = inits[node.input[1]]
                    a = numpy_helper.to_array(t)
                    if a.ndim == 1:
                        t.CopyFrom(numpy_helper.from_array(a.reshape(-1, 1, 1), t.name))
                        applied.append(f"{node.input[1]}: PReLU slope [C] -> [C,1,1]")
        # the exporter also lists every weight as a graph input; onnxruntime then cannot fold constants
        keep = [i for i in m.graph.input if i.name not in inits]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        onnx.checker.check_model(m)
        onnx.save(m, str(tmp))
    return applied
