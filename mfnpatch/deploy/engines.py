"""The engines a converted model runs on: MXNet (the reference), onnxruntime, and ncnn — with fp16 storage and
arithmetic off (every value float32) or on (what ARMv8.2 phones run). Each gives embeddings of a batch of
images, and, to find where a conversion goes wrong, the output of every layer for one image.

Inputs are float32 NCHW arrays in 0..255, RGB, or ``Images`` (decoded uint8 HWC images, converted a batch at
a time, optionally flipped left-right as the pinned ``load_bin`` flips them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.deploy.mxnet import ConvertError, _mx
from mfnpatch.deploy.ncnn import param_io, param_layers
from mfnpatch.deploy.onnxfile import check_onnx, load_onnx
from mfnpatch.deploy.registry import BF16, FP16, Engine

# MXNet's MKLDNN subgraph backend breaks asnumpy() on the slim model ("We can't generate TBlob for MKLDNN
# data"): inference here runs without it.
os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")

# ncnn's options for half precision. ncnn turns them on by default and honours each where the CPU can: fp16
# storage (weights and blobs between layers) on x86 with F16C and on ARM; fp16 arithmetic only on ARMv8.2
# (asimdhp), which is what phones since about 2018 run.
FP16_OPTIONS, BF16_OPTIONS = FP16, BF16


class Images:
    """Decoded images (N, H, W, 3) uint8 RGB, handed to an engine as float32 NCHW batches."""

    def __init__(self, hwc, flip: bool = False):
        self.hwc, self.flip = hwc, flip

    def __len__(self) -> int:
        return len(self.hwc)

    @property
    def shape(self) -> tuple[int, ...]:
        n, h, w, c = self.hwc.shape
        return (n, c, h, w)

    def flipped(self) -> Images:
        return Images(self.hwc, not self.flip)

    def batch(self, a: int, b: int):
        import numpy as np

        x = self.hwc[a:b].transpose(0, 3, 1, 2).astype(np.float32)
        return np.ascontiguousarray(x[..., ::-1]) if self.flip else x


def _batch(inputs, a: int, b: int):
    return inputs.batch(a, b) if isinstance(inputs, Images) else inputs[a:b]


# --------------------------------------------------------------------------------------------
# MXNet


def embeddings_mxnet(sym, arg, aux, inputs, batch: int = 1, on_done=None):
    """fc1 of every input. With ``batch`` > 1 the last batch is the window that ends at the last input, as the
    pinned ``verification.test`` takes it (``slice_axis(data, begin=bb - batch_size, end=bb)``)."""
    import numpy as np

    mx = _mx()
    n = len(inputs)
    bs = max(1, min(batch, n))
    ex = sym.simple_bind(mx.cpu(), data=(bs, *inputs.shape[1:]), grad_req="null")
    ex.copy_params_from(arg, aux, allow_extra_params=True)
    out = None
    a = 0
    while a < n:
        b = min(a + bs, n)
        x = _batch(inputs, b - bs, b)
        ex.forward(is_train=False, data=mx.nd.array(x))
        e = ex.outputs[0].asnumpy().reshape(bs, -1)
        if out is None:
            out = np.zeros((n, e.shape[1]), np.float32)
        out[a:b] = e[bs - (b - a) :]
        a = b
        if on_done:
            on_done(b)
    return out


def mxnet_blobs(sym, arg, aux, x1) -> dict:
    """The output of every op of the graph for one input (1, 3, H, W): node name -> array."""
    mx = _mx()
    internals = sym.get_internals()
    names = [o for o in internals.list_outputs() if o.endswith("_output")]
    group = mx.sym.Group([internals[o] for o in names])
    ex = group.simple_bind(mx.cpu(), data=tuple(x1.shape), grad_req="null")
    ex.copy_params_from(arg, aux, allow_extra_params=True)
    ex.forward(is_train=False, data=mx.nd.array(x1))
    return {o.removesuffix("_output"): v.asnumpy() for o, v in zip(names, ex.outputs, strict=True)}


# --------------------------------------------------------------------------------------------
# onnxruntime


def onnx_session(path: Path, threads: int = 1, all_outputs: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    if not all_outputs:
        check_onnx(path)  # onnxruntime reads the file and its external data only once they are known safe
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]), []
    import onnx

    model = load_onnx(path)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node's output
    have = {o.name for o in model.graph.output}
    nodes = [(n.name or n.output[0], n.op_type, n.output[0]) for n in model.graph.node]
    for _, _, out in nodes:
        if out not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]), nodes


def embeddings_onnx(path: Path, inputs, threads: int = 1, on_done=None):
    import numpy as np

    s, _ = onnx_session(path, threads)
    name = s.get_inputs()[0].name
    out = []
    for i in range(len(inputs)):
        out.append(s.run(None, {name: _batch(inputs, i, i + 1)})[0].reshape(-1))
        if on_done:
            on_done(i + 1)
    return np.stack(out)


def onnx_blobs(path: Path, x1) -> list[tuple[str, str, str, object]]:
    """(node, op type, output name, value) of every node of the ONNX graph, in graph order, for one input."""
    s, nodes = onnx_session(path, 1, all_outputs=True)
    names = [o.name for o in s.get_outputs()]
    values = dict(zip(names, s.run(names, {s.get_inputs()[0].name: x1}), strict=True))
    return [(node, op, out, values[out]) for node, op, out in nodes if out in values]


# --------------------------------------------------------------------------------------------
# ncnn


def ncnn_net(param: Path, binf: Path, threads: int = 1, options: dict[str, bool] | None = None):
    """An ncnn net with ``options`` set on it (``Engine.ncnn_options``); None: float32 throughout (every half
    precision off)."""
    try:
        import ncnn
    except ImportError:
        raise ConvertError("the ncnn Python package is not installed", hint="pip install ncnn") from None
    net = ncnn.Net()
    net.opt.num_threads = threads
    opts = {o: False for o in FP16_OPTIONS + BF16_OPTIONS} if options is None else options
    for opt, on in opts.items():
        if hasattr(net.opt, opt):
            setattr(net.opt, opt, on)
    if net.load_param(str(param)) != 0:
        raise ConvertError(f"{param}: ncnn cannot load this param file")
    if net.load_model(str(binf)) != 0:
        raise ConvertError(f"{binf}: ncnn cannot load this model file")
    return net


def _ncnn_extract(net, param: Path, in_name: str, x, outputs: list[str]):
    import ncnn
    import numpy as np

    ex = net.create_extractor()
    # ncnn.Mat(arr) borrows the array's memory and does not keep the array alive: the array must stay referenced
    # (a name, not a temporary) until clone() has copied it, or ncnn reads freed memory
    arr = np.ascontiguousarray(x, dtype=np.float32)
    ex.input(in_name, ncnn.Mat(arr).clone())
    got = []
    for name in outputs:
        rc, out = ex.extract(name)
        if rc != 0:
            raise ConvertError(f"{param}: ncnn failed to compute {name} (error {rc})")
        got.append(np.array(out).copy())
    return got


def embeddings_ncnn(param: Path, binf: Path, inputs, threads: int = 1, options: dict[str, bool] | None = None,
                    on_done=None):  # fmt: skip
    import numpy as np

    net = ncnn_net(param, binf, threads, options)
    in_name, out_name = param_io(param)
    outs = []
    for i in range(len(inputs)):
        outs.append(_ncnn_extract(net, param, in_name, _batch(inputs, i, i + 1)[0], [out_name])[0].reshape(-1))
        if on_done:
            on_done(i + 1)
    return np.stack(outs)


def ncnn_blobs(
    param: Path, binf: Path, x1, options: dict[str, bool] | None = None
) -> list[tuple[str, str, str, object]]:
    """(layer, type, output blob, value) of every layer but Input and Split, in file order, for one input."""
    net = ncnn_net(param, binf, 1, options)
    in_name, _ = param_io(param)
    wanted = [(layer.name, layer.type, top) for layer in param_layers(param) if layer.type not in ("Input", "Split")
              for top in layer.tops]  # fmt: skip
    values = _ncnn_extract(net, param, in_name, x1[0], [t for _, _, t in wanted])
    return [(name, kind, top, v) for (name, kind, top), v in zip(wanted, values, strict=True)]


# --------------------------------------------------------------------------------------------
# What this CPU does with ncnn's half precision


@dataclass
class Fp16Support:
    storage: bool
    arithmetic: bool
    note: str


def fp16_support() -> Fp16Support:
    """Which of ncnn's fp16 options take effect on this CPU (the rest are ignored by ncnn)."""
    try:
        import ncnn

        asimdhp = bool(ncnn.cpu_support_arm_asimdhp())
        neon = bool(ncnn.cpu_support_arm_neon())
    except (ImportError, AttributeError):
        asimdhp = neon = False
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    storage = neon or "f16c" in flags
    if asimdhp:
        note = "ARMv8.2 with fp16 arithmetic (asimdhp): the fp16 rows compute as a recent phone does"
    elif storage:
        note = (
            "fp16 storage only (weights and blobs between layers held as fp16, arithmetic in fp32): this CPU has "
            "no fp16 arithmetic (ncnn uses it on ARMv8.2, asimdhp); convert evaluate --arm computes as an "
            "ARMv8.2 phone does, under emulation"
        )
    else:
        note = "no fp16 support on this CPU: the fp16 rows compute in fp32"
    return Fp16Support(storage, asimdhp, note)


