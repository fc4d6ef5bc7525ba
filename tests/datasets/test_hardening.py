"""Datasets under hostile and broken input, carried out on real files: names that would add lines to train.lst,
files that are FIFOs, devices or huge sparse files, and sizes declared in headers (a .bin's pickle, a PNG's IHDR,
a .rec header record) that a reader must hold against the file before it allocates anything."""

from __future__ import annotations

import io
import os
import pickle
import resource
import struct
import threading
import zlib
from pathlib import Path

import pytest
from helpers import face_jpeg, write_dataset

from mfnpatch.datasets.bins import BinError, load_verification, parse_verification
from mfnpatch.datasets.images import MAX_PIXELS, problem


def faces(root: Path, people: dict[str, int] | None = None) -> Path:
    for name, n in (people or {"alice": 3, "bob": 3, "carol": 2}).items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{name}_{i + 1:04d}.jpg").write_bytes(face_jpeg(hash((name, i)) % 1000))
    return root


def bounded(fn, seconds: float = 60.0):
    """``fn()`` in a thread (its exception raised here): a hang fails the test instead of the test run."""
    out: list = []

    def call():
        try:
            out.append((True, fn()))
        except BaseException as e:
            out.append((False, e))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"still running after {seconds:g} s: it hangs"
    ok, value = out[0]
    if not ok:
        raise value
    return value


# --------------------------------------------------------------------------------------------
# train.lst: a name is one field of one line


@pytest.mark.parametrize("name", ["a\tb.jpg", "a\nb.jpg", "a\rb.jpg", "a\u2028b.jpg", "a\x85b.jpg"])
def test_an_image_name_that_would_split_a_train_lst_line_is_refused(tmp_path, cli, name):
    src = faces(tmp_path / "faces")
    (src / "alice" / name).write_bytes(face_jpeg(5))
    r = cli("data", "build", src, "-o", tmp_path / "ds")
    assert r.code == 1 and "image file name" in r.err and "train.lst" in r.err, r.err
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))


def test_a_name_that_is_not_utf8_is_refused(tmp_path, cli):
    src = faces(tmp_path / "faces")
    os.makedirs(os.fsencode(src) + b"/bad\xff")
    (Path(os.fsdecode(os.fsencode(src) + b"/bad\xff")) / "x.jpg").write_bytes(face_jpeg(5))
    r = cli("data", "build", src, "-o", tmp_path / "ds")
    assert r.code == 1 and "is not UTF-8" in r.err and "internal error" not in r.err, r.err


def test_every_list_line_has_three_fields(tmp_path):
    from mfnpatch.datasets.build import build

    src = faces(tmp_path / "faces", {"a b": 2, "c": 2})  # a space is fine: face2rec2 splits on tabs
    build(src, tmp_path / "ds")
    lines = (tmp_path / "ds" / "train.lst").read_text().split("\n")
    assert lines[-1] == "" and all(len(ln.split("\t")) == 3 for ln in lines[:-1])


def test_a_dangling_output_symlink_is_refused(tmp_path, cli):
    src = faces(tmp_path / "faces")
    (tmp_path / "ds").symlink_to(tmp_path / "elsewhere")
    r = cli("data", "build", src, "-o", tmp_path / "ds")
    assert r.code == 1 and "is a symlink (dangling)" in r.err and not (tmp_path / "elsewhere").exists()


# --------------------------------------------------------------------------------------------
# Whole-file reads: regular files within a stated size


def test_a_pairs_file_that_is_a_fifo_a_device_or_huge_is_refused_unread(tmp_path, cli):
    src = faces(tmp_path / "faces")
    fifo = tmp_path / "pairs.fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(20 << 30)  # a 20 GB sparse file: nothing on disk, everything if read
    for p, said in ((fifo, "is a FIFO"), (Path("/dev/zero"), "is a device"), (huge, "20.0 GiB, over the 16.0 MiB")):
        r = bounded(lambda p=p: cli("data", "build", src, "-o", tmp_path / "ds", "--pairs", f"lfw={p}"))
        assert r.code == 1 and said in r.err, (p, r.err)
        assert not (tmp_path / "ds").exists()


def test_a_pairs_number_of_thousands_of_digits_is_one_clear_error(tmp_path, cli):
    src = faces(tmp_path / "faces")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("alice 1 " + "9" * 5000 + "\n")
    r = cli("data", "build", src, "-o", tmp_path / "ds", "--pairs", f"lfw={pairs}")
    assert r.code == 1 and "pairs.txt:1:" in r.err and "internal error" not in r.err, r.err


