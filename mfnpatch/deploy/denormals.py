"""Weights that slow phones: trained models carry near-zero and denormal float32 weights, which ARM CPUs
without flush-to-zero compute much more slowly than normal numbers (InsightFace issue 629). ``convert``
counts them per parameter; ``--flush-denormals`` zeroes them before anything is written, so every engine
(MXNet, onnxruntime, both ncnn models) runs the same flushed weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

TINY = 1e-30  # what --flush-denormals zeroes: every nonzero weight smaller than this (denormals included)


@dataclass
class ParamCount:
    name: str
    weights: int
    denormal: int  # 0 < |w| < float32's smallest normal (1.18e-38)
    below: int  # 0 < |w| < 1e-30, the denormals included
    nonfinite: int = 0  # NaN or infinite: no engine computes anything from these


@dataclass
class DenormalReport:
    weights: int = 0
    denormal: int = 0
    below: int = 0
    nonfinite: int = 0
    flushed: bool = False
    params: list[ParamCount] = field(default_factory=list)  # only the parameters that have any

    def to_dict(self) -> dict:
        return asdict(self) | {"threshold": TINY}


def _count(name: str, a) -> ParamCount:
    import numpy as np

    x = np.abs(np.asarray(a, dtype=np.float32))
    nz = x > 0
    return ParamCount(
        name,
        int(x.size),
        int((nz & (x < np.finfo(np.float32).tiny)).sum()),
        int((nz & (x < TINY)).sum()),
        int((~np.isfinite(x)).sum()),
    )


def count(params: dict) -> DenormalReport:
    """Counts over MXNet parameters (name -> NDArray or array)."""
    rep = DenormalReport()
    for name in sorted(params):
        v = params[name]
        c = _count(name, v.asnumpy() if hasattr(v, "asnumpy") else v)
        rep.weights += c.weights
        rep.denormal += c.denormal
        rep.below += c.below
        rep.nonfinite += c.nonfinite
        if c.below or c.nonfinite:
            rep.params.append(c)
    return rep


def refuse_nonfinite(rep: DenormalReport, what: str) -> None:
    """A model with a NaN or infinite weight computes NaN for every face: refused before anything is made of it."""
    if rep.nonfinite:
        from mfnpatch.deploy.mxnet import ConvertError

        first = next(p for p in rep.params if p.nonfinite)
        raise ConvertError(
            f"{what} holds {rep.nonfinite} NaN or infinite weight(s) (first in {first.name}): every embedding it "
            "computes would be NaN",
            hint="the training diverged: take an earlier checkpoint (mfnpatch log summary LOG shows where the "
            "loss became NaN) or train again",
        )


def flush(params: dict) -> dict:
    """The parameters with every nonzero |w| < 1e-30 set to 0 (only the arrays that have any are copied)."""
    import numpy as np

    out = {}
    for name, v in params.items():
        a = v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)
        small = (a != 0) & (np.abs(a) < TINY)
        if small.any():
            a = np.where(small, 0, a).astype(a.dtype)
            v = _nd(a, v) if hasattr(v, "asnumpy") else a
        out[name] = v
    return out


def _nd(a, like):
    import mxnet as mx

    return mx.nd.array(a, ctx=like.context, dtype=like.dtype)
