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
