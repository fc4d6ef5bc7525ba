"""What a phone computes, for real: ncnn's own aarch64 kernels under QEMU user-mode emulation (the arm64-qemu
environment, MFNPATCH_ARM_ENV). A one-layer net shows the ARMv8.2 fp16 depthwise fault and its mask; the real
model-zoo MobileFaceNet (../shared/data) is checked on every CPU class and fixed by masking exactly its faulty
layers. Skipped, with the reason, where the environment or the data is absent."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

import pytest
import realdata

from mfnpatch.emulator import MARKER

ARM_ENV = os.environ.get("MFNPATCH_ARM_ENV", "")
SHARED = realdata.SHARED
REAL_MODEL = Path(f"{realdata.MODEL}-0000.params")

pytestmark = [
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("mxnet", "onnx", "onnxruntime", "ncnn", "pnnx")),
        reason="needs the cpu environment (mxnet, onnx, onnxruntime, ncnn, pnnx): mfnpatch env create cpu",
    ),
    pytest.mark.skipif(
        not (ARM_ENV and (Path(ARM_ENV) / MARKER).is_file()),
        reason="needs the emulated ARM environment: mfnpatch env create arm64-qemu --prefix DIR, then "
        "MFNPATCH_ARM_ENV=DIR (.ci/run does both)",
    ),
]


def one_layer(d: Path, featmask: int | None = None, channels: int = 16, size: int = 28) -> Path:
    """A stride-2 3x3 depthwise convolution, 8-channel packs, 112/4 = 28 in, 14 out (the width MobileFaceNet's
    faulty layer has), as the folded model's files."""
    import numpy as np

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (channels, 9)).astype(np.float32)
    b = rng.normal(0, 0.1, channels).astype(np.float32)
    mask = f" 31={featmask}" if featmask else ""
    d.mkdir(parents=True, exist_ok=True)
    (d / "mobilefacenet.param").write_text(
        f"7767517\n2 2\nInput data 0 1 data 0={size} 1={size} 2={channels}\n"
        f"ConvolutionDepthWise dw 1 1 data out 0={channels} 1=3 3=2 4=1 5=1 6={channels * 9} 7={channels}{mask}\n"
    )
    (d / "mobilefacenet.bin").write_bytes(struct.pack("<I", 0) + w.tobytes() + b.tobytes())
    return d


def _run(d: Path, target: str, precision: str = "app"):
    import numpy as np

    from mfnpatch.deploy.engines import embed
    from mfnpatch.deploy.registry import Engine

    x = np.random.default_rng(1).normal(0, 1, (2, 16, 28, 28)).astype(np.float32)
    return embed(Engine("ncnn", "folded", precision, target=target), d, x).reshape(2, 16, 14, 14), \
        embed(Engine("ncnn", "folded"), d, x).reshape(2, 16, 14, 14)  # fmt: skip


def test_the_depthwise_fault_shows_on_armv82_fp16_only_and_the_mask_fixes_it(tmp_path):
    import numpy as np

    d = one_layer(tmp_path / "net")
    got, ref = _run(d, "cortex-a76")
    err = np.abs(got - ref)
    wrong = sorted(set(np.argwhere(err > 0.05)[:, 3].tolist()))
    assert wrong == [13], f"columns wrong on cortex-a76 with fp16 arithmetic: {wrong}"  # 14 mod 4 = 2: the last
    for target, precision in (("cortex-a53", "app"), ("cortex-a76", "fp32"), ("cortex-a76", "fp16-storage")):
        got, ref = _run(d, target, precision)
        assert np.abs(got - ref).max() < 0.01, (target, precision)
    masked = one_layer(tmp_path / "masked", featmask=1)  # bit 0: fp16 arithmetic off for this layer only
    got, ref = _run(masked, "cortex-a76")
    assert np.abs(got - ref).max() < 0.01


def test_check_target_names_and_masks_exactly_the_faulty_layer(tmp_path):
    """A clean layer before the faulty one: only the depthwise layer is masked, with bit 0 (fp16 arithmetic)."""
    import numpy as np

    from mfnpatch.deploy.mask import check_target
    from mfnpatch.deploy.ncnnparam import read_param

    d = one_layer(tmp_path / "net")
    lines = (d / "mobilefacenet.param").read_text().splitlines()
    rng = np.random.default_rng(2)
    c1 = rng.normal(0, 0.3, (16, 16)).astype(np.float32)
    (d / "mobilefacenet.param").write_text("\n".join([
        "7767517", "3 3", lines[2], "Convolution conv 1 1 data c 0=16 1=1 5=0 6=256",
        lines[3].replace(" 1 1 data out ", " 1 1 c out "), ""]))  # fmt: skip
    (d / "mobilefacenet.bin").write_bytes(struct.pack("<I", 0) + c1.tobytes() + (d / "mobilefacenet.bin").read_bytes())
    x = rng.normal(0, 1, (3, 16, 28, 28)).astype(np.float32)
    r = check_target(d, "cortex-a76", inputs=x)
    assert [m.layer for m in r.masked] == ["dw"] and r.masked[0].featmask == 1, r
    assert r.min_cosine_before < 0.999 <= r.min_cosine and r.holds
    assert read_param(d / "mobilefacenet.param").layer("dw").param(31) == "1"
    assert read_param(d / "mobilefacenet.param").layer("conv").param(31) is None