# --------------------------------------------------------------------------------------------
# One engine record, run


def embed(e: Engine, d: Path, inputs, threads: int = 1, on_done=None, mx_weights=None):
    """The embeddings engine ``e`` computes for ``inputs`` from model directory ``d`` (``mx_weights``: MXNet weights
    in memory instead of the directory's checkpoint, for the denormal comparison)."""
    if e.emulated:
        from mfnpatch.deploy.arm import embed_emulated

        return embed_emulated(e, d, inputs, threads, on_done)
    if e.kind == "mxnet":
        sym, arg, aux = mx_weights or _mx().model.load_checkpoint(str(d / "mxnet"), 0)
        return embeddings_mxnet(sym, arg, aux, inputs, on_done=on_done)
    if e.kind == "onnxruntime":
        return embeddings_onnx(d / "model.onnx", inputs, threads, on_done=on_done)
    param, binf = (d / f for f in e.files())
    return embeddings_ncnn(param, binf, inputs, threads, options=e.ncnn_options(), on_done=on_done)


def blobs(e: Engine, d: Path, x1) -> list:
    """(layer, type, output, value) of every layer engine ``e`` computes for one input."""
    if e.emulated:
        from mfnpatch.deploy.arm import blobs_emulated

        return blobs_emulated(e, d, x1)
    if e.kind == "onnxruntime":
        return onnx_blobs(d / "model.onnx", x1)
    param, binf = (d / f for f in e.files())
    return ncnn_blobs(param, binf, x1, options=e.ncnn_options())
