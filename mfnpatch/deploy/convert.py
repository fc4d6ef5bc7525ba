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

import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write, atomic_write_json, replacing

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


def parse_spec(spec: str) -> tuple[str, int]:
    prefix, sep, epoch = spec.rpartition(",")
    if not sep or not epoch.strip().lstrip("-").isdigit():
        raise ConvertError(f"{spec!r}: write PREFIX,EPOCH", hint="e.g. ../models/MobileFaceNet/model-y1-arcface,40")
    return prefix, int(epoch)


def load_checkpoint(spec: str):
    mx = _mx()
    prefix, epoch = parse_spec(spec)
    sym_path, params_path = Path(f"{prefix}-symbol.json"), Path(f"{prefix}-{epoch:04d}.params")
    for p in (sym_path, params_path):
        if not p.is_file():
            raise ConvertError(
                f"{p}: no such file", hint=f"is {spec} a checkpoint? (expects {sym_path.name} and {params_path.name})"
            )
    try:
        sym, arg, aux = mx.model.load_checkpoint(prefix, epoch)
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
    prefix, _ = parse_spec(spec)
    out_prefix = out_prefix or f"{prefix}-slim"
    if Path(out_prefix).resolve() == Path(prefix).resolve():
        raise ConvertError(
            f"-o {out_prefix} is the checkpoint's own prefix: its training symbol would be lost",
            hint="give another prefix (the default is PREFIX-slim)",
        )
    sym, arg, aux = load_checkpoint(spec)
    ssym, sarg = slim_symbol(sym, arg)
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    sym_path, params_path = Path(f"{out_prefix}-symbol.json"), Path(f"{out_prefix}-0000.params")
    with replacing(params_path) as tmp:
        mx.nd.save(str(tmp), {**{f"arg:{k}": v for k, v in sarg.items()}, **{f"aux:{k}": v for k, v in aux.items()}})
    atomic_write(sym_path, ssym.tojson())
    return sym_path, params_path


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

        # Dropout is the identity at inference: its consumers read its input
        alias: dict[int, int] = {}

        def real(i: int) -> int:
            while i in alias:
                i = alias[i]
            return i

        for i, n in enumerate(self.nodes):
            if n["op"] == "Dropout":
                alias[i] = n["inputs"][0][0]
        consumers: Counter = Counter()
        for i, n in enumerate(self.nodes):
            if i in alias:
                continue
            for src, _, _ in n["inputs"]:
                if self.nodes[src]["op"] != "null" or self.nodes[src]["name"] == "data":
                    consumers[real(src)] += 1
        for h in self.g["heads"]:
            consumers[real(h[0])] += 1
        used: Counter = Counter()

        def blob(src: int) -> str:
            src = real(src)
            base = self.blob_of[src]
            if consumers[src] > 1:
                used[src] += 1
                return f"{base}_splitncnn_{used[src] - 1}"
            return base

        def emit(op: str, name: str, ins: list[str], outs: list[str], params: str = "") -> None:
            self.layers.append(f"{op:<24} {name:<32} {len(ins)} {len(outs)} {' '.join(ins + outs)} {params}".rstrip())

        def after(idx: int, name: str) -> None:
            self.blob_of[idx] = name
            if consumers[idx] > 1:
                outs = [f"{name}_splitncnn_{i}" for i in range(consumers[idx])]
                emit("Split", f"splitncnn_{idx}", [name], outs)

        for i, n in enumerate(self.nodes):
            op, name = n["op"], n["name"]
            if op == "null":
                if name == "data":
                    emit("Input", "data", [], ["data"], f"0={INPUT_SHAPE[3]} 1={INPUT_SHAPE[2]} 2={INPUT_SHAPE[1]}")
                    after(i, "data")
                continue
            if i in alias:
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
                kind = 1 if _attr(n, "pool_type", "max") == "avg" else 0
                emit("Pooling", name, ins, [name], f"0={kind} 4=1")
            after(i, name)
        blobs = set()
        for line in self.layers:
            parts = line.split()
            nin, nout = int(parts[2]), int(parts[3])
            blobs.update(parts[4 : 4 + nin + nout])
        text = "7767517\n" + f"{len(self.layers)} {len(blobs)}\n" + "\n".join(self.layers) + "\n"
        return text, bytes(self.bin)


