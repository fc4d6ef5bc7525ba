"""convert evaluate for real: a MobileFaceNet-shaped checkpoint converted, measured on synthetic verification
sets through every engine; the contract's thresholds and golden inputs read back and reproduced; conversions
broken on purpose caught with the layer that diverges named; bad input refused with nothing written."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mxnet", "onnx", "onnxruntime", "ncnn", "pnnx", "cv2")),
    reason="needs the cpu environment (mxnet, onnx, onnxruntime, ncnn, pnnx, opencv): mfnpatch env create cpu",
)


@pytest.fixture(scope="module")
def mx():
    import mxnet

    return mxnet


@pytest.fixture(scope="module")
def made(mx, tmp_path_factory):
    """A converted random-weight MobileFaceNet and a synthetic dataset with 20 pairs per set."""
    from mfn_symbol import save_checkpoint

    from mfnpatch.datasets.synth import synth
    from mfnpatch.deploy.convert import convert_ncnn

    root = tmp_path_factory.mktemp("ev")
    spec = save_checkpoint(mx, str(root / "ck" / "model-y1"), 1, classes=20)
    convert_ncnn(spec, root / "ncnn")
    synth(root / "data", ids=4, per_id=2, pairs=20)
    return root / "ncnn", root / "data"


@pytest.fixture
def model(made, tmp_path) -> Path:
    """A fresh copy of the converted directory, for a test to measure or break."""
    d = tmp_path / "ncnn"
    shutil.copytree(made[0], d)
    return d


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_every_engine_holds_on_every_set(model, made, cli):
    r = cli("convert", "evaluate", model, "--data", made[1], "--threads", "1", "--json")
    assert r.code == 0, r.err
    ev = r.json()
    assert ev["passed"] and ev["outside"] == [] and not ev["divergence"]
    engines = ["mxnet", "onnxruntime", "ncnn folded", "ncnn unfolded", "ncnn folded fp16", "ncnn unfolded fp16"]
    assert ev["engines"] == engines
    sets = ("lfw", "cfp_fp", "agedb_30")
    assert [(x["set"], x["engine"]) for x in ev["rows"]] == [(s, e) for s in sets for e in engines]
    for row in ev["rows"]:
        assert row["pairs"] == 20 and row["images"] == 80 and 0 <= row["accuracy"] <= 1 and row["holds"]
        if row["engine"] != "mxnet":
            assert abs(row["delta"]) <= 1 / 20 and row["min_cosine"] >= 0.999
    assert ev["fp16"]["storage"] in (True, False) and ev["fp16"]["note"]
    assert json.loads((model / "evaluate.json").read_text())["rows"] == ev["rows"]
    text = cli("convert", "evaluate", model, "--data", made[1], "--sets", "lfw", "--engines", "ncnn folded").out
    assert "PASS: every engine holds" in text and "ncnn folded" in text and "10 folds, with flip" in text


@pytest.mark.slow
def test_thresholds_and_golden_inputs_round_trip(model, made, cli, mx):
    import cv2
    import numpy as np

    from mfnpatch.deploy import contract
    from mfnpatch.deploy.engines import embeddings_mxnet, embeddings_ncnn

    before = contract.load(model)
    assert before.thresholds is None and before.golden == []
    r = cli("convert", "evaluate", model, "--data", made[1], "--engines", "ncnn folded", "--json")
    assert r.code == 0, r.err
    ev = r.json()
    c = contract.load(model)  # the digest holds: written by mfnpatch, not by hand
    assert c.thresholds is not None and set(c.thresholds.sets) == {"lfw", "cfp_fp", "agedb_30"}
    assert c.thresholds.model_dump(mode="json") == ev["thresholds"]
    lfw = c.thresholds.sets["lfw"]
    assert (lfw.pairs, lfw.same, lfw.different) == (20, 10, 10) and [f.far for f in lfw.far] == [1e-3, 1e-4]
    assert all(not f.resolvable for f in lfw.far)  # 10 different pairs cannot measure FAR 1e-3
    assert c.thresholds.all is not None and c.thresholds.all.pairs == 60
    assert len(c.golden) == 6 and {g.set for g in c.golden} == {"lfw", "cfp_fp", "agedb_30"}
    # an app's pipeline: read the PNG as OpenCV does (BGR), convert to RGB, feed the deployed ncnn model
    imgs = np.stack([cv2.cvtColor(cv2.imread(str(model / g.image)), cv2.COLOR_BGR2RGB) for g in c.golden])
    x = imgs.transpose(0, 3, 1, 2).astype(np.float32)
    want = np.array([g.embedding for g in c.golden])
    for got in (
        embeddings_ncnn(model / "mobilefacenet.param", model / "mobilefacenet.bin", x),
        embeddings_mxnet(*mx.model.load_checkpoint(str(model / "mxnet"), 0), x),
    ):
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() >= c.golden[0].min_cosine
    # a BGR pipeline (imread without the conversion) does not pass the golden check
    bgr = np.stack([cv2.imread(str(model / g.image)) for g in c.golden]).transpose(0, 3, 1, 2).astype(np.float32)
    got = embeddings_ncnn(model / "mobilefacenet.param", model / "mobilefacenet.bin", bgr)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() < c.golden[0].min_cosine


# --------------------------------------------------------------------------------------------
# Conversions broken on purpose


def _rewrite_unfolded(model: Path, mx, change) -> None:
    """The unfolded ncnn model written again from weights changed by ``change(arg)``; MXNet's stays right."""
    from mfnpatch.deploy.ncnn import write_unfolded

    sym, arg, aux = mx.model.load_checkpoint(str(model / "mxnet"), 0)
    arg = dict(arg)
    change(arg)
    write_unfolded(sym, arg, aux, model / "unfolded")


