"""Where a converted model stops computing what MXNet computes: every layer's output for one image compared,
in the engine's own order, with the MXNet op that computes the same thing.

A layer's MXNet counterpart is the op of the same name where the engine kept MXNet's names (the unfolded ncnn
model, ONNX); otherwise (pnnx names the folded model's blobs 0, 1, 2, …, and a BatchNorm folded into its
convolution makes one layer of two ops) it is the MXNet output of the same size closest to it. A layer
diverges when even that is further than the tolerance, measured as the relative L2 error
``||engine - mxnet|| / ||mxnet||`` (a scale error, such as a normalisation applied twice, counts: a cosine
would not see it). The first layer that diverges is named with its type, its closest MXNet op and the error,
and the last layer that still agreed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Relative L2 error per layer. Measured on the smoke run's trained model, the worst layer of each engine:
# onnxruntime 3.8e-7, ncnn folded 5.2e-7 and unfolded 2.8e-7 in float32; ncnn with fp16 storage 3.0e-4 (folded)
# and 3.5e-4 (unfolded). A conversion fault (a wrong channel order, a doubled normalisation, a missing PReLU
# slope) is at 1e-1 and more (tests/deploy/test_evaluate.py).
LAYER_TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2}


@dataclass
class Divergence:
    layer: str  # the engine's layer (or ONNX node) whose output diverges first
    type: str
    blob: str
    mxnet_op: str | None  # its counterpart in the MXNet graph (the closest output of the same size)
    rel_error: float
    cosine: float
    tolerance: float
    last_agreeing: str | None  # the engine's last layer before it that agreed
    layers_compared: int

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        what = f"MXNet's {self.mxnet_op}" if self.mxnet_op else "no MXNet output of its size"
        after = f", after {self.last_agreeing} agreed" if self.last_agreeing else ", the first layer compared"
        return (f"first diverging layer: {self.layer} ({self.type}) — relative error {self.rel_error:.3g} against "
                f"{what} (cosine {self.cosine:.4f}, tolerance {self.tolerance:g}){after}")  # fmt: skip


def _errors(a, b) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    nb = float(np.linalg.norm(b))
    na = float(np.linalg.norm(a))
    rel = float(np.linalg.norm(a - b)) / max(nb, 1e-12)
    cos = float(a @ b) / max(na * nb, 1e-24)
    return rel, cos


def first_divergence(reference: dict, produced: list, tolerance: float) -> Divergence | None:
    """``reference``: MXNet op name -> output; ``produced``: (layer, type, blob, output) in the engine's order.
    None when every layer agrees with some MXNet output within ``tolerance``."""
    import numpy as np

    by_size: dict[int, list[str]] = {}
    for name, v in reference.items():
        by_size.setdefault(int(np.asarray(v).size), []).append(name)
    last = None
    for i, (layer, kind, blob, value) in enumerate(produced):
        size = int(np.asarray(value).size)
        named = next((n for n in (blob, layer) if n in reference and int(np.asarray(reference[n]).size) == size), None)
        candidates = [named] if named else by_size.get(size, [])
        best: tuple[float, float, str | None] = (float("inf"), 0.0, None)
        for name in candidates:
            rel, cos = _errors(value, reference[name])
            if rel < best[0]:
                best = (rel, cos, name)
        if best[0] > tolerance:
            return Divergence(layer, kind, blob, best[2], best[0] if best[2] else float("inf"), best[1], tolerance,
                              last, i + 1)  # fmt: skip
        last = layer
    return None
