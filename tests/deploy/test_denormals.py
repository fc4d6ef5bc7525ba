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

    from mfnpatch.deploy.verify import embeddings_mxnet, embeddings_ncnn, test_inputs

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
