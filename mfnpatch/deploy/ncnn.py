"""ncnn models: the unfolded one written op by op from the MXNet graph (BatchNorm kept, as the seed's
mxnet2ncnn made it), and the folded one from ONNX by pnnx (BatchNorm folded into the convolutions)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

from mfnpatch.deploy.export import _fix_gamma, graph, param_inputs
from mfnpatch.deploy.mxnet import FOLDED, INPUT_SHAPE, SUPPORTED, ConvertError
from mfnpatch.deploy.ncnnparam import Layer, read_param
from mfnpatch.fsutil import atomic_write

# MXNet's MKLDNN subgraph backend breaks asnumpy() on the slim model ("We can't generate TBlob for MKLDNN
# data"): inference here runs without it.
os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")


# --------------------------------------------------------------------------------------------
# The unfolded ncnn model: one ncnn layer per MXNet op


def _attr(n: dict, key: str, default=None):
    return n.get("attrs", {}).get(key, default)


def _tuple(s: str | None, default: tuple) -> tuple:
    if not s:
        return default
    return tuple(int(x) for x in s.strip("()[] ").split(",") if x.strip())


class NcnnWriter:
    """MXNet symbol JSON + params -> ncnn .param (text) and .bin, for the ops MobileFaceNet uses."""

    def __init__(self, g: dict, arg: dict, aux: dict):
        self.g, self.nodes = g, g["nodes"]
        self.params = {**{k: v.asnumpy() for k, v in arg.items()}, **{k: v.asnumpy() for k, v in aux.items()}}
        self.layers: list[str] = []
        self.bin = bytearray()
        self.blob_of: dict[int, str] = {}

    def _weights(self, name: str):
        if name not in self.params:
            raise ConvertError(f"parameter {name} is not in the params file")
        return self.params[name].astype("float32")

    def _param(self, n: dict, k: int, role: str):
        """The k-th parameter input of node n (its weight, gamma, ...)."""
        names = param_inputs(self.g, n)
        if k >= len(names):
            raise ConvertError(f"node {n['name']} ({n['op']}) has no {role} input in the symbol")
        return self._weights(names[k])

    def _raw(self, a) -> None:  # ModelBin type 1: raw float32
        self.bin += a.astype("<f4").tobytes()

    def _tagged(self, a) -> None:  # ModelBin type 0: a 4-byte flag (0 = float32) then the data
        self.bin += struct.pack("<I", 0)
        self._raw(a)

    def write(self) -> tuple[str, bytes]:
        import numpy as np

        # Consumers as mxnet2ncnn counts them: every non-weight input of every op (the graph's outputs are not
        # consumers). A blob read more than once gets a Split right after its layer, named splitncnn_<k> in order
        # of appearance; its copies are handed out from the last down: the first consumer (in node order) reads
        # <blob>_splitncnn_<refcount-1>, the last reads <blob>_splitncnn_0.
        consumers: Counter = Counter()
        for n in self.nodes:
            if n["op"] == "null":
                continue
            for src, _, _ in n["inputs"]:
                if self.nodes[src]["op"] != "null" or self.nodes[src]["name"] == "data":
                    consumers[src] += 1
        left = Counter(consumers)
        splits = 0

        def blob(src: int) -> str:
            base = self.blob_of[src]
            if consumers[src] > 1:
                left[src] -= 1
                return f"{base}_splitncnn_{left[src]}"
            return base

        def emit(op: str, name: str, ins: list[str], outs: list[str], params: str = "") -> None:
            self.layers.append(f"{op:<24} {name:<32} {len(ins)} {len(outs)} {' '.join(ins + outs)} {params}".rstrip())

        def after(idx: int, name: str) -> None:
            nonlocal splits
            self.blob_of[idx] = name
            if consumers[idx] > 1:
                outs = [f"{name}_splitncnn_{i}" for i in range(consumers[idx])]
                emit("Split", f"splitncnn_{splits}", [name], outs)
                splits += 1

        for i, n in enumerate(self.nodes):
            op, name = n["op"], n["name"]
            if op == "null":
                if name == "data":
                    emit("Input", "data", [], ["data"], f"0={INPUT_SHAPE[3]} 1={INPUT_SHAPE[2]} 2={INPUT_SHAPE[1]}")
                    after(i, "data")
                continue
            data_inputs = [
                s for s, _, _ in n["inputs"] if self.nodes[s]["op"] != "null" or self.nodes[s]["name"] == "data"
            ]
            if op not in SUPPORTED:
                raise ConvertError(
                    f"unsupported op {op} (node {name})",
                    hint="slim the model first (training ops such as fc7, SoftmaxOutput and BlockGrad "
                    "go with mfnpatch convert slim); the writer knows: " + ", ".join(SUPPORTED),
                )
            ins = [blob(s) for s in data_inputs]
            if op == "Flatten":
                emit("Flatten", name, ins, [name])
            elif op == "Dropout":  # the identity at inference (ncnn's Dropout, scale 1), kept as mxnet2ncnn keeps it
                emit("Dropout", name, ins, [name])
            elif op == "Convolution":
                k = _tuple(_attr(n, "kernel"), (1, 1))
                s = _tuple(_attr(n, "stride"), (1, 1))
                p = _tuple(_attr(n, "pad"), (0, 0))
                d = _tuple(_attr(n, "dilate"), (1, 1))
                nf, group = int(_attr(n, "num_filter")), int(_attr(n, "num_group", "1"))
                no_bias = str(_attr(n, "no_bias", "False")).lower() in ("true", "1")
                w = self._param(n, 0, "weight")
                kind = "ConvolutionDepthWise" if group > 1 else "Convolution"
                prm = (
                    f"0={nf} 1={k[1]} 11={k[0]} 2={d[1]} 12={d[0]} 3={s[1]} 13={s[0]} 4={p[1]} 14={p[0]} "
                    f"5={0 if no_bias else 1} 6={w.size}" + (f" 7={group}" if group > 1 else "")
                )
                emit(kind, name, ins, [name], prm)
                self._tagged(w)
                if not no_bias:
                    self._raw(self._param(n, 1, "bias"))
            elif op == "BatchNorm":
                mean, var = self._param(n, 2, "moving_mean"), self._param(n, 3, "moving_var")
                gamma = np.ones_like(mean) if _fix_gamma(n) else self._param(n, 0, "gamma")
                beta = self._param(n, 1, "beta")
                eps = float(_attr(n, "eps", "0.001"))
                emit("BatchNorm", name, ins, [name], f"0={mean.size} 1={eps:.9g}")
                for a in (gamma, mean, var, beta):
                    self._raw(a)
            elif op == "LeakyReLU":
                act = _attr(n, "act_type", "leaky")
                if act == "prelu":
                    slope = self._param(n, 0, "gamma")
                    emit("PReLU", name, ins, [name], f"0={slope.size}")
                    self._raw(slope)
                elif act == "leaky":
                    emit("ReLU", name, ins, [name], f"0={float(_attr(n, 'slope', '0.25')):.9g}")
                else:
                    raise ConvertError(f"unsupported op LeakyReLU act_type={act} (node {name})")
            elif op == "Activation":
                act = _attr(n, "act_type")
                if act != "relu":
                    raise ConvertError(f"unsupported op Activation act_type={act} (node {name})")
                emit("ReLU", name, ins, [name])
            elif op in ("elemwise_add", "_Plus", "broadcast_add"):
                emit("BinaryOp", name, ins, [name], "0=0")
            elif op in ("_minus_scalar", "_mul_scalar", "_plus_scalar"):
                code = {"_plus_scalar": 0, "_minus_scalar": 1, "_mul_scalar": 2}[op]
                emit("BinaryOp", name, ins, [name], f"0={code} 1=1 2={float(_attr(n, 'scalar')):.9g}")
            elif op == "FullyConnected":
                nh = int(_attr(n, "num_hidden"))
                no_bias = str(_attr(n, "no_bias", "False")).lower() in ("true", "1")
                w = self._param(n, 0, "weight")
                emit("InnerProduct", name, ins, [name], f"0={nh} 1={0 if no_bias else 1} 2={w.size}")
                self._tagged(w)
                if not no_bias:
                    self._raw(self._param(n, 1, "bias"))
            elif op == "Pooling":
                if str(_attr(n, "global_pool", "False")).lower() not in ("true", "1"):
                    raise ConvertError(f"unsupported op Pooling without global_pool (node {name})")
                pool = 1 if _attr(n, "pool_type", "max") == "avg" else 0
                emit("Pooling", name, ins, [name], f"0={pool} 4=1")
            after(i, name)
        blobs = set()
        for line in self.layers:
            parts = line.split()
            nin, nout = int(parts[2]), int(parts[3])
            blobs.update(parts[4 : 4 + nin + nout])
        text = "7767517\n" + f"{len(self.layers)} {len(blobs)}\n" + "\n".join(self.layers) + "\n"
        return text, bytes(self.bin)


def write_unfolded(sym, arg, aux, out_dir: Path) -> tuple[Path, Path]:
    text, data = NcnnWriter(graph(sym), arg, aux).write()
    out_dir.mkdir(parents=True, exist_ok=True)
    param, binf = out_dir / f"{FOLDED}.param", out_dir / f"{FOLDED}.bin"
    atomic_write(binf, data)
    atomic_write(param, text)
    return param, binf


# --------------------------------------------------------------------------------------------
# ONNX -> ncnn with pnnx (BatchNorm folded)


def pnnx_binary() -> str:
    """The pnnx executable from the pnnx wheel, found without importing the package (which imports torch)."""
    import importlib.util

    spec = importlib.util.find_spec("pnnx")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "pnnx"
        if bundled.is_file():
            return str(bundled)
    on_path = shutil.which("pnnx")
    if on_path:
        return on_path
    raise ConvertError("pnnx is not installed", hint="pip install --no-deps pnnx (the cpu environment has it)")


def run_pnnx(onnx_path: Path, out_dir: Path) -> tuple[Path, Path]:
    work = out_dir / ".pnnx"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = work / "model.onnx"
    shutil.copyfile(onnx_path, model)
    shape = "[" + ",".join(str(x) for x in INPUT_SHAPE) + "]"
    r = subprocess.run(
        [pnnx_binary(), str(model), f"inputshape={shape}", "fp16=0"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    param, binf = work / "model.ncnn.param", work / "model.ncnn.bin"
    if r.returncode != 0 or not param.is_file():
        tail = (r.stdout + r.stderr).strip().splitlines()[-5:]
        raise ConvertError(f"pnnx failed to convert {onnx_path} (exit {r.returncode})", details=tail)
    dst_param, dst_bin = out_dir / f"{FOLDED}.param", out_dir / f"{FOLDED}.bin"
    atomic_write(dst_bin, binf.read_bytes())
    atomic_write(dst_param, param.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return dst_param, dst_bin


def layer_counts(param: Path) -> Counter:
    return read_param(param).counts()


def param_layers(param: Path) -> list[Layer]:
    """The layers of an ncnn param file, in file order (which is an order that computes every input first)."""
    return read_param(param).layers


def param_io(param: Path) -> tuple[str, str]:
    """The input blob and the last layer's output blob of an ncnn param file."""
    pf = read_param(param)
    return pf.input, pf.output
