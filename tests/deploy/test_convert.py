"""Deployment for real: a MobileFaceNet-shaped checkpoint, slimmed, converted both ways, verified, benched."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mxnet", "onnx", "onnxruntime", "ncnn", "pnnx")),
    reason="needs the cpu environment (mxnet, onnx, onnxruntime, ncnn, pnnx): mfnpatch env create cpu",
)


@pytest.fixture(scope="module")
def mx():
    import mxnet

    return mxnet


@pytest.fixture(scope="module")
def checkpoint(mx, tmp_path_factory) -> str:
    from mfn_symbol import save_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(mx, str(d / "model-y1-arcface"), 40, classes=20)


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    from mfnpatch.deploy.convert import convert_ncnn

    d = tmp_path_factory.mktemp("conv") / "ncnn"
    return convert_ncnn(checkpoint, d, verify_after=True), d


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def test_slim_keeps_the_training_symbol(checkpoint, cli, mx):
    prefix = checkpoint.rsplit(",", 1)[0]
    before = _sha(f"{prefix}-symbol.json")
    r = cli("convert", "slim", checkpoint)
    assert r.code == 0, r.err
    assert _sha(f"{prefix}-symbol.json") == before
    sym, arg, aux = mx.model.load_checkpoint(f"{prefix}-slim", 0)
    assert sym.list_outputs() == ["fc1_output"]
    assert not any(k.startswith("fc7") for k in arg) and "fc1_weight" in arg and "pre_fc1_bias" in arg
    r = cli("convert", "slim", checkpoint, "-o", prefix)
    assert r.code == 1 and "its training symbol would be lost" in r.err


def test_convert_both_ways_and_verify(converted):
    r, d = converted
    assert r.folded["batchnorm"] == 0 and r.unfolded["batchnorm"] == 50
    assert r.unfolded["layers"]["Split"] == 12 and r.unfolded["layers"]["ConvolutionDepthWise"] == 17
    assert r.unfolded["io"] == ("data", "fc1")
    assert {"pre_fc1: flatten=True", "fc1: fix_gamma, gamma exported as 1"} <= set(r.fixes)
    assert any("PReLU slope [C] -> [C,1,1]" in f for f in r.fixes)
    v = r.verify
    assert v["passed"] and v["inputs"] >= 8 and v["face_like"] >= 1 and v["inputs"] - v["face_like"] >= 1
    assert set(v["engines"]) == {"onnxruntime", "ncnn folded", "ncnn unfolded"}
    for e in v["engines"].values():
        assert e["min_cosine"] >= 0.9999 and e["max_abs_diff"] < 0.05 * e["max_abs_value"]
    assert json.loads((d / "verify.json").read_text())["passed"]
    assert json.loads((d / "convert.json").read_text())["folded"]["batchnorm"] == 0


def _export_without(fix: str, checkpoint: str, path: Path):
    from mfnpatch.deploy.export import export_onnx
    from mfnpatch.deploy.mxnet import load_checkpoint, slim_symbol

    sym, arg, aux = load_checkpoint(checkpoint)
    sym, arg = slim_symbol(sym, arg)
    fixes = tuple(f for f in ("flatten", "fix_gamma", "prelu") if f != fix)
    export_onnx(sym, arg, aux, path, fixes=fixes)


def _ort_cosine(path: Path, d: Path) -> float:
    import mxnet as mx
    import numpy as np

    from mfnpatch.deploy.engines import embeddings_mxnet, embeddings_onnx
    from mfnpatch.deploy.verify import test_inputs

    sym, arg, aux = mx.model.load_checkpoint(str(d / "mxnet"), 0)
    x = test_inputs(3)
    ref, got = embeddings_mxnet(sym, arg, aux, x), embeddings_onnx(path, x)
    return float(((ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)).min())


def test_without_flatten_onnxruntime_breaks(checkpoint, converted, tmp_path):
    import onnxruntime

    _export_without("flatten", checkpoint, tmp_path / "m.onnx")
    with pytest.raises(Exception, match="Gemm|Dimension mismatch|ShapeInference"):
        onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])


def test_without_the_prelu_reshape_it_is_wrong(checkpoint, converted, tmp_path):
    _, d = converted
    _export_without("prelu", checkpoint, tmp_path / "m.onnx")
    try:
        cos = _ort_cosine(tmp_path / "m.onnx", d)
    except Exception:  # onnxruntime refuses the broadcast: also a failure, as it should be
        return
    assert cos < 0.99


def test_a_broken_conversion_fails_verification(checkpoint, converted, tmp_path, cli):
    """gamma not forced to 1: the fix_gamma BatchNorm multiplies by the stored 0 -> verify fails."""
    import shutil

    _, d = converted
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    _export_without("fix_gamma", checkpoint, broken / "model.onnx")
    r = cli("convert", "verify", broken, "--json")
    assert r.code == 1
    v = r.json()
    assert not v["passed"] and v["engines"]["onnxruntime"]["min_cosine"] < 0.5
    assert v["engines"]["ncnn folded"]["min_cosine"] >= 0.9999  # the others are unaffected


def test_unsupported_op_and_bad_inputs(checkpoint, mx, tmp_path):
    from mfnpatch.deploy.export import graph
    from mfnpatch.deploy.mxnet import ConvertError, load_checkpoint, slim
    from mfnpatch.deploy.ncnn import NcnnWriter

    sym, arg, aux = load_checkpoint(checkpoint)
    with pytest.raises(ConvertError, match=r"unsupported op (BlockGrad|SoftmaxOutput) \(node \w+\)") as e:
        NcnnWriter(graph(sym), arg, aux).write()
    assert "mfnpatch convert slim" in e.value.hint
    prefix = checkpoint.rsplit(",", 1)[0]
    with pytest.raises(ConvertError, match=r"model-y1-arcface-0007.params: no such file"):
        load_checkpoint(f"{prefix},7")
    with pytest.raises(ConvertError, match="write PREFIX,EPOCH"):
        slim(prefix)


def test_wrong_input_shape_is_named(mx, tmp_path):
    from mfnpatch.deploy.convert import convert_ncnn
    from mfnpatch.deploy.mxnet import ConvertError

    data = mx.sym.Variable("data")
    x = mx.sym.Convolution(data, num_filter=8, kernel=(3, 3), stride=(2, 2), name="conv0")
    fc1 = mx.sym.FullyConnected(x, num_hidden=16, name="fc1")
    arg = {
        "conv0_weight": mx.nd.ones((8, 3, 3, 3)),
        "conv0_bias": mx.nd.zeros(8),
        "fc1_weight": mx.nd.ones((16, 8 * 31 * 31)),
        "fc1_bias": mx.nd.zeros(16),
    }  # made for 64x64 input
    mx.model.save_checkpoint(str(tmp_path / "small"), 1, fc1, arg, {})
    with pytest.raises(ConvertError, match="does not take a 1x3x112x112 input") as e:
        convert_ncnn(f"{tmp_path / 'small'},1", tmp_path / "out")
    assert "fc1" in e.value.message


@pytest.mark.slow
def test_bench_brief(converted, cli):
    _, d = converted
    r = cli("bench", d, "--threads", "1", "--loops", "2", "--warmup", "1", "--json")
    assert r.code == 0, r.err
    res = r.json()
    assert [row["engine"] for row in res["rows"]] == [
        "ncnn folded",
        "ncnn unfolded",
        "ncnn folded fp16",
        "onnxruntime",
        "mxnet",
    ]
    assert all(row["min"] <= row["avg"] <= row["max"] for row in res["rows"])
    assert res["flop_bound_ms"]["1"] > 0 and res["reference"]["threads"]["8"]["avg"] == 28.87
    assert json.loads((d / "bench.json").read_text())["rows"]
    text = cli("bench", d, "--threads", "1", "--loops", "2").out
    assert "loop_count = 2" in text and "ncnn folded  min =" in text and "Snapdragon 625" in text


def test_bench_and_verify_need_a_converted_dir(cli, tmp_path):
    r = cli("bench", tmp_path)
    assert r.code == 1 and "not a converted model directory" in r.err and "mfnpatch convert ncnn" in r.err
    r = cli("convert", "verify", tmp_path)
    assert r.code == 1 and "not a converted model directory" in r.err


def test_relative_output_and_a_failed_conversion_leaves_the_old_one(checkpoint, cli, tmp_path, monkeypatch):
    """-o relative to the cwd works (pnnx runs elsewhere); a conversion that fails part way (here pnnx
    exits 1) leaves the earlier conversion exactly as it was and no staging directory behind."""
    monkeypatch.chdir(tmp_path)
    r = cli("convert", "ncnn", checkpoint, "-o", "out")
    assert r.code == 0, r.err
    before = {p.name: _sha(p) for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert "convert.json" in before and json.loads((tmp_path / "out/convert.json").read_text())["out_dir"] == str(
        tmp_path / "out"
    )
    bad = tmp_path / "bin" / "pnnx"
    bad.parent.mkdir()
    bad.write_text("#!/bin/sh\necho 'pnnx: cannot read model' >&2\nexit 1\n")
    bad.chmod(0o755)
    monkeypatch.setattr("mfnpatch.deploy.ncnn.pnnx_binary", lambda: str(bad))
    r = cli("convert", "ncnn", checkpoint, "-o", "out")
    assert r.code == 1 and "pnnx failed" in r.err
    assert {p.name: _sha(p) for p in (tmp_path / "out").iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "out"]


def test_refuses_a_directory_that_is_not_a_conversion(checkpoint, cli, tmp_path):
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = cli("convert", "ncnn", checkpoint, "-o", str(mine))
    assert r.code == 1 and "not empty" in r.err and "new or empty directory" in r.err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
