"""Proof that every converted model computes what the MXNet model computes: embeddings of the same inputs
from MXNet, onnxruntime and both ncnn models, compared by cosine similarity."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.deploy.mxnet import FOLDED, ConvertError, _mx
from mfnpatch.deploy.ncnn import param_io
from mfnpatch.fsutil import atomic_write_json

# MXNet's MKLDNN subgraph backend breaks asnumpy() on the slim model ("We can't generate TBlob for MKLDNN
# data"): inference here runs without it.
os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")


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

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


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
    if (d / "deploy.json").exists():  # older conversions have none; a present one must be as written
        from mfnpatch.deploy.contract import load as load_contract

        load_contract(d)
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