def _broken(cli, model: Path, data: Path, engine: str) -> dict:
    r = cli("convert", "evaluate", model, "--data", data, "--sets", "lfw", "--engines", engine, "--json")
    assert r.code == 1, r.err
    ev = r.json()
    assert ev["outside"] == [engine] and not ev["passed"]
    return ev["divergence"][engine]


@pytest.mark.slow
def test_a_bgr_model_is_caught_at_its_first_convolution(model, made, cli, mx):
    def bgr(arg):
        w = arg["conv_1_conv2d_weight"].asnumpy()
        arg["conv_1_conv2d_weight"] = mx.nd.array(w[:, ::-1].copy())

    _rewrite_unfolded(model, mx, bgr)
    div = _broken(cli, model, made[1], "ncnn unfolded")
    assert (div["layer"], div["type"], div["mxnet_op"]) == ("conv_1_conv2d", "Convolution", "conv_1_conv2d")
    assert div["last_agreeing"].startswith("_mulscalar") and div["rel_error"] > 0.01
    text = cli("convert", "evaluate", model, "--data", made[1], "--sets", "lfw", "--engines", "ncnn unfolded").out
    assert "FAIL" in text and "first diverging layer: conv_1_conv2d (Convolution)" in text


def test_a_bgr_folded_model_is_caught_by_its_values(model, made, cli):
    """pnnx names the folded model's blobs 0, 1, 2, …: the counterpart is found by value."""
    import numpy as np

    from mfnpatch.deploy.ncnn import param_layers

    layers = param_layers(model / "mobilefacenet.param")
    first = next(x for x in layers if x.type == "Convolution")
    assert all(x.type in ("Input", "BinaryOp") for x in layers[: layers.index(first)])  # nothing before has weights
    raw = bytearray((model / "mobilefacenet.bin").read_bytes())
    assert struct.unpack("<I", raw[:4])[0] == 0  # ModelBin's flag: float32 weights follow, [out][in][kh][kw]
    w = np.frombuffer(bytes(raw[4 : 4 + 4 * 1728]), "<f4").reshape(64, 3, 3, 3)
    raw[4 : 4 + 4 * 1728] = np.ascontiguousarray(w[:, ::-1]).tobytes()
    (model / "mobilefacenet.bin").write_bytes(bytes(raw))
    div = _broken(cli, model, made[1], "ncnn folded")
    assert (div["layer"], div["type"]) == (first.name, "Convolution") and div["last_agreeing"] is not None