def test_an_image_that_is_a_link_to_a_device_is_refused(tmp_path, cli):
    src = faces(tmp_path / "faces")
    (src / "alice" / "zero.jpg").symlink_to("/dev/zero")
    r = bounded(lambda: cli("data", "build", src, "-o", tmp_path / "ds"))
    assert r.code == 1 and "zero.jpg" in r.err and "internal error" not in r.err, r.err


def test_a_verification_bin_that_is_a_fifo_or_a_device_is_refused(tmp_path):
    fifo = tmp_path / "lfw.bin"
    os.mkfifo(fifo)
    with pytest.raises(BinError, match="is a FIFO"):
        bounded(lambda: load_verification(fifo))
    with pytest.raises(BinError, match="is a device"):
        load_verification(Path("/dev/zero"))


# --------------------------------------------------------------------------------------------
# Sizes declared inside files


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_tiny_bin_that_declares_a_huge_array_allocates_nothing(tmp_path):
    """A pickle whose ndarray reconstruct declares 1.6 G elements, then references its image many times."""
    import numpy as np

    arr = np.frombuffer(b"\xff\xd8\xff" + bytes(range(40)), np.uint8)
    data = pickle.dumps(([arr], [True]), protocol=2)
    # _reconstruct's declared shape (NumPy writes (0,)) rewritten to 1.6 G elements: the placeholder is not
    # allocated at it; the array's real shape comes with its bytes
    big = data.replace(b"K\x00\x85", b"J" + struct.pack("<i", 1_600_000_000) + b"\x85", 1)
    assert big != data and len(big) < 2000
    before = _peak_mb()
    vs = parse_verification(big, tmp_path / "x.bin")
    assert _peak_mb() - before < 500  # no 1.6 GB placeholder
    assert vs.images == [arr.tobytes()]
    # one image's bytes referenced again and again through the pickle's memo
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=2)
    blob = face_jpeg(2)
    p.dump(([blob] * 2000, [True, False] * 1000))
    assert len(buf.getvalue()) < 20_000
    with pytest.raises(BinError, match="second reference to an earlier image's bytes"):
        parse_verification(buf.getvalue(), tmp_path / "memo.bin")


def _png(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_a_small_png_declaring_16384_squared_is_never_decoded(tmp_path, cli):
    data = _png(16384, 16384)
    assert len(data) < 200 and 16384 * 16384 > MAX_PIXELS
    before = _peak_mb()
    why = problem(data, None, None)
    assert why is not None and "declares 16384x16384" in why
    assert "16384x16384 PNG where the dataset's property says 112x112" in (problem(data, 112, 112) or "")
    src = faces(tmp_path / "faces")
    (src / "bob" / "bomb.png").write_bytes(data)
    r = cli("data", "build", src, "-o", tmp_path / "ds", "--resize")
    assert r.code == 1 and "bomb.png" in r.err and "declares 16384x16384" in r.err, r.err
    assert _peak_mb() - before < 300


@pytest.mark.parametrize("end", [1e9, 3e38])
def test_a_rec_header_declaring_a_huge_identity_range_is_an_error_not_an_allocation(tmp_path, cli, end):
    from mfnpatch.datasets.recordio import indexed_writer, pack

    d = write_dataset(tmp_path / "ds", ids=2, per_id=2, pairs=20)
    # rewrite record 0 (the header) in place: same length, a range up to ``end``
    with indexed_writer(d / "h.rec", d / "h.idx") as w:
        w.write(0, pack([5, end], 0))
    rec = (d / "h.rec").read_bytes()
    offs = {int(k): int(o) for k, o in (ln.split("\t") for ln in (d / "train.idx").read_text().splitlines())}
    body = bytearray((d / "train.rec").read_bytes())
    body[offs[0] : offs[0] + len(rec)] = rec
    (d / "train.rec").write_bytes(bytes(body))
    before = _peak_mb()
    r = bounded(lambda: cli("data", "check", d, "--json"))
    assert r.code == 1 and "records train.rec" in r.out + r.err and "internal error" not in r.err, r.err
    assert _peak_mb() - before < 300


def test_a_property_or_marker_that_is_huge_or_a_fifo_is_a_finding_not_a_read(tmp_path, cli):
    d = write_dataset(tmp_path / "ds", ids=2, per_id=2, pairs=20)
    (d / "property").unlink()
    with open(d / "property", "wb") as f:
        f.truncate(50 << 30)
    os.mkfifo(d / ".mfnpatch-synth.json")
    r = bounded(lambda: cli("data", "check", d))
    assert r.code == 1 and "property" in r.out + r.err and "50.0 GiB" in r.out + r.err, r.out + r.err
