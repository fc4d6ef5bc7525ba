"""int8, made here: no registry ships ncnn's ``ncnn2table`` or ``ncnn2int8``, so mfnpatch calibrates the folded model
and writes ncnn's int8 model itself, through the formats ncnn reads.

Calibration (as ``ncnn2table``'s KL method, the entropy calibration of TensorRT): every Convolution,
ConvolutionDepthWise and InnerProduct gets a weight scale per output channel (127 / its largest |w|; 31 for a
3x3 stride-1 convolution, which ncnn's int8 winograd computes in 6 bits) and a scale for its input blob: the
input's |x| over the calibration faces in a 2048-bin histogram (zeros left out), and the clipping threshold
whose 128-level quantised distribution is closest to it in KL divergence; scale = 127 / threshold. Everything is
computed in float64 from ncnn float32's blobs on this machine: the same faces give the same table, byte for byte.

The int8 model (``DIR/int8/``) is the folded model with ``8=1`` (int8_scale_term) on those layers and, in the
.bin, each one's weight scales and input scale after its bias, the layout ncnn's ``load_model`` reads; the
weights stay float32 and ncnn quantises them when it loads the model (``quantize_to_int8`` with these scales,
what ncnn2int8 would have stored). ``int8/table.json`` and ``int8/mobilefacenet.table`` (ncnn2table's text
format) keep the table.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.deploy.engines import ncnn_blobs
from mfnpatch.deploy.mxnet import FOLDED, ConvertError
from mfnpatch.deploy.ncnnparam import Layer, read_param
from mfnpatch.fsutil import atomic_write, read_bounded

QUANTISED = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
NO_WEIGHTS = ("Input", "BinaryOp", "Split", "Flatten", "Pooling", "Reshape", "Dropout", "Noop", "Concat",
              "Eltwise", "ReLU", "Sigmoid", "Softmax", "Permute", "Slice", "Crop", "Interp")  # fmt: skip
BINS, LEVELS, KL_EPS = 2048, 128, 1e-4
INT8_SCALE_TERM = "8"
# where each quantised type keeps its weight count and bias flag (ncnn's load_param)
WEIGHT_SIZE = {"Convolution": 6, "ConvolutionDepthWise": 6, "InnerProduct": 2}
BIAS_TERM = {"Convolution": 5, "ConvolutionDepthWise": 5, "InnerProduct": 1}


@dataclass
class LayerScale:
    layer: str
    type: str
    weight_scales: list[float]
    bottom_scale: float
    absmax: float
    threshold: float


@dataclass
class Table:
    images: int
    method: str
    layers: list[LayerScale] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def ncnn_text(self) -> str:
        """ncnn2table's table format: ``NAME_param_0 w...`` lines, then ``NAME bottom_scale`` lines."""
        out = [f"{x.layer}_param_0 " + " ".join(f"{s:f}" for s in x.weight_scales) + " " for x in self.layers]
        out += [f"{x.layer} {x.bottom_scale:f} " for x in self.layers]
        return "\n".join(out) + "\n"


def kl_threshold(hist) -> int:
    """The histogram bin (of BINS) at which clipping loses least: for each candidate threshold t, the KL divergence
    between the clipped distribution (the mass beyond t added to bin t-1) and its quantisation to LEVELS levels
    (each level's mean density over the bins it covers, fractions of bins at its edges) spread back over those
    bins, both with KL_EPS added — ncnn2table's and TensorRT's method, in float64."""
    import numpy as np

    h = np.asarray(hist, np.float64)
    p = h / h.sum() if h.sum() else h
    cum = np.concatenate([[0.0], np.cumsum(p)])  # C(k): the mass below bin k
    best, best_kl = LEVELS, np.inf
    for t in range(LEVELS, BINS):
        per = t / LEVELS
        edges = np.arange(LEVELS + 1) * per
        c = np.interp(edges, np.arange(len(cum)), cum)  # C at fractional bin positions (linear inside a bin)
        q = np.diff(c) / per  # each level's mean density
        cq = np.concatenate([[0.0], np.cumsum(q)])
        x = np.arange(t + 1, dtype=np.float64)
        m = np.minimum((x / per).astype(np.int64), LEVELS - 1)
        g = per * cq[m] + (x - m * per) * q[m]  # the integral of the level step function up to x
        expand = np.diff(g) + KL_EPS
        clip = p[:t] + KL_EPS
        clip[-1] += p[t:].sum()
        kl = float((clip * np.log(clip / expand)).sum())
        if kl < best_kl:
            best, best_kl = t, kl
    return best


def _weights(layer: Layer, binf: bytes, offset: int):
    """The float32 weights of a quantised layer at ``offset`` of the .bin (its 4-byte tag, then the data)."""
    import numpy as np

    n = int(layer.param(WEIGHT_SIZE[layer.type]) or 0)
    (tag,) = struct.unpack_from("<I", binf, offset)
    if tag != 0:
        raise ConvertError(f"{layer.name}: weights stored with tag {tag:#x}, not float32: int8 needs a float32 model",
                           hint="convert the model again (pnnx writes float32 with fp16=0)")  # fmt: skip
    return np.frombuffer(binf, np.float32, n, offset + 4), offset + 4 + 4 * n


