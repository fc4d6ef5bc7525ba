"""Deployment under hostile and broken input, carried out on real files: NaN never passes a verdict, a forged
contract is refused, ONNX and param files are read only as far as they are sane (declared sizes held against
their bytes, external data confined, FIFOs refused), and every refusal is one clear error with nothing written."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import threading
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
    """A converted random-weight MobileFaceNet, a synthetic dataset, and the checkpoint it came from."""
    from mfn_symbol import save_checkpoint

    from mfnpatch.datasets.synth import synth
    from mfnpatch.deploy.convert import convert_ncnn

    root = tmp_path_factory.mktemp("hard")
    spec = save_checkpoint(mx, str(root / "ck" / "model-y1"), 1, classes=20)
    convert_ncnn(spec, root / "ncnn")
    synth(root / "data", ids=4, per_id=2, pairs=20)
    return root / "ncnn", root / "data", spec


@pytest.fixture
def model(made, tmp_path) -> Path:
    d = tmp_path / "ncnn"
    shutil.copytree(made[0], d)
    return d


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in d.rglob("*") if p.is_file()}


def _nan_checkpoint(mx, spec: str, out: Path) -> str:
    prefix, epoch = spec.rsplit(",", 1)
    sym, arg, aux = mx.model.load_checkpoint(prefix, int(epoch))
    name = next(k for k in sorted(arg) if k.endswith("_weight"))
    a = arg[name].asnumpy()
    a.flat[3] = float("nan")
    arg[name] = mx.nd.array(a)
    mx.model.save_checkpoint(str(out / "model-nan"), 1, sym, arg, aux)
    return f"{out / 'model-nan'},1"


# --------------------------------------------------------------------------------------------
# NaN is not a pass


def test_convert_refuses_a_checkpoint_with_a_nan_weight(mx, made, cli, tmp_path):
    spec = _nan_checkpoint(mx, made[2], tmp_path)
    r = cli("convert", "ncnn", spec, "-o", tmp_path / "out", "--verify")
    assert r.code == 1 and "NaN or infinite weight" in r.err and "internal error" not in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_evaluate_fails_when_the_reference_computes_nan_and_writes_nothing(mx, model, made, cli, tmp_path):
    """The MXNet weights of a converted directory turned to NaN behind mfnpatch's back: no PASS, no contract."""
    sym, arg, aux = mx.model.load_checkpoint(str(model / "mxnet"), 0)
    arg = {k: mx.nd.array(v.asnumpy() * float("nan")) if k.endswith("_weight") else v for k, v in arg.items()}
    mx.model.save_checkpoint(str(model / "mxnet"), 0, sym, arg, aux)
    before = (model / "deploy.json").read_bytes()
    r = cli("convert", "evaluate", model, "--data", made[1], "--sets", "lfw", "--engines", "ncnn folded")
    assert r.code == 1 and "hold NaN or infinity" in r.err and "internal error" not in r.err, r.err
    assert (model / "deploy.json").read_bytes() == before and not (model / "evaluate.json").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_engine_row_with_a_nonfinite_embedding_never_holds(bad):
    import numpy as np

    from mfnpatch.deploy.evaluate import Row, _judge

    ref = [np.ones((4, 8), np.float32), np.ones((4, 8), np.float32)]
    got = [x.copy() for x in ref]
    got[1][2, 5] = bad
    row = Row("lfw", "ncnn folded", 20, 0.9, 0.0, 1.0, 0.5, 1.0)
    _judge(row, got, ref, 0.9, "fp32")
    assert not row.holds and "hold NaN or infinity" in row.why
    row = Row("lfw", "ncnn folded", 20, float("nan"), 0.0, 1.0, 0.5, 1.0)
    _judge(row, ref, ref, 0.9, "fp32")
    assert not row.holds and "accuracy nan" in row.why


def test_verify_compare_with_nan_fails_wherever_the_nan_stands():
    import numpy as np

    from mfnpatch.deploy.verify import compare
    from mfnpatch.finite import at_least, lowest

    a = np.ones((3, 4), np.float32)
    for i in range(3):
        b = a.copy()
        b[i, 0] = np.nan
        c = compare(a, b)
        assert not at_least(c["min_cosine"], 0.9999)
    # min() of a list with a NaN depends on its place; lowest() does not
    assert np.isnan(lowest([1.0, float("nan"), 0.5])) and np.isnan(lowest([float("nan"), 1.0]))
    assert lowest([1.0, 0.5]) == 0.5 and not at_least(float("inf"), 0.5) and not at_least(None, 0.5)


