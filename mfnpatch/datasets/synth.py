"""`mfnpatch data synth`: a small synthetic face dataset in the exact format the pinned code reads.

    DIR/property                      num_classes,112,112
    DIR/train.rec, DIR/train.idx      MXNet IndexedRecordIO, as src/data/face2rec2.py writes it:
                                      record 0: header, flag 2, label [N+1, N+1+num_ids]
                                      records 1..N: JPEG images, label [class_id, 1] (flag 2)
                                      records N+1..N+num_ids: one per identity, label [first, last+1)
    DIR/lfw.bin, cfp_fp.bin, agedb_30.bin
                                      (bins, issame_list) pickled as Python 2 does: each image a Python 2
                                      str (BINSTRING opcodes), so Python 3 needs encoding='bytes' (the py3
                                      set's load_bin fix) to read them, like the real files

Identities are drawn to be learnable in a few dozen steps: each has its own colours, face geometry and a
coded block pattern; images vary by shift, brightness, noise and JPEG. Everything is deterministic for a
seed. The verification sets use fresh images of the same identities: half the pairs match, interleaved,
so every fold of the 10-fold evaluation has both kinds.
"""

from __future__ import annotations

import colorsys
import io
import struct
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write, replacing

TARGETS = ("lfw", "cfp_fp", "agedb_30")
SIZE = 112


class SynthError(MfnError):
    pass


MARKER = ".mfnpatch-synth.json"
FILES = ("property", "train.rec", "train.idx") + tuple(f"{t}.bin" for t in TARGETS)


@dataclass
class SynthResult:
    dir: str
    identities: int
    images: int
    pairs: int
    targets: list[str]
    seed: int
    reused: bool = False


def _check_target(out: Path, params: dict) -> bool:
    """True if ``out`` already holds this exact synthetic dataset. Refuse to overwrite anything that is not
    a synthetic dataset mfnpatch wrote (a real MS1M directory, say)."""
    import json

    marker = out / MARKER
    present = [f for f in FILES if (out / f).exists()]
    if not marker.exists():
        if present:
            raise SynthError(
                f"{out} already holds {', '.join(present)} that mfnpatch did not write (no {MARKER})",
                hint="give an empty or new directory; mfnpatch data synth never overwrites a real dataset",
            )
        return False
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError):
        old = None
    return old == params and len(present) == len(FILES)


def _identity(i: int, ids: int, seed: int):
    import numpy as np

    rng = np.random.default_rng([seed, i, 7919])
    hue = (i / ids + rng.uniform(-0.01, 0.01)) % 1.0
    bg = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.9)) * 255
    skin = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.35, 0.85)) * 255
    code = [(i >> b) & 1 for b in range(9)]  # a 3x3 block pattern on the forehead
    return {
        "bg": bg,
        "skin": skin,
        "code": code,
        "eye_dx": rng.uniform(12, 20),
        "eye_dy": rng.uniform(6, 16),
        "mouth_w": rng.uniform(8, 18),
        "rx": rng.uniform(30, 40),
        "ry": rng.uniform(40, 50),
    }


def _draw(ident: dict, rng):
    import numpy as np

    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cx, cy = 56 + rng.normal(0, 2.0), 58 + rng.normal(0, 2.0)
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = ident["bg"]
    face = ((xx - cx) / ident["rx"]) ** 2 + ((yy - cy) / ident["ry"]) ** 2 <= 1
    img[face] = ident["skin"]
    for ex in (-1, 1):
        ecx, ecy = cx + ex * ident["eye_dx"], cy - ident["eye_dy"]
        img[((xx - ecx) / 5.0) ** 2 + ((yy - ecy) / 3.0) ** 2 <= 1] = (25, 25, 35)
    img[((xx - cx) / ident["mouth_w"]) ** 2 + ((yy - (cy + 22)) / 3.5) ** 2 <= 1] = (160, 50, 60)
    for b, bit in enumerate(ident["code"]):
        if bit:
            bx, by = cx - 12 + 8 * (b % 3), cy - 40 + 6 * (b // 3)
            img[(np.abs(xx - bx) < 3.5) & (np.abs(yy - by) < 2.5)] = (250, 250, 250)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(rgb) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), 92])  # cv2 wants BGR
    if not ok:
        raise SynthError("JPEG encoding failed")
    return buf.tobytes()


def py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """pickle.dumps((bins, issame), protocol=2) as Python 2 writes it: str items as (SHORT_)BINSTRING."""
    out = io.BytesIO()
    out.write(b"\x80\x02")  # PROTO 2
    out.write(b"]")  # EMPTY_LIST
    for k in range(0, len(bins), 1000):
        out.write(b"(")  # MARK
        for b in bins[k : k + 1000]:
            if len(b) < 256:
                out.write(b"U" + bytes([len(b)]) + b)  # SHORT_BINSTRING
            else:
                out.write(b"T" + struct.pack("<I", len(b)) + b)  # BINSTRING
        out.write(b"e")  # APPENDS
    out.write(b"]")
    for k in range(0, len(issame), 1000):
        out.write(b"(")
        out.write(b"".join(b"\x88" if s else b"\x89" for s in issame[k : k + 1000]))  # NEWTRUE / NEWFALSE
        out.write(b"e")
    out.write(b"\x86.")  # TUPLE2, STOP
    return out.getvalue()


