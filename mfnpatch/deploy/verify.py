"""Proof that every converted model computes what the MXNet model computes: embeddings of the same inputs
from MXNet, onnxruntime and both ncnn models (float32: ncnn's fp16 options off), compared by cosine
similarity."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.deploy.contract import source_of
from mfnpatch.deploy.engines import embed
from mfnpatch.deploy.mxnet import FOLDED, ConvertError
from mfnpatch.deploy.registry import HOST_ENGINES, Engine, reference
from mfnpatch.finite import at_least, lowest
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


def compare(ref, got) -> dict:
    import numpy as np

    if ref.shape != got.shape:
        return {"min_cosine": -1.0, "mean_cosine": -1.0, "max_abs_diff": float("inf"), "shape": list(got.shape)}
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    if not (np.isfinite(ref).all() and np.isfinite(got).all()):
        cos = np.full(len(ref), np.nan)  # a NaN or infinite embedding agrees with nothing, itself included
    return {
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "max_abs_diff": float(np.abs(ref - got).max()),
        "max_abs_value": float(np.abs(ref).max()),
    }


# --------------------------------------------------------------------------------------------
# convert verify


MODEL_FILES = ("mxnet-symbol.json", "mxnet-0000.params", "model.onnx", f"{FOLDED}.param", f"{FOLDED}.bin",
               f"unfolded/{FOLDED}.param", f"unfolded/{FOLDED}.bin")  # fmt: skip


ONNX_MODEL_FILES = ("model.onnx", f"{FOLDED}.param", f"{FOLDED}.bin")


def check_model_dir(d: Path) -> None:
    """A directory made by ``convert ncnn``, with every model file; a ConvertError naming the first missing."""
    if not d.is_dir():
        raise ConvertError(f"{d}: no such directory", hint=f"make it with: mfnpatch convert ncnn PREFIX,EPOCH -o {d}")
    files = ONNX_MODEL_FILES if source_of(d) else MODEL_FILES
    missing = [d / f for f in files if not (d / f).is_file()]
    if missing:
        what = "is not a regular file" if os.path.lexists(missing[0]) else "is missing"
        raise ConvertError(
            f"{d}: not a converted model directory ({missing[0]} {what})",
            hint=f"make it with: mfnpatch convert ncnn PREFIX,EPOCH -o {d}",
        )


@dataclass
class VerifyResult:
    dir: str
    inputs: int
    face_like: int
    threshold: float
    engines: dict = field(default_factory=dict)  # engine -> compare() against MXNet
    min_cosine: float = 0.0
    passed: bool = False
    reference: str = "mxnet"  # the engine every other is compared with

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


HALF_THRESHOLD = 0.999  # an engine with fp16 or bf16 somewhere (evaluate's fp16 cosine tolerance)


def verify(model_dir: Path, n: int = 10, threshold: float = 0.9999, engines: list[Engine] | None = None
           ) -> VerifyResult:  # fmt: skip
    """Embeddings of the reference (MXNet, or onnxruntime on the graph of a model converted from ONNX) and of every
    float32 engine (``engines``: records of the registry instead) on the same n inputs, face-like and noise."""
    d = Path(model_dir)
    check_model_dir(d)
    if (d / "deploy.json").exists():  # older conversions have none; a present one must be as written
        from mfnpatch.deploy.contract import load as load_contract

        load_contract(d)
    source = "onnx" if source_of(d) else "mxnet"
    ref = reference(source)
    chosen = engines if engines is not None else [e for e in HOST_ENGINES[source] if not e.half]
    inputs = test_inputs(n)
    ref_emb = embed(ref, d, inputs)
    res = VerifyResult(str(d), n, max(1, (2 * n) // 3), threshold, reference=ref.name)
    for e in chosen:  # an engine computing in half precision somewhere is held to fp16's tolerance
        res.engines[e.name] = compare(ref_emb, embed(e, d, inputs)) | {
            "threshold": min(threshold, HALF_THRESHOLD) if e.half else threshold,
            "emulated": e.emulated,
        }
    res.min_cosine = lowest(e["min_cosine"] for e in res.engines.values())
    res.passed = all(at_least(e["min_cosine"], e["threshold"]) for e in res.engines.values())
    atomic_write_json(d / "verify.json", asdict(res))
    return res
