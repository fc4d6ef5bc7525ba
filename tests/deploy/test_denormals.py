"""Weights that slow phones: counted per parameter, zeroed with --flush-denormals for every engine, and the
flushed model still computes what the original does."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mxnet", "onnx", "onnxruntime", "ncnn", "pnnx")),
    reason="needs the cpu environment (mxnet, onnx, onnxruntime, ncnn, pnnx): mfnpatch env create cpu",
)

# planted in conv_1's weight: 3 denormals (below 1.18e-38) and 2 more below 1e-30; 1e-29 is above the line
PLANTED = {0: 1e-40, 1: -3e-39, 2: 5e-44, 3: 1e-31, 4: -2e-35, 5: 1e-29}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import mxnet as mx
    import numpy as np
    from mfn_symbol import save_checkpoint

    d = tmp_path_factory.mktemp("dn")
    spec = save_checkpoint(mx, str(d / "model-y1"), 1, classes=20)
    prefix = spec.rsplit(",", 1)[0]
    sym, arg, aux = mx.model.load_checkpoint(prefix, 1)
    w = arg["conv_1_conv2d_weight"].asnumpy().reshape(-1)
    for i, v in PLANTED.items():
        w[i] = v
    arg["conv_1_conv2d_weight"] = mx.nd.array(w.reshape(arg["conv_1_conv2d_weight"].shape), dtype="float32")
    mx.model.save_checkpoint(prefix, 1, sym, arg, aux)
    assert np.float32(1e-40) != 0  # float32 holds these as denormals, not zeros
    return spec


def test_counted_and_kept_by_default(checkpoint, tmp_path, cli):
    out = tmp_path / "kept"
    r = cli("convert", "ncnn", checkpoint, "-o", out, "--json")
    assert r.code == 0, r.err
    d = r.json()["denormals"]
    assert (d["denormal"], d["below"], d["flushed"]) == (3, 5, False)
    assert [p["name"] for p in d["params"]] == ["conv_1_conv2d_weight"] and d["params"][0]["below"] == 5
    assert json.loads((out / "convert.json").read_text())["denormals"]["below"] == 5
    r = cli("convert", "ncnn", checkpoint, "-o", tmp_path / "kept2")
    assert "5 of" in r.out and "below 1e-30 (3 denormal)" in r.out and "--flush-denormals zeroes them" in r.out


def test_flushed_for_every_engine_and_the_same_embeddings(checkpoint, tmp_path, cli):
    import mxnet as mx
    import numpy as np

    from mfnpatch.deploy.engines import embeddings_mxnet, embeddings_ncnn
    from mfnpatch.deploy.verify import test_inputs

    kept, flushed = tmp_path / "kept", tmp_path / "flushed"
    assert cli("convert", "ncnn", checkpoint, "-o", kept).code == 0
    r = cli("convert", "ncnn", checkpoint, "-o", flushed, "--flush-denormals", "--verify", "--json")
    assert r.code == 0, r.err
    d = r.json()
    assert d["denormals"]["flushed"] and d["verify"]["passed"]
    _, arg, _ = mx.model.load_checkpoint(str(flushed / "mxnet"), 0)
    w = arg["conv_1_conv2d_weight"].asnumpy().reshape(-1)
    assert all(w[i] == 0 for i in range(5)) and w[5] == np.float32(1e-29)
    # the ncnn model's weights are the flushed ones: no nonzero float32 below 1e-30 in the unfolded .bin
    raw = np.frombuffer((flushed / "unfolded" / "mobilefacenet.bin").read_bytes(), "<f4")
    assert not ((raw != 0) & (np.abs(raw) < 1e-30)).any()
    raw_kept = np.frombuffer((kept / "unfolded" / "mobilefacenet.bin").read_bytes(), "<f4")
    assert ((raw_kept != 0) & (np.abs(raw_kept) < 1e-30)).sum() == 5
    # and the flushed model computes what the original does
    x = test_inputs(4)
    a = embeddings_mxnet(*mx.model.load_checkpoint(str(kept / "mxnet"), 0), x)
    b = embeddings_ncnn(flushed / "mobilefacenet.param", flushed / "mobilefacenet.bin", x)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.9999


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mfnpatch.datasets.synth import synth

    d = tmp_path_factory.mktemp("dn-data") / "data"
    synth(d, ids=4, per_id=2, pairs=20)
    return d


@pytest.mark.slow
def test_accuracy_and_latency_before_and_after_flushing(checkpoint, data, tmp_path, cli):
    flushed = tmp_path / "flushed"
    assert cli("convert", "ncnn", checkpoint, "-o", flushed, "--flush-denormals").code == 0
    kept = flushed / "unflushed"
    assert {p.name for p in kept.iterdir()} == {"mxnet-symbol.json", "mxnet-0000.params", "mobilefacenet.param",
                                                "mobilefacenet.bin"}  # fmt: skip
    r = cli("convert", "evaluate", flushed, "--data", data, "--sets", "lfw", "--engines", "ncnn folded", "--json")
    assert r.code == 0, r.err
    ev = r.json()
    assert ev["engines"] == ["mxnet", "ncnn folded", "mxnet, denormals kept", "ncnn folded, denormals kept"]
    assert ev["denormals"]["flushed_at_conversion"] and ev["denormals"]["below_1e-30"] == 0
    rows = {row["engine"]: row for row in ev["rows"]}
    assert rows["mxnet, denormals kept"]["reference"] == "mxnet" and rows["mxnet, denormals kept"]["holds"]
    assert rows["ncnn folded, denormals kept"]["reference"] == "mxnet, denormals kept"
    assert all(row["holds"] for row in ev["rows"])
    r = cli("bench", flushed, "--threads", "1", "--loops", "2", "--warmup", "1", "--json")
    assert r.code == 0, r.err
    assert "ncnn folded, denormals kept" in [row["engine"] for row in r.json()["rows"]]
    text = cli("bench", flushed, "--threads", "1", "--loops", "2", "--warmup", "1").out
    assert "denormals flushed:" in text


@pytest.mark.slow
def test_a_model_with_denormals_is_measured_flushed_too(checkpoint, data, tmp_path, cli):
    out = tmp_path / "kept"
    assert cli("convert", "ncnn", checkpoint, "-o", out).code == 0
    r = cli("convert", "evaluate", out, "--data", data, "--sets", "lfw", "--engines", "ncnn folded", "--json")
    assert r.code == 0, r.err
    ev = r.json()
    assert ev["engines"] == ["mxnet", "ncnn folded", "mxnet, denormals flushed"]
    assert ev["denormals"]["below_1e-30"] == 5 and not ev["denormals"]["flushed_at_conversion"]
    assert all(row["holds"] for row in ev["rows"])