def test_verify_of_a_model_whose_ncnn_weights_are_nan_fails(model, cli):
    """ncnn's weights (the .bin) overwritten with NaN after conversion: convert verify says FAIL, exit 1."""
    import numpy as np

    b = model / "mobilefacenet.bin"
    data = np.frombuffer(b.read_bytes(), np.uint8).copy()
    data[64:] = np.frombuffer(np.full((len(data) - 64) // 4, np.nan, np.float32).tobytes(), np.uint8)[: len(data) - 64]
    b.write_bytes(data.tobytes())
    r = cli("convert", "verify", model, "--json")
    assert r.code == 1, r.err
    v = r.json()
    assert v["passed"] is False and v["engines"]["ncnn folded"]["min_cosine"] is None  # NaN as null, strict JSON
    assert json.loads((model / "verify.json").read_text())["passed"] is False


# --------------------------------------------------------------------------------------------
# The contract: re-derived from the models, a forgery refused


def _forge(model: Path, edit) -> None:
    from mfnpatch.deploy.contract import _canonical
    from mfnpatch.fsutil import sha256_bytes

    doc = json.loads((model / "deploy.json").read_text())
    doc.pop("digest")
    edit(doc)
    doc["digest"] = "sha256:" + sha256_bytes(_canonical(doc))
    (model / "deploy.json").write_text(json.dumps(doc, indent=2))


@pytest.mark.parametrize(
    "edit,where",
    [
        (lambda d: d["input"].update(app_normalises=True, normalisation_in_graph=[]), "input.app_normalises"),
        (lambda d: d["input"].update(colour_order="RGB", pixel_range=[0.0, 1.0]), "input.pixel_range[1]"),
        (lambda d: d["output"].update(dim=512), "output.dim"),
        (lambda d: d["models"]["ncnn folded"].update(bin="unfolded/mobilefacenet.bin"), "models.ncnn folded.bin"),
    ],
)
def test_a_contract_edited_with_a_fresh_digest_is_refused(model, made, cli, edit, where):
    _forge(model, edit)
    before = _tree(model)
    evaluate = ("convert", "evaluate", model, "--data", made[1], "--sets", "lfw", "--engines", "ncnn folded")
    for argv in (("convert", "verify", model), evaluate):
        r = cli(*argv)
        assert r.code == 1 and f"{where} disagrees with the models" in r.err, r.err
    assert _tree(model) == before  # evaluate did not rewrite the forgery with a fresh digest


def test_a_forged_golden_embedding_is_refused(model, made, cli):
    assert cli("convert", "evaluate", model, "--data", made[1], "--sets", "lfw", "--engines", "ncnn folded").code == 0

    def edit(d):
        d["golden"][0]["embedding"] = [-x for x in d["golden"][0]["embedding"]]

    _forge(model, edit)
    r = cli("convert", "verify", model)
    assert r.code == 1 and "golden[0]'s embedding is not what the model computes" in r.err, r.err


# --------------------------------------------------------------------------------------------
# Damaged files: one clear error, never exit 70


@pytest.mark.parametrize(
    "content,said",
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"7767517\n2 2\nConvolution conv 1 1 data out 0=8\nInnerProduct fc 1 1 out emb 0=128\n", "no Input layer"),
        (b"7767517\nlots of 2\nInput data 0 1 data\n", "is not 'LAYERS BLOBS'"),
        (b"7767517\n1 1\nInput data 0 x data\n", "is not 'TYPE NAME BOTTOMS TOPS"),
        (b"7767517\n1 1\nInput data 0 1 data 0=1e999999 zz\n", "'zz' is not key=value"),
        (b"", "not an ncnn param file"),
    ],
)
def test_a_damaged_param_is_one_clear_error(model, cli, content, said):
    (model / "mobilefacenet.param").write_bytes(content)
    r = cli("convert", "verify", model)
    assert r.code == 1 and said in r.err and "internal error" not in r.err, r.err