def output_blob(sym) -> str:
    g = graph(sym)
    return g["nodes"][g["heads"][0][0]]["name"]


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
        exe = Path(next(iter(spec.submodule_search_locations))) / "pnnx"
        if exe.is_file():
            return str(exe)
    exe = shutil.which("pnnx")
    if exe:
        return exe
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
    lines = Path(param).read_text().splitlines()
    return Counter(line.split()[0] for line in lines[2:] if line.strip())


def param_io(param: Path) -> tuple[str, str]:
    """The input blob and the last layer's output blob of an ncnn param file."""
    lines = [ln.split() for ln in Path(param).read_text().splitlines()[2:] if ln.strip()]
    first = next(p for p in lines if p[0] == "Input")
    last = lines[-1]
    nin, nout = int(last[2]), int(last[3])
    return first[4], last[4 + nin + nout - 1]


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


def _check_output_dir(out_dir: Path) -> None:
    """-o may be new, empty, or an earlier conversion (which is replaced whole); nothing else."""
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


def convert_ncnn(spec: str, out_dir: Path, *, verify_after: bool = False, on_step=None) -> ConvertResult:
    """Convert into a staging directory beside ``out_dir`` and swap it into place at the end: a failed or
    interrupted conversion leaves ``out_dir`` as it was."""
    out_dir = Path(out_dir).absolute()
    _check_output_dir(out_dir)
    load_checkpoint(spec)  # a bad checkpoint fails before anything is made
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.converting-", dir=out_dir.parent))
    try:
        result = _convert_into(spec, stage, verify_after=verify_after, on_step=on_step)
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


def _convert_into(spec: str, out_dir: Path, *, verify_after: bool, on_step) -> ConvertResult:
    t0 = time.perf_counter()
    say = on_step or (lambda s: None)
    mx = _mx()
    sym, arg, aux = load_checkpoint(spec)
    sym, arg = slim_symbol(sym, arg)
    check_input_shape(sym, arg)
    say("saving the slim MXNet model")
    with replacing(out_dir / "mxnet-0000.params") as tmp:
        mx.nd.save(str(tmp), {**{f"arg:{k}": v for k, v in arg.items()}, **{f"aux:{k}": v for k, v in aux.items()}})
    atomic_write(out_dir / "mxnet-symbol.json", sym.tojson())
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
    if check["min_cosine"] < 0.999:
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
        fixes=fixes, onnx_check=check, seconds=0.0,
    )  # fmt: skip
    if result.folded["batchnorm"]:
        raise ConvertError(f"pnnx left {result.folded['batchnorm']} BatchNorm layers unfolded in {fparam}")
    if verify_after:
        say("verifying MXNet, onnxruntime and both ncnn models on the same inputs")
        result.verify = asdict(verify(out_dir))
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


# --------------------------------------------------------------------------------------------
# Inputs and embeddings


