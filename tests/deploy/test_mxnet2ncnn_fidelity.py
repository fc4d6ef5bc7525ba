"""The unfolded ncnn model is the graph the seed's mxnet2ncnn wrote: Split layers named splitncnn_0, 1, … in
order of appearance, right after the layer whose blob they copy, and the copies handed out from the last down
(ncnn's tools/mxnet/mxnet2ncnn.cpp, in its 2018 revision and today's: the first consumer in node order reads
``<blob>_splitncnn_<refcount-1>``, the last reads ``<blob>_splitncnn_0``)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mxnet", "ncnn")),
    reason="needs the cpu environment (mxnet, ncnn): mfnpatch env create cpu",
)


def _tiny(mx):
    """data -> norm -> x; x feeds three consumers (conv2, conv3, the last add); w feeds two (v, u)."""
    data = mx.sym.Variable("data")
    norm = (data - 127.5) * 0.0078125
    x = mx.sym.Convolution(norm, num_filter=4, kernel=(3, 3), pad=(1, 1), no_bias=True, name="conv1")
    y = mx.sym.Convolution(x, num_filter=4, kernel=(1, 1), no_bias=True, name="conv2")
    z = mx.sym.Convolution(x, num_filter=4, kernel=(1, 1), no_bias=True, name="conv3")
    w = mx.sym.elemwise_add(y, z, name="add_w")
    v = mx.sym.elemwise_add(w, x, name="add_v")
    u = mx.sym.elemwise_add(v, w, name="add_u")
    d = mx.sym.Dropout(u, p=0.4, name="drop")
    return mx.sym.Flatten(d, name="fc1")


def _layers(text: str) -> dict[str, tuple[str, list[str], list[str]]]:
    out = {}
    for line in text.splitlines()[2:]:
        p = line.split()
        nin, nout = int(p[2]), int(p[3])
        out[p[1]] = (p[0], p[4 : 4 + nin], p[4 + nin : 4 + nin + nout])
    return out


def test_splits_are_named_and_wired_as_mxnet2ncnn_does(tmp_path):
    import mxnet as mx
    import numpy as np

    from mfnpatch.deploy.engines import embeddings_mxnet, embeddings_ncnn
    from mfnpatch.deploy.ncnn import write_unfolded

    sym = _tiny(mx)
    shapes, _, _ = sym.infer_shape(data=(1, 3, 8, 8))
    rng = np.random.default_rng(0)
    arg = {
        n: mx.nd.array(rng.normal(0, 0.3, s)) for n, s in zip(sym.list_arguments(), shapes, strict=True) if n != "data"
    }
    param, binf = write_unfolded(sym, arg, {}, tmp_path)
    text = param.read_text()
    layers = _layers(text)
    names = [ln.split()[1] for ln in text.splitlines()[2:]]
    # splits numbered in order of appearance, each right after the layer it copies
    assert [n for n in names if n.startswith("splitncnn_")] == ["splitncnn_0", "splitncnn_1"]
    assert names[names.index("splitncnn_0") - 1] == "conv1" and names[names.index("splitncnn_1") - 1] == "add_w"
    assert layers["splitncnn_0"] == ("Split", ["conv1"], [f"conv1_splitncnn_{k}" for k in range(3)])
    assert layers["splitncnn_1"] == ("Split", ["add_w"], ["add_w_splitncnn_0", "add_w_splitncnn_1"])
    # copies handed out from the last down, in node order
    assert layers["conv2"][1] == ["conv1_splitncnn_2"]
    assert layers["conv3"][1] == ["conv1_splitncnn_1"]
    assert layers["add_v"][1] == ["add_w_splitncnn_1", "conv1_splitncnn_0"]
    assert layers["add_u"][1] == ["add_v", "add_w_splitncnn_0"]
    # Dropout kept as a layer (the identity at inference), as mxnet2ncnn keeps it
    assert layers["drop"] == ("Dropout", ["add_u"], ["drop"])
    # the header counts every layer and blob
    count, blobs = map(int, text.splitlines()[1].split())
    assert count == len(layers) and blobs == len({b for _, i, o in layers.values() for b in i + o})
    # and it computes what MXNet computes
    x = rng.uniform(0, 255, (3, 3, 8, 8)).astype(np.float32)
    ref = embeddings_mxnet(sym, arg, {}, x)
    got = embeddings_ncnn(param, binf, x)
    assert np.allclose(ref, got, rtol=1e-4, atol=1e-4)
