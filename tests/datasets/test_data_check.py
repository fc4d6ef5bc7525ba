"""`mfnpatch data check`: every promise the pinned code's readers rely on, and every way a copy breaks it,
on datasets built here (real RecordIO, real JPEGs, real pickles)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct

import pytest
from helpers import face_jpeg, idx_offsets, write_dataset

from mfnpatch.datasets import variants
from mfnpatch.datasets.check import check_dataset
from mfnpatch.datasets.recordio import MAGIC_BYTES, encode_record, pack, read_record, unpack


def errors(report) -> list[str]:
    return [f.text() for f in report.errors]


def test_a_consistent_dataset_passes_and_says_what_it_checked(tmp_path, cli):
    d = write_dataset(tmp_path / "faces")
    r = check_dataset(d)
    assert r.ok and r.exit_code == 0, errors(r)
    assert (r.images, r.identities, r.prop) == (9, 3, {"ids": 3, "height": 112, "width": 112})
    status = {row.check: row.status for row in r.rows}
    for check in ("property", "train.idx", "train.rec records", "header record", "identity records", "labels",
                  "images"):  # fmt: skip
        assert status[check] == "ok", (check, r.rows)
    for t in ("lfw", "cfp_fp", "agedb_30"):  # 10 pairs, not the standard set's: said, not an error
        assert (
            status[f"{t}.bin"] == "warn"
            and "pairs where the standard" in r.rows[[x.check for x in r.rows].index(f"{t}.bin")].detail
        )
    assert status["variant"] == "warn"  # 3 identities: no known variant
    assert "unknown variant" in r.variant.message and "the seed's targets may not apply" in r.variant.message
    res = cli("data", "check", d)
    assert res.code == 0 and "PASS" in res.out and "tiling the file" in res.out
    assert "Traceback" not in res.err


def _corrupt(d, kind):
    """Each corruption of a good dataset, and the words its one error line must hold."""
    off = idx_offsets(d)
    rec = d / "train.rec"
    data = bytearray(rec.read_bytes())
    if kind == "truncated rec":
        rec.write_bytes(data[: off[9] + 100])
        return ["train.rec is truncated", "key 9", f"at byte {off[9]}"]
    if kind == "offset past the end":
        (d / "train.idx").write_text((d / "train.idx").read_text().replace(f"4\t{off[4]}\n", f"4\t{len(data) + 64}\n"))
        return ["lies outside train.rec", "key 4", f"at byte {len(data) + 64}"]
    if kind == "bad magic":
        data[off[5]] ^= 0xFF
        rec.write_bytes(bytes(data))
        return ["bad magic", "key 5", f"at byte {off[5]}"]
    if kind == "label out of range":
        write_dataset(d, labels={7: 3})
        return ["outside [0, 3)", "key 7"]
    if kind == "label of another identity":
        write_dataset(d, labels={2: 1})
        return ["not the identity whose range holds it", "key 2"]
    if kind == "property disagrees with the header":
        (d / "property").write_text("5,112,112\n")
        return ["property", "says 5 identities, but train.rec's header has 3"]
    if kind == "non-image record":
        write_dataset(d, image={6: b"this is not an image at all" * 4})
        return ["not a JPEG or PNG", "key 6"]
    if kind == "no header record":
        write_dataset(d, header=False)
        return ["record 0 is an image", "not the header record face2rec2.py writes"]
    if kind == "odd image count in a .bin":
        from mfnpatch.datasets.bins import dumps_py2

        (d / "lfw.bin").write_bytes(dumps_py2([face_jpeg(i) for i in range(21)], [True, False] * 5))
        return ["lfw.bin", "an odd number of images (21)"]
    if kind == "pairs a fold cannot evaluate":
        from mfnpatch.datasets.bins import dumps_py2

        (d / "lfw.bin").write_bytes(dumps_py2([face_jpeg(i) for i in range(40)], [True] * 10 + [False] * 10))
        return ["lfw.bin", "fold 1 of the pinned 10-fold verification (pairs 0..1) holds only matching pairs"]
    if kind == "missing .bin":
        (d / "cfp_fp.bin").unlink()
        return ["cfp_fp.bin", "missing"]
    if kind == "pickle that is not a verification set":
        (d / "agedb_30.bin").write_bytes(pickle.dumps({"images": [], "labels": []}))
        return ["agedb_30.bin", "a pickle of dict, not a verification set"]
    if kind == "bad index line":
        text = (d / "train.idx").read_text().splitlines()
        text[3] = "4 oops"
        (d / "train.idx").write_text("\n".join(text) + "\n")
        return ["train.idx", "line 4", "'4 oops'", "not KEY<TAB>OFFSET"]
    if kind == "missing property":
        (d / "property").unlink()
        return ["property", "missing"]
    if kind == "trailing bytes":
        rec.write_bytes(bytes(data) + b"\0" * 40)
        return ["40 bytes after the last indexed record"]
    if kind == "missing image key":
        lines = [ln for ln in (d / "train.idx").read_text().splitlines() if not ln.startswith("3\t")]
        (d / "train.idx").write_text("\n".join(lines) + "\n")
        return ["no line for image record 3"]
    if kind == "truncated jpeg":
        write_dataset(d, image={8: face_jpeg(8)[:-300]})
        return ["a truncated JPEG", "key 8"]
    if kind == "wrong image size":
        write_dataset(d, image={1: face_jpeg(1, size=96)})
        return ["a 96x96 JPEG where the dataset's property says 112x112", "key 1"]
    raise AssertionError(kind)


CORRUPTIONS = [
    "truncated rec", "offset past the end", "bad magic", "label out of range", "label of another identity",
    "property disagrees with the header", "non-image record", "no header record", "odd image count in a .bin",
    "pairs a fold cannot evaluate",
    "missing .bin", "pickle that is not a verification set", "bad index line", "missing property",
    "trailing bytes", "missing image key", "truncated jpeg", "wrong image size",
]  # fmt: skip


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_is_one_error_line_naming_the_place(tmp_path, cli, kind):
    d = write_dataset(tmp_path / "faces")
    words = _corrupt(d, kind)
    r = check_dataset(d)
    assert not r.ok and r.exit_code == 1
    lines = errors(r)
    hit = [ln for ln in lines if all(w in ln for w in words)]
    assert hit, (kind, lines)
    res = cli("data", "check", d)
    assert res.code == 1 and "Traceback" not in res.err + res.out
    assert any(all(w in ln for w in words) for ln in res.err.splitlines() if ln.startswith("error: ")), res.err
    assert "FAIL" in res.out


def test_json_output(tmp_path, cli):
    d = write_dataset(tmp_path / "faces")
    _corrupt(d, "bad magic")
    res = cli("data", "check", d, "--json")
    assert res.code == 1
    got = res.json()
    assert got["ok"] is False and got["exit_code"] == 1
    assert any(f["check"] == "train.rec records" and "bad magic" in f["text"] for f in got["findings"])
    assert "NaN" not in res.out and "Infinity" not in res.out


def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path, cli):
    d = write_dataset(tmp_path / "faces")
    planted = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {planted}",))

    (d / "lfw.bin").write_bytes(pickle.dumps(([b"x", b"y"], [Evil()])))
    res = cli("data", "check", d)
    assert res.code == 1
    assert (
        "refused: it names the global posix.system" in res.err and "nothing it names was imported or called" in res.err
    )
    assert not planted.exists()


def test_python2_python3_and_numpy_pickles_all_load(tmp_path):
    import numpy as np

    from mfnpatch.datasets.bins import dumps_py2, parse_verification

    bins = [face_jpeg(i) for i in range(20)]
    issame = [i % 2 == 0 for i in range(10)]
    forms = {
        "python 2 str": dumps_py2(bins, issame),
        "python 3 bytes": pickle.dumps((bins, issame), protocol=pickle.HIGHEST_PROTOCOL),
        "python 3 bytes (protocol 2)": pickle.dumps((bins, issame), protocol=2),
        "numpy buffers": pickle.dumps(([np.frombuffer(b, np.uint8) for b in bins], issame), protocol=2),
    }
    for encoding, data in forms.items():
        vs = parse_verification(data, tmp_path / "x.bin")
        assert vs.encoding == encoding and vs.images == bins and vs.issame == issame


def test_records_split_at_the_magic_number_read_as_mxnet_reads_them(tmp_path):
    """A payload holding RecordIO's magic at an aligned offset is written in parts (dmlc-core's rule)."""
    # the image starts at byte 32 of the payload (IRHeader 24 + two labels); put the magic at image byte 32
    image = face_jpeg(1, extra=b"ab" + MAGIC_BYTES * 3 + b"cd")
    payload = pack([0, 1], 1, data=image)
    assert payload.find(MAGIC_BYTES) % 4 == 0
    encoded = encode_record(payload)
    assert encoded.count(MAGIC_BYTES) > 1  # split into parts
    got, end = read_record(encoded, 0)
    assert got == payload and end == len(encoded)
    d = write_dataset(tmp_path / "faces", image={4: image})
    r = check_dataset(d, full=True)
    assert r.ok, errors(r)
    mx = pytest.importorskip("mxnet")
    reader = mx.recordio.MXIndexedRecordIO(str(d / "train.idx"), str(d / "train.rec"), "r")
    hdr, img = mx.recordio.unpack(reader.read_idx(4))
    assert img == image and list(hdr.label) == [1.0, 1.0]
    assert unpack(payload)[1] == image


def test_our_writer_writes_what_mxnet_writes(tmp_path):
    mx = pytest.importorskip("mxnet")
    payloads = [b"", b"a", MAGIC_BYTES, b"xxxx" + MAGIC_BYTES + b"yy", os.urandom(999) + MAGIC_BYTES + b"z"]
    w = mx.recordio.MXRecordIO(str(tmp_path / "m.rec"), "w")
    for p in payloads:
        w.write(p)
    w.close()
    assert (tmp_path / "m.rec").read_bytes() == b"".join(encode_record(p) for p in payloads)
    for label in (3.0, [5.0, 1.0], [1.0, 2.0, 3.0]):
        h = mx.recordio.IRHeader(0, label, 7, 0)
        assert mx.recordio.pack(h, b"img") == pack(label, 7, data=b"img")


def test_full_decodes_every_image_and_hashes_the_whole_file(tmp_path, monkeypatch):
    import mfnpatch.datasets.records as records

    monkeypatch.setattr(records, "SAMPLE", 2)  # the default check decodes 2 images: keys 1 and 9
    d = write_dataset(tmp_path / "faces", image={5: face_jpeg(5)[:-200]})
    quick = check_dataset(d)
    assert quick.ok and quick.decoded == 2 + 3 * 32  # the sample missed it (32 of each .bin's 40 images)
    full = check_dataset(d, full=True, workers=2)
    assert not full.ok and any("key 5" in e and "truncated JPEG" in e for e in errors(full))
    assert (
        full.fingerprint["files"]["train.rec"]["sha256"] == hashlib.sha256((d / "train.rec").read_bytes()).hexdigest()
    )
    assert "sha256" not in quick.fingerprint["files"]["train.rec"]


def test_fingerprint_is_stable_and_sees_relabelling(tmp_path):
    d = write_dataset(tmp_path / "faces")
    a, b = check_dataset(d).fingerprint, check_dataset(d).fingerprint
    assert a == b
    files = a["files"]
    assert set(files) == {"property", "train.idx", "train.rec", "lfw.bin", "cfp_fp.bin", "agedb_30.bin"}
    assert files["train.rec"]["how"] == "fast-1" and len(files["train.rec"]["digest"]) == 64
    # a label changed in place (same length, same offsets): the fast digest sees it, the idx does not change
    data = bytearray((d / "train.rec").read_bytes())
    off = idx_offsets(d)[2]
    data[off + 8 + 24 : off + 8 + 28] = struct.pack("<f", 1.0)
    (d / "train.rec").write_bytes(bytes(data))
    c = check_dataset(d).fingerprint
    assert c["files"]["train.idx"] == files["train.idx"]
    assert c["files"]["train.rec"]["digest"] != files["train.rec"]["digest"]


def test_identity_ranges_that_overlap_or_leave_gaps(tmp_path):
    from mfnpatch.datasets.recordio import indexed_writer

    d = write_dataset(tmp_path / "faces")
    # rewrite with identity 1's range [4, 8) overlapping identity 2's [7, 10)
    with indexed_writer(d / "train.rec", d / "train.idx") as w:
        for k in range(1, 10):
            w.write(k, pack([(k - 1) // 3, 1], k, data=face_jpeg(k)))
        w.write(0, pack([10, 13], 0))
        for i, (a, b) in enumerate([(1, 4), (4, 8), (7, 10)]):
            w.write(10 + i, pack([a, b], 10 + i))
    r = check_dataset(d)
    assert any("identity 11's range [4, 8) overlaps identity 12's [7, 10)" in e for e in errors(r)), errors(r)
    with indexed_writer(d / "train.rec", d / "train.idx") as w:  # identity 11 with a scalar label: no range
        for k in range(1, 10):
            w.write(k, pack([(k - 1) // 3, 1], k, data=face_jpeg(k)))
        w.write(0, pack([10, 13], 0))
        for i, rng in enumerate([[1, 4], 5.0, [7, 10]]):
            w.write(10 + i, pack(rng, 10 + i))
    r = check_dataset(d)
    assert any("key 11" in e and "identity record 11 has no image range (IRHeader flag 0)" in e for e in errors(r))


def test_a_missing_directory_and_a_file(tmp_path, cli):
    res = cli("data", "check", tmp_path / "nope")
    assert res.code == 1 and "no such directory" in res.err
    (tmp_path / "f").write_text("x")
    res = cli("data", "check", tmp_path / "f")
    assert res.code == 1 and "not a directory" in res.err
    assert cli("data", "check", tmp_path, "--targets", "../etc").code == 64


def test_variants_by_their_counts():
    ibug = variants.recognise(85164, 3804846)
    assert ibug.key == "ms1m-ibug" and ibug.exact and "faces_ms1m_112x112" in ibug.message
    assert "header0 label [3804847. 3890011.]" in ibug.message  # its source, with the number
    assert variants.recognise(85742, 5822653).key == "ms1m-arcface"
    assert variants.recognise(93431, 5179510).key == "ms1m-retinaface"
    assert variants.recognise(360232, 17091657).key == "glint360k"
    assert variants.recognise(10572, 490623).key == "casia-webface"  # no source gives its image count
    modified = variants.recognise(85164, 3800000)
    assert modified.key is None and "a modified copy" in modified.message and "3804846" in modified.message
    assert variants.recognise(85142, 5000000).name == "unknown"
    for v in variants.VARIANTS:
        assert v.source and str(v.ids) in json.dumps(v.__dict__)


def test_the_synthetic_dataset_is_recognised(tmp_path):
    from mfnpatch.datasets.synth import synth

    synth(tmp_path / "s", ids=3, per_id=2, pairs=20)
    r = check_dataset(tmp_path / "s")
    assert r.ok, errors(r)
    assert r.variant.key == "synthetic"
    # the synthetic sets are not the standard sizes; that is no warning for a dataset mfnpatch made
    assert not [f for f in r.findings if "standard" in f.message]


def test_a_standard_size_set_is_expected_of_a_real_copy(tmp_path):
    d = write_dataset(tmp_path / "faces")
    r = check_dataset(d)
    warned = [f for f in r.findings if f.severity == "warning" and "standard lfw set has 6000" in f.message]
    assert warned and r.ok


def test_an_index_in_another_order_and_a_record_of_megabytes(tmp_path):
    import random

    big = b"".join(b"\xff\xfe\xff\xff" + bytes(65533) for _ in range(20))
    image = face_jpeg(3)
    image = image[:2] + big + image[2:]  # comment segments: still a 112x112 JPEG, of 1.3 MB
    d = write_dataset(tmp_path / "faces", image={3: image})
    r = check_dataset(d, full=True)
    assert r.ok, errors(r)
    lines = (d / "train.idx").read_text().splitlines()
    random.Random(0).shuffle(lines)
    (d / "train.idx").write_text("\n".join(lines) + "\n")
    r = check_dataset(d)
    assert r.ok, errors(r)
    assert "not in file order" in next(row.detail for row in r.rows if row.check == "train.idx")
