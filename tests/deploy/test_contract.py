"""deploy.json: the contract an app follows, read from the converted models, refused when edited by hand."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mxnet", "onnx", "onnxruntime", "ncnn", "pnnx")),
    reason="needs the cpu environment (mxnet, onnx, onnxruntime, ncnn, pnnx): mfnpatch env create cpu",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import mxnet as mx
    from mfn_symbol import save_checkpoint

    from mfnpatch.deploy.convert import convert_ncnn

    d = tmp_path_factory.mktemp("contract")
    spec = save_checkpoint(mx, str(d / "model-y1"), 1, classes=20)
    convert_ncnn(spec, d / "ncnn")
    return d / "ncnn"


def _rewrite(src, dst, change, *, keep_digest=True):
    """A copy of the converted directory whose deploy.json is changed (and its digest recomputed unless not)."""
    import shutil

    from mfnpatch.deploy.contract import _canonical
    from mfnpatch.fsutil import sha256_bytes

    shutil.copytree(src, dst)
    doc = json.loads((dst / "deploy.json").read_text())
    digest = doc.pop("digest")
    change(doc)
    doc["digest"] = digest if keep_digest else "sha256:" + sha256_bytes(_canonical(doc))
    (dst / "deploy.json").write_text(json.dumps(doc, indent=2))
    return dst


def test_the_contract_is_read_from_the_models(converted):
    from mfnpatch.deploy.contract import load
    from mfnpatch.deploy.ncnn import param_io

    c = load(converted)
    assert c.input.shape == [1, 3, 112, 112] and c.input.layout == "NCHW" and c.input.colour_order == "RGB"
    assert [(s.op, s.value) for s in c.input.normalisation_in_graph] == [("subtract", 127.5), ("multiply", 0.0078125)]
    assert c.input.app_normalises is False and "BGR" in c.input.opencv_imread
    assert c.output.blob_mxnet == "fc1" and c.output.dim == 128 and c.output.l2_normalise
    assert c.models["ncnn unfolded"].input_blob == "data" and c.models["ncnn unfolded"].output_blob == "fc1"
    folded = c.models["ncnn folded"]
    assert (folded.input_blob, folded.output_blob) == param_io(converted / "mobilefacenet.param")
    assert c.alignment.template[0] == pytest.approx([38.2946, 51.6963]) and c.thresholds is None
    assert c.lineage == "insightface_mxnet"  # one name per lineage, as env.yaml, recipes and records say it
    assert json.loads((converted / "convert.json").read_text())["lineage"] == "insightface_mxnet"


def test_the_lineage_a_model_came_from(converted, tmp_path, cli):
    """deploy.json names its lineage: a wrong --lineage is refused before anything is written, a contract that
    names another is refused as edited, and one written before the field (no lineage) still reads."""
    import shutil

    from mfnpatch.deploy.contract import load

    out = tmp_path / "out"
    r = cli("convert", "ncnn", str(converted / "mxnet") + ",0", "-o", out, "--lineage", "arcface_torch")
    assert r.code != 0 and "lineage arcface_torch does not export mxnet models (its export is onnx)" in r.err
    assert "--lineage NAME" in r.err and not out.exists()
    r = cli("convert", "ncnn", str(converted / "mxnet") + ",0", "-o", out, "--lineage", "caffe")
    assert r.code != 0 and "unknown lineage 'caffe'" in r.err and not out.exists()
    other = _rewrite(converted, tmp_path / "other", lambda d: d.__setitem__("lineage", "arcface_torch"),
                     keep_digest=False)  # fmt: skip
    r = cli("convert", "verify", other)
    assert r.code == 1 and "deploy.json: lineage disagrees with the models" in r.err, r.err
    old = tmp_path / "old"
    shutil.copytree(converted, old)
    for name, drop in (("deploy.json", True), ("convert.json", False)):
        doc = json.loads((old / name).read_text())
        doc.pop("lineage")
        if drop:
            from mfnpatch.deploy.contract import _canonical
            from mfnpatch.fsutil import sha256_bytes

            doc.pop("digest")
            doc["digest"] = "sha256:" + sha256_bytes(_canonical(doc))
        (old / name).write_text(json.dumps(doc))
    assert load(old).lineage is None


def test_a_hand_edited_contract_is_refused(converted, tmp_path, cli):
    def halve(doc):
        doc["input"]["normalisation_in_graph"][1]["value"] = 0.00390625

    edited = _rewrite(converted, tmp_path / "edited", halve)
    before = (edited / "deploy.json").read_bytes()
    r = cli("convert", "verify", edited)
    assert r.code == 1 and "deploy.json: edited by hand (its digest does not match its content)" in r.err
    assert "mfnpatch convert ncnn" in r.err and (edited / "deploy.json").read_bytes() == before


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda d: d["input"].__setitem__("colour_order", "BGR"), "input.colour_order"),
        (lambda d: d["output"].__setitem__("dim", 0), "output.dim"),
        (lambda d: d.__setitem__("extra", 1), "extra"),
        (lambda d: d["models"]["ncnn unfolded"].__setitem__("output_blob", "pre_fc1"), "are not"),
        (lambda d: d["models"]["ncnn unfolded"].__setitem__("param", "../../../etc/passwd"), "outside"),
        (lambda d: d["models"]["ncnn unfolded"].__setitem__("param", "/etc/passwd"), "outside"),
    ],
)
def test_a_consistent_but_wrong_contract_is_refused(converted, tmp_path, cli, change, says):
    bad = _rewrite(converted, tmp_path / "bad", change, keep_digest=False)
    r = cli("convert", "verify", bad)
    assert r.code == 1 and "deploy.json" in r.err and says in r.err, r.err


def test_a_broken_contract_file_is_named(converted, tmp_path, cli):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(converted, d)
    (d / "deploy.json").write_text("{not json")
    r = cli("convert", "verify", d)
    assert r.code == 1 and "deploy.json: not JSON" in r.err