def _walk(pf, binf: bytes):
    """(layer, weights or None, end of its weights and bias in the .bin, bias bytes) in file order."""
    off = 0
    for x in pf.layers:
        if x.type in QUANTISED:
            w, off = _weights(x, binf, off)
            bias = 4 * int(x.param(0) or 0) if x.param(BIAS_TERM[x.type]) == "1" else 0
            yield x, w, off, bias
            off += bias
        elif x.type == "PReLU":
            off += 4 * int(x.param(0) or 1)
        elif x.type not in NO_WEIGHTS:
            raise ConvertError(f"{pf.path}: layer {x.name} of type {x.type}: int8 does not know how much of the .bin "
                               "it reads", hint="int8 is made for MobileFaceNet-like models (Convolution, "
                               "ConvolutionDepthWise, InnerProduct, PReLU, BinaryOp)")  # fmt: skip
    if off != len(binf):
        raise ConvertError(f"{pf.path}: the layers read {off} bytes of a {len(binf)}-byte .bin", hint="convert again")


def weight_scales(x: Layer, w) -> list[float]:
    import numpy as np

    groups = int(x.param(7) or 1) if x.type == "ConvolutionDepthWise" else int(x.param(0) or 1)
    per = np.abs(np.asarray(w, np.float64)).reshape(groups, -1).max(axis=1)
    six_bit = x.type == "Convolution" and x.param(1) == "3" and (x.param(11) or "3") == "3" and \
        (x.param(3) or "1") == "1" and (x.param(2) or "1") == "1"  # fmt: skip
    top = 31.0 if six_bit else 127.0
    return [float(top / a) if a > 0 else 1.0 for a in per]


def calibrate(d: Path, images, on_progress=None) -> Table:
    """The table of the folded model of ``d`` from ``images`` ((N, 3, H, W) float32, 0..255 RGB): two passes of
    ncnn float32 here (the inputs' |x| maxima, then their histograms)."""
    import numpy as np

    param, binf = Path(d) / f"{FOLDED}.param", Path(d) / f"{FOLDED}.bin"
    pf = read_param(param)
    data = read_bounded(binf, "ncnn model", 1 << 30)
    quant = [(x, w) for x, w, _, _ in _walk(pf, data)]
    bottoms = [x.bottoms[0] for x, _ in quant]

    def inputs_of(i: int) -> dict:
        by = {blob: v for _, _, blob, v in ncnn_blobs(param, binf, images[i : i + 1])}
        return {b: np.abs(np.asarray(by[b], np.float64)).ravel() if b in by else None for b in bottoms}

    absmax = dict.fromkeys(bottoms, 0.0)
    hists = {b: np.zeros(BINS, np.int64) for b in bottoms}
    n = len(images)
    first = pf.input
    for i in range(n):  # pass 1: maxima
        for b, v in inputs_of(i).items():
            v = np.abs(np.asarray(images[i], np.float64)).ravel() if b == first else v
            absmax[b] = max(absmax[b], float(v.max()) if v is not None and v.size else 0.0)
        if on_progress:
            on_progress("int8 calibration (maxima)", i + 1, n)
    for i in range(n):  # pass 2: histograms
        for b, v in inputs_of(i).items():
            v = np.abs(np.asarray(images[i], np.float64)).ravel() if b == first else v
            if v is None or absmax[b] <= 0:
                continue
            v = v[v != 0]
            idx = np.minimum((v / absmax[b] * BINS).astype(np.int64), BINS - 1)
            hists[b] += np.bincount(idx, minlength=BINS)
        if on_progress:
            on_progress("int8 calibration (histograms)", i + 1, n)
    table = Table(n, "kl")
    for x, w in quant:
        b = x.bottoms[0]
        t = kl_threshold(hists[b]) if absmax[b] > 0 else BINS - 1
        threshold = (t + 0.5) * absmax[b] / BINS
        table.layers.append(LayerScale(x.name, x.type, weight_scales(x, w), 127.0 / threshold if threshold else 1.0,
                                       absmax[b], threshold))  # fmt: skip
    return table


def write_int8(d: Path, table: Table) -> tuple[Path, Path]:
    """``d/int8/``: the folded model with the table in it (param ``8=1``, scales after each layer's bias)."""
    param, binf = Path(d) / f"{FOLDED}.param", Path(d) / f"{FOLDED}.bin"
    pf = read_param(param)
    data = read_bounded(binf, "ncnn model", 1 << 30)
    scales = {x.layer: x for x in table.layers}
    out, pos = bytearray(), 0
    for x, _w, end, bias in _walk(pf, data):
        s = scales.get(x.name)
        if s is None:
            continue
        out += data[pos : end + bias]
        out += struct.pack(f"<{len(s.weight_scales)}f", *s.weight_scales) + struct.pack("<f", s.bottom_scale)
        pos = end + bias
    out += data[pos:]
    o = Path(d) / "int8"
    o.mkdir(exist_ok=True)
    atomic_write(o / f"{FOLDED}.param", pf.with_params({n: {INT8_SCALE_TERM: "1"} for n in scales}))
    atomic_write(o / f"{FOLDED}.bin", bytes(out))
    atomic_write(o / "table.json", json.dumps(table.to_dict(), indent=1) + "\n")
    atomic_write(o / f"{FOLDED}.table", table.ncnn_text())
    return o / f"{FOLDED}.param", o / f"{FOLDED}.bin"