@pytest.mark.slow
@pytest.mark.skipif(not REAL_MODEL.is_file(), reason=realdata.REASON)
def test_the_real_model_on_every_cpu_class_masked_where_it_must_be(tmp_path, cli):
    """model-y1-test2 converted with --arm all: cortex-a53 and max hold; cortex-a76 computes its stride-2
    depthwise layers of output width 14 and 7 wrongly in fp16 until exactly those two are masked; deploy.json
    records it and convert verify --arm then holds on every engine of every class."""
    out = tmp_path / "ncnn"
    r = cli("convert", "ncnn", f"{realdata.MODEL},0", "-o", out, "--arm", "all", "--json")
    assert r.code == 0, r.err
    arm = r.json()["arm"]
    assert arm["cortex-a53"]["holds"] and not arm["cortex-a53"]["masked"]
    a76 = arm["cortex-a76"]
    assert a76["min_cosine_before"] < 0.999 <= a76["min_cosine"]
    assert [(m["layer"], m["type"], m["featmask"]) for m in a76["masked"]] == [
        ("convdw_73", "ConvolutionDepthWise", 1), ("convdw_80", "ConvolutionDepthWise", 1)]  # fmt: skip
    from mfnpatch.deploy.ncnnparam import read_param

    widths = {x.name: x for x in read_param(out / "mobilefacenet.param").layers}
    assert widths["convdw_73"].param(3) == "2" and widths["convdw_80"].param(3) == "2"  # stride 2
    assert arm["max"]["holds"]
    deal = json.loads((out / "deploy.json").read_text())
    assert [m["layer"] for m in deal["targets"]["cortex-a76"]["masked"]] == ["convdw_73", "convdw_80"]
    r = cli("convert", "verify", out, "--arm", "all", "--inputs", "8", "--json")
    assert r.code == 0, r.err
    engines = r.json()["engines"]
    assert {"ncnn folded app @ cortex-a76", "ncnn folded fp16-storage @ cortex-a76", "ncnn folded bf16 @ max",
            "ncnn folded @ cortex-a53"} <= set(engines)  # fmt: skip
    assert all(e["min_cosine"] >= e["threshold"] for e in engines.values())


def test_a_sample_spreads_over_the_folds_half_matching():
    from mfnpatch.deploy.armeval import sample_pairs
    from mfnpatch.deploy.protocol import fold_slices

    issame = ([True] * 300 + [False] * 300) * 10  # LFW's layout: each fold 300 matching, then 300 not
    idx = sample_pairs(issame, 20)
    assert len(idx) == 20 and idx == sorted(idx)
    for a, b in fold_slices(20):  # the sample's own folds each hold one of each kind
        assert sorted(issame[i] for i in idx[a:b]) == [False, True]
    assert {i // 600 for i in idx} == set(range(10))


@pytest.mark.slow
@pytest.mark.skipif(not realdata.available(), reason=realdata.REASON)
def test_evaluate_says_what_an_armv82_phone_computes_on_real_faces(tmp_path, cli):
    """The unmasked model-zoo MobileFaceNet on 20 real LFW pairs: cortex-a76 with ncnn's defaults is outside, its
    first diverging layer convdw_73; fp32 and fp16 storage alone hold; the rows say what was sampled and
    deploy.json's targets carry the accuracy."""
    data = realdata.lfw_subset(tmp_path, per_fold=2)
    d = tmp_path / "ncnn"
    assert cli("convert", "ncnn", f"{realdata.MODEL},0", "-o", d).code == 0
    r = cli("convert", "evaluate", d, "--data", data, "--sets", "lfw", "--engines", "ncnn folded", "--arm",
            "cortex-a76", "--arm-pairs", "20", "--json")  # fmt: skip
    assert r.code == 1, r.err
    ev = r.json()
    rows = {x["engine"]: x for x in ev["rows"]}
    app = rows["ncnn folded app @ cortex-a76"]
    assert app["emulated"] and app["sampled"] == "20 of 40 pairs (40 images, unflipped)" and not app["holds"]
    assert app["min_cosine"] < 0.999 and "cosine" in app["why"]
    assert rows["ncnn folded @ cortex-a76"]["holds"] and rows["ncnn folded fp16-storage @ cortex-a76"]["holds"]
    assert ev["outside"] == ["ncnn folded app @ cortex-a76"]
    assert ev["divergence"]["ncnn folded app @ cortex-a76"]["layer"] == "convdw_73"
    deal = json.loads((d / "deploy.json").read_text())
    acc = deal["targets"]["cortex-a76"]["accuracy"]["lfw"]
    assert {a["engine"] for a in acc} == set(rows) - {"mxnet", "ncnn folded"}
