"""convert ncnn from an ONNX graph (the PyTorch lineage: arcface_torch's torch2onnx.py output), on a small real
ONNX model built here: the input normalisation put in front of the graph, pnnx, onnxruntime as the reference of
verify, evaluate and bench, the deployment contract; and clear errors for what cannot be converted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mfnpatch.deploy.convert import convert_ncnn
from mfnpatch.deploy.verify import source_of, verify


def embedding_onnx(path: Path, *, shape=(3, 112, 112), dim: int = 64, seed: int = 0) -> Path:
    """A small face-embedding-shaped graph, as torch2onnx writes one: input 'data' (N, 3, 112, 112) normalised,
    Conv (stride 4) -> BatchNormalization -> PRelu -> Conv (stride 4) -> Flatten -> Gemm -> (N, dim)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    c1, c2 = 8, 16
    side = (shape[1] // 4) // 4
    inits = [
        init("w1", rng.normal(0, 0.2, (c1, shape[0], 3, 3))),
        init("g", rng.uniform(0.5, 1.5, c1)), init("b", rng.normal(0, 0.1, c1)),
        init("m", rng.normal(0, 0.1, c1)), init("v", rng.uniform(0.5, 1.5, c1)),
        init("slope", np.full((c1, 1, 1), 0.25)),
        init("w2", rng.normal(0, 0.2, (c2, c1, 3, 3))),
        init("fc", rng.normal(0, 0.05, (dim, c2 * side * side))), init("fcb", rng.normal(0, 0.01, dim)),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["data", "w1"], ["c1"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["bn"]),
        helper.make_node("PRelu", ["bn", "slope"], ["act"]),
        helper.make_node("Conv", ["act", "w2"], ["c2"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["fc1"], transB=1),
    ]
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", *shape])
    y = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", dim])
    graph = helper.make_graph(nodes, "mbf-like", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_an_onnx_graph_converts_and_verifies_against_onnxruntime(tmp_path):
    src = embedding_onnx(tmp_path / "model.onnx")
    out = tmp_path / "ncnn"
    r = convert_ncnn(str(src), out, verify_after=True)
    assert r.source_kind == "onnx" and r.unfolded == {} and r.folded["batchnorm"] == 0
    assert r.onnx_check["min_cosine"] > 0.99999 and r.verify["passed"] and r.verify["reference"] == "onnxruntime"
    assert source_of(out) == {"path": str(src), "input": "data", "output": "fc1", "dim": 64, "mean": 127.5,
                              "std": 127.5}  # fmt: skip
    deal = json.loads((out / "deploy.json").read_text())
    assert deal["input"]["normalisation_in_graph"] == [{"op": "subtract", "value": 127.5},
                                                       {"op": "multiply", "value": 1 / 127.5}]  # fmt: skip
    assert not deal["input"]["app_normalises"] and deal["output"]["blob_onnx"] == "fc1" and deal["output"]["dim"] == 64
    assert list(deal["models"]) == ["ncnn folded"] and deal["lineage"] == r.lineage == "arcface_torch"
    # the converted graph takes 0..255: it computes on x what the source computes on (x - 127.5) / 127.5
    import onnxruntime

    x = np.random.default_rng(1).uniform(0, 255, (1, 3, 112, 112)).astype(np.float32)
    a = onnxruntime.InferenceSession(str(out / "model.onnx")).run(None, {"data": x})[0]
    b = onnxruntime.InferenceSession(str(src)).run(None, {"data": (x - 127.5) / 127.5})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert verify(out).passed  # again, from the directory alone


def test_evaluate_and_bench_take_onnxruntime_as_the_reference(tmp_path, cli):
    out = tmp_path / "ncnn"
    assert convert_ncnn(str(embedding_onnx(tmp_path / "model.onnx")), out).source_kind == "onnx"
    data = tmp_path / "data"
    assert cli("data", "synth", "-o", data, "--ids", "4", "--per-id", "2", "--pairs", "20").code == 0
    r = cli("convert", "evaluate", out, "--data", data, "--sets", "lfw", "--json")
    ev = r.json()
    assert r.code == 0 and ev["reference"] == "onnxruntime" and ev["passed"]
    assert ev["engines"] == ["onnxruntime", "ncnn folded", "ncnn folded fp16"]
    assert ev["thresholds"]["measured_with"].startswith("onnxruntime, one embedding per image")
    b = cli("bench", out, "--threads", "1", "--loops", "2", "--json").json()
    assert [row["engine"] for row in b["rows"]] == ["ncnn folded", "ncnn folded fp16", "onnxruntime"]


@pytest.mark.parametrize(
    "shape,dim,message",
    [((3, 96, 96), 64, "has shape [None, 3, 96, 96]; expected (N, 3, 112, 112)")],
)
def test_what_cannot_be_converted_is_one_clear_error(tmp_path, cli, shape, dim, message):
    bad = embedding_onnx(tmp_path / "bad.onnx", shape=shape, dim=dim)
    r = cli("convert", "ncnn", bad, "-o", tmp_path / "out")
    assert r.code == 1 and message in r.err and not (tmp_path / "out").exists()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    r = cli("convert", "ncnn", junk, "-o", tmp_path / "out")
    assert r.code == 1 and "junk.onnx: not a valid ONNX model" in r.err
    good = embedding_onnx(tmp_path / "good.onnx")
    r = cli("convert", "ncnn", good, "-o", tmp_path / "out", "--flush-denormals")
    assert r.code == 1 and "--flush-denormals is not supported for an ONNX source yet" in r.err
    r = cli("convert", "ncnn", good, "-o", tmp_path / "out", "--onnx-input-norm", "127.5")
    assert r.code == 64 and "give MEAN,STD" in r.err
    assert not (tmp_path / "out").exists()