def test_a_param_that_is_a_fifo_is_refused_not_waited_on(model, cli):
    p = model / "mobilefacenet.param"
    p.unlink()
    os.mkfifo(p)
    r = _bounded(lambda: cli("convert", "verify", model))
    assert r.code == 1 and "mobilefacenet.param is not a regular file" in r.err, r.err


def test_a_dangling_output_symlink_is_named_as_such(made, cli, tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    r = cli("convert", "ncnn", made[2], "-o", link)
    assert r.code == 1 and "is a symlink (dangling)" in r.err and "is a file" not in r.err, r.err
    assert not (tmp_path / "nowhere").exists()


def _bounded(fn, seconds: float = 60.0):
    """``fn()`` in a thread: a hang fails the test instead of the test run."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"still running after {seconds:g} s: it hangs"
    return out[0]


# --------------------------------------------------------------------------------------------
# ONNX files: declared sizes, external data, symlinks


def _onnx_with(tmp_path: Path, tensor, name: str = "m.onnx") -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 112, 112])
    g = helper.make_graph([helper.make_node("Add", ["data", tensor.name], ["out"])], "g", [x], [y], [tensor])
    p = tmp_path / name
    onnx.save(helper.make_model(g), str(p))
    return p


def test_onnx_declaring_huge_dims_is_refused_before_allocating(tmp_path, cli):
    from onnx import TensorProto

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    t.raw_data = b"\0" * 16
    p = _onnx_with(tmp_path, t)
    assert p.stat().st_size < 1000
    r = cli("convert", "ncnn", p, "-o", tmp_path / "out")
    assert r.code == 1 and "declares [1048576, 1048576]" in r.err and "refused before allocating" in r.err, r.err
    t2 = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 64])
    t2.raw_data = b"\0" * 16
    r = cli("convert", "ncnn", _onnx_with(tmp_path, t2, "short.onnx"), "-o", tmp_path / "out")
    assert r.code == 1 and "declares [64, 64] (16,384 bytes) but carries 16" in r.err, r.err


def _external(tmp_path: Path, location: str) -> Path:
    from onnx import TensorProto

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    return _onnx_with(tmp_path, t)


def test_onnx_external_data_outside_the_model_directory_is_never_read(tmp_path, cli):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S" * 16)
    d = tmp_path / "m"
    d.mkdir()
    (d / "w.bin").symlink_to(secret)  # a link inside the directory, to a file outside it
    for loc, said in (("w.bin", "outside"), ("../secret.bin", "'..'"), (str(secret), "is absolute")):
        p = _external(d, loc)
        r = cli("convert", "ncnn", p, "-o", tmp_path / "out")
        assert r.code == 1 and said in r.err and "internal error" not in r.err, (loc, r.err)
    os.mkfifo(d / "fifo.bin")
    r = _bounded(lambda: cli("convert", "ncnn", _external(d, "fifo.bin"), "-o", tmp_path / "out"))
    assert r.code == 1 and "is a FIFO" in r.err, r.err


def test_an_onnx_model_that_is_a_device_or_a_fifo_is_refused(tmp_path, cli):
    r = cli("convert", "ncnn", "/dev/zero.onnx", "-o", tmp_path / "out")
    assert r.code == 1 and "internal error" not in r.err
    fifo = tmp_path / "f.onnx"
    os.mkfifo(fifo)
    r = _bounded(lambda: cli("convert", "ncnn", fifo, "-o", tmp_path / "out"))
    assert r.code == 1 and "is a FIFO" in r.err, r.err


def test_align_reads_only_a_regular_image_of_a_sane_size(tmp_path, cli):
    import struct
    import zlib

    marks = ["--landmarks", "38,51,73,51,56,71,41,92,70,92"]
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    r = _bounded(lambda: cli("deploy", "align", fifo, *marks, "-o", tmp_path / "out.png"))
    assert r.code == 1 and "is a FIFO" in r.err, r.err

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))  # fmt: skip
    r = cli("deploy", "align", bomb, *marks, "-o", tmp_path / "out.png")
    assert r.code == 1 and "declares 30000x30000" in r.err and not (tmp_path / "out.png").exists(), r.err