def test_a_doubled_normalisation_is_caught_where_it_is_added(model, made, cli):
    param = model / "unfolded" / "mobilefacenet.param"
    lines = param.read_text().splitlines()
    # the graph's own normalisation: BinaryOp subtract 127.5, then multiply 0.0078125 (MXNet numbers the nodes'
    # names per process: _mulscalar0 in a fresh one)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("BinaryOp") and ln.endswith("2=0.0078125"))
    mul = lines[at].split()[1]
    extra = [f"BinaryOp normalised_again_sub 1 1 {mul} again_sub 0=1 1=1 2=127.5",
             "BinaryOp normalised_again_mul 1 1 again_sub again_mul 0=2 1=1 2=0.0078125"]  # fmt: skip
    nl, nb = map(int, lines[1].split())
    lines[1] = f"{nl + 2} {nb + 2}"
    conv = lines[at + 1].split()
    assert conv[1] == "conv_1_conv2d" and conv[4] == mul
    conv[4] = "again_mul"
    lines[at + 1 : at + 2] = [*extra, " ".join(conv)]
    param.write_text("\n".join(lines) + "\n")
    div = _broken(cli, model, made[1], "ncnn unfolded")
    assert (div["layer"], div["type"], div["last_agreeing"]) == ("normalised_again_sub", "BinaryOp", mul)


def test_a_dropped_prelu_slope_is_caught_at_that_prelu(model, made, cli, mx):
    name = "res_3_block1_conv_sep_relu"

    def drop(arg):
        arg[f"{name}_gamma"] = mx.nd.zeros(arg[f"{name}_gamma"].shape)

    _rewrite_unfolded(model, mx, drop)
    div = _broken(cli, model, made[1], "ncnn unfolded")
    assert (div["layer"], div["type"], div["mxnet_op"]) == (name, "PReLU", name)
    assert div["last_agreeing"] == "res_3_block1_conv_sep_batchnorm"


# --------------------------------------------------------------------------------------------
# Bad input: one error line naming the file or value, exit 1, nothing written


def _refused(cli, model: Path, *args) -> str:
    before = {p: _sha(p) for p in model.rglob("*") if p.is_file()}
    r = cli("convert", "evaluate", model, *args)
    assert r.code == 1, (r.out, r.err)
    assert {p: _sha(p) for p in model.rglob("*") if p.is_file()} == before
    assert r.err.startswith("error: ")
    return r.err.splitlines()[0]


def test_a_bin_that_is_not_a_verification_set(model, tmp_path, cli):
    import pickle

    data = tmp_path / "data"
    data.mkdir()
    (data / "lfw.bin").write_bytes(pickle.dumps({"not": "a set"}))
    line = _refused(cli, model, "--data", data, "--sets", "lfw")
    assert str(data / "lfw.bin") in line and "not a verification set" in line
    (data / "lfw.bin").write_bytes(b"\x80\x02cos\nsystem\nq\x00.")  # a pickle that would run code
    line = _refused(cli, model, "--data", data, "--sets", "lfw")
    assert "refused" in line and "os.system" in line
    line = _refused(cli, model, "--data", data, "--sets", "agedb_30")
    assert str(data / "agedb_30.bin") in line and "missing" in line


def test_a_set_whose_images_are_not_112x112(model, tmp_path, cli):
    from helpers import face_jpeg

    from mfnpatch.datasets.bins import dumps_py2

    data = tmp_path / "data"
    data.mkdir()
    images = [face_jpeg(i) for i in range(40)]
    images[7] = face_jpeg(7, size=96)
    (data / "lfw.bin").write_bytes(dumps_py2(images, [i % 2 == 0 for i in range(20)]))
    line = _refused(cli, model, "--data", data, "--sets", "lfw")
    assert "image 7 is 96x96x3, the model takes 112x112x3" in line


def test_a_model_directory_missing_a_file_or_a_hand_edited_contract(model, made, cli):
    (model / "unfolded" / "mobilefacenet.bin").rename(model / "unfolded.bin.away")
    line = _refused(cli, model, "--data", made[1])
    assert "unfolded/mobilefacenet.bin is missing" in line
    (model / "unfolded.bin.away").rename(model / "unfolded" / "mobilefacenet.bin")
    doc = json.loads((model / "deploy.json").read_text())
    doc["output"]["l2_normalise"] = False
    (model / "deploy.json").write_text(json.dumps(doc, indent=2))
    line = _refused(cli, model, "--data", made[1])
    assert "deploy.json: edited by hand" in line


def test_unknown_engine_or_set_names(model, made, cli):
    assert "not an engine" in _refused(cli, model, "--data", made[1], "--engines", "tensorrt")
    r = cli("convert", "evaluate", model, "--data", made[1], "--sets", "../lfw")
    assert r.code == 64 and "not a set name" in r.err
