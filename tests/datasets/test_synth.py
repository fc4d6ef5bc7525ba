"""`mfnpatch data synth`: the dataset is in the format the pinned code reads, deterministic, and never
written over a dataset mfnpatch did not make."""

from __future__ import annotations

import pickle
import pickletools

import pytest

pytest.importorskip("mxnet")

from mfnpatch.cli import run  # noqa: E402
from mfnpatch.datasets.bins import dumps_py2  # noqa: E402
from mfnpatch.datasets.synth import MARKER, SynthError, read_back, synth  # noqa: E402


def test_dumps_py2_reads_like_a_python2_pickle():
    bins = [b"\xff\xd8" + bytes(range(256)) * 2, b"short\x80", b""]
    issame = [True, False] * 600  # more than one APPENDS batch
    data = dumps_py2(bins, issame)
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert "SHORT_BINSTRING" in ops and "BINSTRING" in ops  # Python 2 str, not bytes
    assert "SHORT_BINBYTES" not in ops and "BINBYTES" not in ops
    # what the pinned load_bin does on Python 3 without the py3 fix: fails like the real files
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)
    got_bins, got_same = pickle.loads(data, encoding="bytes")  # the py3 series' fix
    assert got_bins == bins and got_same == issame


def test_dataset_layout_matches_what_train_softmax_reads(tmp_path):
    d = tmp_path / "faces"
    r = synth(d, ids=4, per_id=3, pairs=20, seed=1)
    assert (r.identities, r.images, r.pairs, r.reused) == (4, 12, 20, False)
    info = read_back(d)
    assert info["num_classes"] == 4 and info["image_size"] == (112, 112)
    assert info["images"] == 12 and info["first_shape"] == (112, 112, 3)
    # identity records: contiguous [first, last+1) ranges over records 1..N, in label order
    assert info["ranges"] == [(1, 4), (4, 7), (7, 10), (10, 13)]
    assert info["labels"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for t in ("lfw", "cfp_fp", "agedb_30"):
        assert info["bins"][t] == {"images": 40, "pairs": 20, "positives": 10}
    assert (d / "property").read_text() == "4,112,112\n"
    assert not list(d.glob(".*.tmp"))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    synth(tmp_path / "a", ids=3, per_id=2, pairs=20, seed=5)
    synth(tmp_path / "b", ids=3, per_id=2, pairs=20, seed=5)
    synth(tmp_path / "c", ids=3, per_id=2, pairs=20, seed=6)
    for f in ("train.rec", "train.idx", "lfw.bin"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "train.rec").read_bytes() != (tmp_path / "c" / "train.rec").read_bytes()


def test_identities_are_separable_pairs_are_closer(tmp_path):
    """Learnable: matching pairs are nearer than non-matching ones even in raw pixels."""
    import numpy as np
    from mxnet import image

    synth(tmp_path, ids=6, per_id=2, pairs=40, seed=0)
    bins, issame = pickle.loads((tmp_path / "lfw.bin").read_bytes(), encoding="bytes")
    x = np.stack([image.imdecode(b).asnumpy().astype(np.float32).ravel() for b in bins])
    d = np.linalg.norm(x[0::2] - x[1::2], axis=1)
    same = np.array(issame)
    assert d[same].mean() < 0.8 * d[~same].mean()


def test_rerun_reuses_and_other_parameters_rewrite(tmp_path):
    synth(tmp_path, ids=3, per_id=2, pairs=20)
    before = (tmp_path / "train.rec").stat().st_mtime_ns
    again = synth(tmp_path, ids=3, per_id=2, pairs=20)
    assert again.reused and (tmp_path / "train.rec").stat().st_mtime_ns == before
    other = synth(tmp_path, ids=4, per_id=2, pairs=20)
    assert not other.reused and read_back(tmp_path)["num_classes"] == 4


def test_an_interrupted_dataset_is_not_complete_and_is_rewritten(tmp_path):
    synth(tmp_path, ids=3, per_id=2, pairs=20)
    (tmp_path / MARKER).write_text('{"format": 1, "writing": true}\n')  # as an interrupted run leaves it
    r = synth(tmp_path, ids=3, per_id=2, pairs=20)
    assert not r.reused and read_back(tmp_path)["images"] == 6


def test_never_writes_over_a_real_dataset(tmp_path, capsys):
    real = tmp_path / "faces_ms1m_112x112"
    real.mkdir()
    (real / "train.rec").write_bytes(b"real data")
    (real / "property").write_text("85164,112,112\n")
    with pytest.raises(SynthError, match="did not write"):
        synth(real, ids=3, per_id=2, pairs=20)
    assert (real / "train.rec").read_bytes() == b"real data"
    assert run(["data", "synth", "-o", str(real), "--ids", "3", "--per-id", "2", "--pairs", "20"]) == 1
    e = capsys.readouterr().err
    assert "faces_ms1m_112x112" in e and "never overwrites" in e
    assert sorted(p.name for p in real.iterdir()) == ["property", "train.rec"]


def test_cli_bad_values_are_usage_errors(tmp_path, capsys):
    assert run(["data", "synth", "-o", str(tmp_path / "x"), "--pairs", "5"]) == 64
    assert "--pairs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert run(["data", "synth", "-o", str(tmp_path / "y"), "--ids", "3", "--per-id", "2", "--pairs", "20"]) == 0
    assert "6 images of 3 identities" in capsys.readouterr().out