def test_inputs(n: int = 10, seed: int = 0):
    """n images (N,3,112,112) in 0..255: face-like drawings (skin oval, eyes, brows, nose, mouth, lit from a
    side) for the first ~2/3, uniform noise for the rest."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    out = np.empty((n, 3, 112, 112), np.float32)
    faces = max(1, (2 * n) // 3)
    for i in range(n):
        if i >= faces:
            out[i] = rng.uniform(0, 255, (3, 112, 112))
            continue
        bg = rng.uniform(20, 200, 3)
        skin = np.array([rng.uniform(150, 230), rng.uniform(100, 170), rng.uniform(80, 140)])
        cx, cy = 56 + rng.normal(0, 3), 58 + rng.normal(0, 3)
        rx, ry = rng.uniform(32, 40), rng.uniform(42, 50)
        face = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        light = 0.75 + 0.25 * (xx / 111.0 if rng.random() < 0.5 else 1 - xx / 111.0)
        img = np.where(face[None], skin[:, None, None] * light[None], bg[:, None, None])
        for ex in (-1, 1):
            ecx, ecy = cx + ex * rng.uniform(14, 18), cy - rng.uniform(8, 14)
            eye = ((xx - ecx) / 5.5) ** 2 + ((yy - ecy) / 3.0) ** 2 <= 1
            brow = (np.abs(yy - (ecy - 8)) < 1.6) & (np.abs(xx - ecx) < 8)
            img = np.where((eye | brow)[None], rng.uniform(10, 60), img)
        nose = (np.abs(xx - cx) < 2.5) & (yy > cy - 4) & (yy < cy + 12)
        mouth = ((xx - cx) / 13.0) ** 2 + ((yy - (cy + 22)) / 3.5) ** 2 <= 1
        img = np.where(nose[None], img * 0.8, img)
        img = np.where(mouth[None], np.array([150.0, 60, 60])[:, None, None], img)
        out[i] = np.clip(img + rng.normal(0, 4, img.shape), 0, 255)
    return out


def embeddings_mxnet(sym, arg, aux, inputs):
    mx = _mx()
    ex = sym.simple_bind(mx.cpu(), data=(1, *inputs.shape[1:]), grad_req="null")
    ex.copy_params_from(arg, aux, allow_extra_params=True)
    outs = []
    for x in inputs:
        ex.forward(is_train=False, data=mx.nd.array(x[None]))
        outs.append(ex.outputs[0].asnumpy().reshape(-1))
    import numpy as np

    return np.stack(outs)


def embeddings_onnx(path: Path, inputs, threads: int = 1):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.stack([s.run(None, {name: x[None]})[0].reshape(-1) for x in inputs])


def ncnn_net(param: Path, binf: Path, threads: int = 1):
    try:
        import ncnn
    except ImportError:
        raise ConvertError("the ncnn Python package is not installed", hint="pip install ncnn") from None
    net = ncnn.Net()
    net.opt.num_threads = threads
    if net.load_param(str(param)) != 0:
        raise ConvertError(f"{param}: ncnn cannot load this param file")
    if net.load_model(str(binf)) != 0:
        raise ConvertError(f"{binf}: ncnn cannot load this model file")
    return net


def embeddings_ncnn(param: Path, binf: Path, inputs, threads: int = 1):
    import ncnn
    import numpy as np

    net = ncnn_net(param, binf, threads)
    in_name, out_name = param_io(param)
    outs = []
    for x in inputs:
        ex = net.create_extractor()
        # ncnn.Mat(arr) borrows the array's memory: without clone() the binding can segfault once it is freed
        ex.input(in_name, ncnn.Mat(np.ascontiguousarray(x)).clone())
        rc, out = ex.extract(out_name)
        if rc != 0:
            raise ConvertError(f"{param}: ncnn failed to compute {out_name} (error {rc})")
        outs.append(np.array(out).reshape(-1).copy())
    return np.stack(outs)


def compare(ref, got) -> dict:
    import numpy as np

    if ref.shape != got.shape:
        return {"min_cosine": -1.0, "mean_cosine": -1.0, "max_abs_diff": float("inf"), "shape": list(got.shape)}
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    return {
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "max_abs_diff": float(np.abs(ref - got).max()),
        "max_abs_value": float(np.abs(ref).max()),
    }


# --------------------------------------------------------------------------------------------
# convert verify


@dataclass
class VerifyResult:
    dir: str
    inputs: int
    face_like: int
    threshold: float
    engines: dict = field(default_factory=dict)  # engine -> compare() against MXNet
    min_cosine: float = 0.0
    passed: bool = False


def verify(model_dir: Path, n: int = 10, threshold: float = 0.9999) -> VerifyResult:
    """Embeddings of MXNet, onnxruntime and both ncnn models on the same n inputs (face-like and noise)."""
    mx = _mx()
    d = Path(model_dir)
    need = [d / "mxnet-symbol.json", d / "mxnet-0000.params", d / "model.onnx", d / f"{FOLDED}.param",
            d / f"{FOLDED}.bin", d / "unfolded" / f"{FOLDED}.param", d / "unfolded" / f"{FOLDED}.bin"]  # fmt: skip
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise ConvertError(
            f"{d}: not a converted model directory ({missing[0]} is missing)",
            hint=f"make it with: mfnpatch convert ncnn PREFIX,EPOCH -o {d}",
        )
    sym, arg, aux = mx.model.load_checkpoint(str(d / "mxnet"), 0)
    inputs = test_inputs(n)
    ref = embeddings_mxnet(sym, arg, aux, inputs)
    res = VerifyResult(str(d), n, max(1, (2 * n) // 3), threshold)
    res.engines["onnxruntime"] = compare(ref, embeddings_onnx(d / "model.onnx", inputs))
    res.engines["ncnn folded"] = compare(ref, embeddings_ncnn(d / f"{FOLDED}.param", d / f"{FOLDED}.bin", inputs))
    res.engines["ncnn unfolded"] = compare(
        ref, embeddings_ncnn(d / "unfolded" / f"{FOLDED}.param", d / "unfolded" / f"{FOLDED}.bin", inputs)
    )
    res.min_cosine = min(e["min_cosine"] for e in res.engines.values())
    res.passed = res.min_cosine >= threshold
    atomic_write_json(d / "verify.json", asdict(res))
    return res
