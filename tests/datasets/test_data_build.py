"""`mfnpatch data build`: a folder of aligned faces becomes the dataset the pinned code reads, all or nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import face_jpeg, idx_offsets

from mfnpatch.datasets.bins import load_verification
from mfnpatch.datasets.build import BuildError, build
from mfnpatch.datasets.check import check_dataset
from mfnpatch.datasets.recordio import read_record, unpack

PEOPLE = {"alice": 12, "bob": 12, "carol": 12, "dave": 10, "erin": 10}


def faces(root: Path, people=None, size=112) -> Path:
    for i, (name, n) in enumerate((people or PEOPLE).items()):
        (root / name).mkdir(parents=True)
        for j in range(n):
            (root / name / f"{name}_{j + 1:04d}.jpg").write_bytes(face_jpeg(100 * i + j, size))
    return root


def records(d: Path) -> dict:
    data = (d / "train.rec").read_bytes()
    return {k: unpack(read_record(data, o)[0]) for k, o in idx_offsets(d).items()}


def test_drawn_pairs_are_held_out_and_the_dataset_checks_clean(tmp_path, cli):
    src = faces(tmp_path / "faces")
    res = cli("data", "build", src, "-o", tmp_path / "ds", "--pairs-per-set", "20", "--targets", "lfw")
    assert res.code == 0, res.err
    assert "40 images held out of training" in res.out
    r = check_dataset(tmp_path / "ds", ["lfw"])
    assert r.ok, [f.text() for f in r.errors]
    assert (r.variant.key, r.identities, r.images) == ("built", 5, 56 - 40)  # every identity keeps a training image
    lfw = load_verification(tmp_path / "ds" / "lfw.bin")
    assert lfw.pairs == 20 and lfw.issame == [True, False] * 10
    trained = {img for _, img in records(tmp_path / "ds").values() if img}
    assert not trained & set(lfw.images)  # an image in a pair is never a training image
    assert all(b in {p.read_bytes() for p in src.rglob("*.jpg")} for b in lfw.images)


def test_the_layout_is_face2rec2s(tmp_path):
    src = faces(tmp_path / "faces", {"bob": 2, "alice": 3, "carol": 1})
    build(src, tmp_path / "ds")
    d = tmp_path / "ds"
    assert (d / "property").read_text() == "3,112,112\n"
    keys = [int(ln.split("\t")[0]) for ln in (d / "train.idx").read_text().splitlines()]
    assert keys == [1, 2, 3, 4, 5, 6, 0, 7, 8, 9]  # images, then the header, then the identities (file order)
    recs = records(d)
    assert recs[0][0].label == (7.0, 10.0)
    assert [recs[k][0].label for k in (7, 8, 9)] == [(1.0, 4.0), (4.0, 6.0), (6.0, 7.0)]
    assert [recs[k][0].label for k in range(1, 7)] == [(0.0, 1.0)] * 3 + [(1.0, 1.0)] * 2 + [(2.0, 1.0)]
    assert recs[1][1] == (src / "alice" / "alice_0001.jpg").read_bytes()  # aligned images packed as they are
    lst = (d / "train.lst").read_text().splitlines()
    assert lst[0] == "1\talice/alice_0001.jpg\t0" and lst[-1] == "1\tcarol/carol_0001.jpg\t2"
    mx = pytest.importorskip("mxnet")
    reader = mx.recordio.MXIndexedRecordIO(str(d / "train.idx"), str(d / "train.rec"), "r")
    header, _ = mx.recordio.unpack(reader.read_idx(0))
    assert list(header.label) == [7.0, 10.0] and header.flag == 2
    h4, img4 = mx.recordio.unpack(reader.read_idx(4))
    assert list(h4.label) == [1.0, 1.0] and img4 == (src / "bob" / "bob_0001.jpg").read_bytes()


def test_an_lfw_pairs_file(tmp_path, cli):
    src = faces(tmp_path / "faces", {"alice": 8, "bob": 8, "carol": 6, "erin": 2})
    pairs = tmp_path / "pairs.txt"
    same = ["alice 1 2", "bob 1 2", "carol 1 2", "alice 3 4", "bob 3 4"]
    diff = ["alice 5 bob 5", "carol 3 erin 1", "alice 6 erin 2", "bob 6 carol 4", "carol 4 alice 6"]
    lines = [x for s, d in zip(same, diff, strict=True) for x in (s, d)]
    pairs.write_text("1\t20\n" + "\n".join(lines * 2) + "\n")  # pairs files reuse images, as LFW's does
    res = cli("data", "build", src, "-o", tmp_path / "ds", "--pairs", f"lfw={pairs}", "--json")
    assert res.code == 0, res.err
    got = res.json()
    assert got["targets"] == {"lfw": 20} and got["verification_only"] == ["erin"]
    assert got["identities"] == 3  # erin's every image is in a pair: a verification-only identity
    lfw = load_verification(tmp_path / "ds" / "lfw.bin")
    assert lfw.issame == [True, False] * 10
    assert lfw.images[0] == (src / "alice" / "alice_0001.jpg").read_bytes()
    assert lfw.images[3] == (src / "bob" / "bob_0005.jpg").read_bytes()
    assert lfw.images[6] == (src / "carol" / "carol_0003.jpg").read_bytes()
    r = check_dataset(tmp_path / "ds", ["lfw"])
    assert r.ok, [f.text() for f in r.errors]


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda src: (src / "loose.jpg").write_bytes(face_jpeg(1)), "not an identity folder"),
        (lambda src: (src / "empty").mkdir(), "empty: no images"),
        (lambda src: (src / "alice" / "notes.txt").write_text("x"), "notes.txt: not a .jpg"),
        (lambda src: (src / "alice" / "zz.jpg").write_bytes(b"GIF89a not a face"), "zz.jpg: not a JPEG or PNG"),
        (lambda src: (src / "bob" / "small.jpg").write_bytes(face_jpeg(7, 96)), "small.jpg: 96x96, not 112x112"),
    ],
)
def test_bad_image_folders_are_one_clear_error_and_write_nothing(tmp_path, cli, setup, words):
    src = faces(tmp_path / "faces")
    setup(src)
    res = cli("data", "build", src, "-o", tmp_path / "ds")
    assert res.code == 1 and words in res.err and "Traceback" not in res.err
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))


def test_resize_scales_what_is_not_112(tmp_path):
    src = faces(tmp_path / "faces", {"alice": 2, "bob": 2}, size=128)
    with pytest.raises(BuildError, match="128x128, not 112x112"):
        build(src, tmp_path / "ds")
    r = build(src, tmp_path / "ds", resize=True)
    assert r.resized == 4
    assert check_dataset(tmp_path / "ds", []).ok


def test_pairs_file_errors_name_file_and_line(tmp_path, cli):
    src = faces(tmp_path / "faces")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("alice 1 2\nzed 1 2\n")
    res = cli("data", "build", src, "-o", tmp_path / "ds", "--pairs", pairs)
    assert res.code == 1 and f"{pairs}:2: no identity folder 'zed'" in res.err
    pairs.write_text("alice 1 2\nalice one two\n")
    res = cli("data", "build", src, "-o", tmp_path / "ds", "--pairs", pairs)
    assert res.code == 1 and f"{pairs}:2:" in res.err and "is not 'NAME N1 N2'" in res.err
    pairs.write_text("alice 1 99\n" * 20)
    res = cli("data", "build", src, "-o", tmp_path / "ds", "--pairs", pairs)
    assert res.code == 1 and "alice has 12 images, no image 99" in res.err
    pairs.write_text("alice 1 2\n" * 10 + "alice 1 bob 1\n" * 10)  # the first folds hold matching pairs only
    res = cli("data", "build", src, "-o", tmp_path / "ds", "--pairs", pairs)
    assert res.code == 1 and "fold 1 of the pinned 10-fold verification (pairs 0..1) holds only matching" in res.err
    res = cli("data", "build", src, "-o", tmp_path / "ds", "--pairs-per-set", "50")
    assert res.code == 1 and "not enough images for 50 pairs per set" in res.err
    assert not (tmp_path / "ds").exists()


def test_never_writes_into_an_existing_dataset(tmp_path, cli):
    src = faces(tmp_path / "faces")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.rec").write_bytes(b"someone's data")
    res = cli("data", "build", src, "-o", tmp_path / "ds")
    assert res.code == 1 and "exists and is not an empty directory" in res.err
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["train.rec"]
    (tmp_path / "empty").mkdir()
    assert cli("data", "build", src, "-o", tmp_path / "empty").code == 0  # an empty directory is fine
    assert (tmp_path / "empty" / "property").is_file()


def test_an_interrupted_build_leaves_no_dataset(tmp_path):
    src = faces(tmp_path / "faces")

    def stop(what, done, total):
        if done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(src, tmp_path / "ds", progress=stop)
    assert not (tmp_path / "ds").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]


def test_a_killed_build_leaves_only_a_hidden_leftover_that_the_next_build_removes(tmp_path):
    src = faces(tmp_path / "faces")
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mfnpatch.datasets.build import build\n"
        "def slow(what, done, total):\n"
        "    Path(sys.argv[3]).touch(); time.sleep(30)\n"
        "build(Path(sys.argv[1]), Path(sys.argv[2]), progress=slow)\n"
    )
    flag = tmp_path / "started"
    p = subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "ds"), str(flag)])
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert flag.exists(), "the build never reached its first progress report"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
    assert not (tmp_path / "ds").exists()  # nothing that looks like a dataset where the user asked for one
    leftovers = list(tmp_path.glob(".ds.mfnpatch-build-*"))
    assert len(leftovers) == 1 and not (leftovers[0] / "property").exists()
    build(src, tmp_path / "ds")
    assert not list(tmp_path.glob(".ds.mfnpatch-build-*")) and (tmp_path / "ds" / "property").is_file()


def test_the_suggested_check_passes_on_what_build_made_without_pairs(tmp_path, cli):
    """data build without pairs suggests `data check DIR`; that command passes on it (no .bin was asked for)."""
    src = faces(tmp_path / "faces")
    r = cli("data", "build", src, "-o", tmp_path / "ds")
    assert r.code == 0 and f"check it with: mfnpatch data check {tmp_path / 'ds'}" in r.out
    r = cli("data", "check", tmp_path / "ds")
    assert r.code == 0, r.out + r.err
    assert "targets: none (the sets data build made here" in r.err
    # with pairs drawn, the sets made are the ones checked
    r = cli("data", "build", src, "-o", tmp_path / "ds2", "--pairs-per-set", "20", "--targets", "lfw")
    assert r.code == 0, r.err
    r = cli("data", "check", tmp_path / "ds2")
    assert r.code == 0 and "targets: lfw (" in r.err, r.out + r.err