def synth(out: Path, ids: int = 20, per_id: int = 20, pairs: int = 100, seed: int = 0, on_step=None) -> SynthResult:
    import numpy as np

    try:
        from mxnet import recordio
    except ImportError as e:
        raise SynthError(f"MXNet is needed to write RecordIO ({e})", hint="run in the cpu environment") from None
    if ids < 2 or per_id < 2:
        raise SynthError("--ids and --per-id must be at least 2 (pairs need two images of one identity)")
    if pairs < 10:
        raise SynthError(f"--pairs {pairs}: the verification is 10-fold, it needs at least 10 pairs")
    import json

    say = on_step or (lambda s: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} is a file, not a directory", hint="give a directory for --output")
    params = {"format": 1, "ids": ids, "per_id": per_id, "pairs": pairs, "seed": seed}
    if out.is_dir() and _check_target(out, params):
        return SynthResult(str(out), ids, ids * per_id, pairs, list(TARGETS), seed, reused=True)
    out.mkdir(parents=True, exist_ok=True)
    # the marker goes first (so a rerun may overwrite what an interrupted run left) and its parameters
    # last: property is written at the very end, so an interrupted dataset never looks complete
    atomic_write(out / MARKER, json.dumps({"format": 1, "writing": True}) + "\n")
    (out / "property").unlink(missing_ok=True)
    people = [_identity(i, ids, seed) for i in range(ids)]
    n = ids * per_id
    say(f"writing {n} images of {ids} identities to train.rec")
    with replacing(out / "train.rec") as rec_tmp, replacing(out / "train.idx") as idx_tmp:
        writer = recordio.MXIndexedRecordIO(str(idx_tmp), str(rec_tmp), "w")
        try:
            header0 = recordio.IRHeader(2, [float(n + 1), float(n + 1 + ids)], 0, 0)
            writer.write_idx(0, recordio.pack(header0, b""))
            k = 1
            ranges = []
            for i, person in enumerate(people):
                rng = np.random.default_rng([seed, i, 104729])
                first = k
                for _ in range(per_id):
                    h = recordio.IRHeader(2, [float(i), 1.0], k, 0)
                    writer.write_idx(k, recordio.pack(h, _jpeg(_draw(person, rng))))
                    k += 1
                ranges.append((first, k))
            for i, (a, b) in enumerate(ranges):
                rec = recordio.pack(recordio.IRHeader(2, [float(a), float(b)], n + 1 + i, 0), b"")
                writer.write_idx(n + 1 + i, rec)
        finally:
            writer.close()
    for t, target in enumerate(TARGETS):
        say(f"writing {target}.bin ({pairs} pairs)")
        rng = np.random.default_rng([seed, 1000 + t])
        bins: list[bytes] = []
        issame: list[bool] = []
        for p in range(pairs):
            same = p % 2 == 0
            a = int(rng.integers(ids))
            b = a if same else int((a + 1 + rng.integers(ids - 1)) % ids)
            bins += [_jpeg(_draw(people[a], rng)), _jpeg(_draw(people[b], rng))]
            issame.append(same)
        atomic_write(out / f"{target}.bin", py2_pickle(bins, issame))
    atomic_write(out / "property", f"{ids},{SIZE},{SIZE}\n")
    atomic_write(out / MARKER, json.dumps(params) + "\n")
    return SynthResult(str(out), ids, n, pairs, list(TARGETS), seed)


def read_back(d: Path) -> dict:
    """Read a dataset as the pinned code does (header record, identity records, images): a summary."""
    import pickle

    import numpy as np
    from mxnet import image, recordio

    d = Path(d)
    num_classes, h, w = (int(x) for x in (d / "property").read_text().strip().split(","))
    rec = recordio.MXIndexedRecordIO(str(d / "train.idx"), str(d / "train.rec"), "r")
    header, _ = recordio.unpack(rec.read_idx(0))
    first_id, end_id = int(header.label[0]), int(header.label[1])
    labels = []
    for k in range(1, first_id):
        hk, payload = recordio.unpack(rec.read_idx(k))
        labels.append(int(hk.label[0]))
        if k == 1:
            shape = image.imdecode(payload).shape
    ranges = []
    for k in range(first_id, end_id):
        hk, _ = recordio.unpack(rec.read_idx(k))
        ranges.append((int(hk.label[0]), int(hk.label[1])))
    rec.close()
    bins = {}
    for t in TARGETS:
        with open(d / f"{t}.bin", "rb") as f:
            images, issame = pickle.load(f, encoding="bytes")
        bins[t] = {"images": len(images), "pairs": len(issame), "positives": int(np.sum(issame))}
    return {
        "num_classes": num_classes,
        "image_size": (h, w),
        "images": len(labels),
        "identities": len(ranges),
        "ranges": ranges,
        "labels": labels,
        "first_shape": tuple(shape),
        "bins": bins,
    }
