"""int8 made here: the KL threshold is ncnn2table's, calibration is deterministic to the byte, the int8 model is the
layout ncnn's load_model reads, and its cost in accuracy is measured on InsightFace's own MobileFaceNet and real
LFW faces (skipped with the reason where the data is absent)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import realdata

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mxnet", "onnx", "onnxruntime", "ncnn", "pnnx", "cv2")),
    reason="needs the cpu environment (mxnet, onnx, onnxruntime, ncnn, pnnx, opencv): mfnpatch env create cpu",
)


def _reference_kl(hist) -> int:
    """ncnn2table's loops (quantize_KL), written out plainly, in float64."""
    from mfnpatch.deploy.int8 import BINS, KL_EPS, LEVELS

    total = sum(hist)
    p = [h / total for h in hist]
    best, best_kl = LEVELS, float("inf")
    for t in range(LEVELS, BINS, 7):  # every 7th candidate: the same arithmetic, a test-sized loop
        clip = [KL_EPS + p[j] for j in range(t)]
        clip[t - 1] += sum(p[t:])
        per = t / LEVELS
        q = [0.0] * LEVELS
        ex = [KL_EPS] * t
        for j in range(LEVELS):
            s, e = j * per, (j + 1) * per
            lu, rl = math.ceil(s), math.floor(e)
            ls, rs = lu - s, e - rl
            q[j] = ((ls * p[lu - 1] if ls > 0 else 0) + (rs * p[rl] if rs > 0 and rl < t else 0)
                    + sum(p[lu:rl])) / (e - s)  # fmt: skip
            if ls > 0:
                ex[lu - 1] += ls * q[j]
            if rs > 0 and rl < t:
                ex[rl] += rs * q[j]
            for k in range(lu, rl):
                ex[k] += q[j]
        kl = sum(a * math.log(a / b) for a, b in zip(clip, ex, strict=True))
        if kl < best_kl:
            best, best_kl = t, kl
    return best


def test_the_kl_threshold_is_ncnn2tables():
    import numpy as np

    from mfnpatch.deploy import int8
    from mfnpatch.deploy.int8 import BINS

    rng = np.random.default_rng(0)
    for v in (np.abs(rng.normal(0, 1, 50_000)), np.abs(rng.standard_cauchy(50_000)), rng.uniform(0, 1, 50_000)):
        h = np.bincount(np.minimum((v / v.max() * BINS).astype(int), BINS - 1), minlength=BINS)
        got = int8.kl_threshold(h)
        # the same loop restricted to every 7th candidate: the full search can only find a lower KL
        ref = _reference_kl(h)
        assert got == ref or abs(got - ref) <= 7, (got, ref)
    # no outliers: nothing is clipped; a heavy tail (Cauchy) is clipped far below its maximum
    assert int8.kl_threshold(np.bincount(np.arange(BINS), minlength=BINS)) >= BINS - 8


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random-weight MobileFaceNet-shaped model converted, and 12 synthetic faces to calibrate on."""
    import mxnet as mx
    from mfn_symbol import save_checkpoint

    from mfnpatch.deploy.convert import convert_ncnn
    from mfnpatch.deploy.verify import test_inputs

    root = tmp_path_factory.mktemp("int8")
    convert_ncnn(save_checkpoint(mx, str(root / "ck" / "m"), 1, classes=None), root / "ncnn")
    return root / "ncnn", test_inputs(12, seed=5)


def test_calibration_is_deterministic_to_the_byte_and_ncnn_loads_the_model(small, tmp_path):
    import shutil

    import numpy as np

    from mfnpatch.deploy.engines import embed
    from mfnpatch.deploy.int8 import calibrate, write_int8
    from mfnpatch.deploy.ncnnparam import read_param
    from mfnpatch.deploy.registry import INT8

    d, x = small
    other = tmp_path / "again"
    shutil.copytree(d, other)
    write_int8(d, calibrate(d, x))
    write_int8(other, calibrate(other, x))
    for f in ("mobilefacenet.param", "mobilefacenet.bin", "table.json", "mobilefacenet.table"):
        assert (d / "int8" / f).read_bytes() == (other / "int8" / f).read_bytes(), f
    table = json.loads((d / "int8" / "table.json").read_text())
    pf = read_param(d / "int8" / "mobilefacenet.param")
    quantised = [x for x in pf.layers if x.param(8) == "1"]
    assert len(quantised) == len(table["layers"]) == 50  # 32 Convolution, 17 ConvolutionDepthWise, 1 InnerProduct
    extra = sum(4 * (len(t["weight_scales"]) + 1) for t in table["layers"])
    assert (d / "int8" / "mobilefacenet.bin").stat().st_size == (d / "mobilefacenet.bin").stat().st_size + extra
    e = embed(INT8, d, x[:4])
    assert e.shape == (4, 128) and np.isfinite(e).all()  # ncnn read the scales where they are and ran int8


def test_a_model_int8_does_not_know_is_refused(small, tmp_path):
    import shutil

    from mfnpatch.deploy.int8 import calibrate
    from mfnpatch.deploy.mxnet import ConvertError

    d = tmp_path / "m"
    shutil.copytree(small[0], d)
    p = d / "mobilefacenet.param"
    p.write_text(p.read_text().replace("PReLU", "Swish", 1))
    with pytest.raises(ConvertError, match="of type Swish: int8 does not know"):
        calibrate(d, small[1][:2])


@pytest.mark.slow
@pytest.mark.skipif(not realdata.available(), reason=realdata.REASON)
def test_int8_on_the_real_model_and_real_faces(tmp_path, cli):
    """InsightFace's MobileFaceNet, calibrated on 100 real LFW training faces, measured on 200 LFW pairs: within
    1 % of MXNet's accuracy here; the report names the layers that lose most; deploy.json lists no target for it
    (no --arm)."""
    data = realdata.lfw_subset(tmp_path, per_fold=10)
    d = tmp_path / "ncnn"
    assert cli("convert", "ncnn", f"{realdata.MODEL},0", "-o", d).code == 0
    r = cli("convert", "int8", d, "--data", data, "--sets", "lfw", "--images", "100", "--json")
    assert r.code == 0, r.err
    rep = r.json()
    row = rep["rows"][0]
    assert row["engine"] == "ncnn folded int8" and row["within"] and abs(row["delta"]) <= 0.01
    assert row["accuracy"] >= 0.97 and len(rep["losing_layers"]) == 5
    assert json.loads((d / "int8" / "int8.json").read_text())["passed"] is True
