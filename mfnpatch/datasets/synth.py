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
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.datasets.bins import dumps_py2
from mfnpatch.datasets.images import encode_jpeg
from mfnpatch.datasets.recordio import indexed_writer, pack
from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write

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
    return encode_jpeg(rgb, quality=92)


def synth(out: Path, ids: int = 20, per_id: int = 20, pairs: int = 100, seed: int = 0, on_step=None) -> SynthResult:
    import numpy as np

    if ids < 2 or per_id < 2:
        raise SynthError("--ids and --per-id must be at least 2 (pairs need two images of one identity)")
    if pairs < 20:
        raise SynthError(f"--pairs {pairs}: the pinned 10-fold verification needs at least 20 pairs (a matching and a "
                         "non-matching pair in every fold)")  # fmt: skip
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
    with indexed_writer(out / "train.rec", out / "train.idx") as writer:
        writer.write(0, pack([n + 1, n + 1 + ids], 0))
        k = 1
        ranges = []
        for i, person in enumerate(people):
            rng = np.random.default_rng([seed, i, 104729])
            first = k
            for _ in range(per_id):
                writer.write(k, pack([i, 1], k, data=_jpeg(_draw(person, rng))))
                k += 1
            ranges.append((first, k))
        for i, (a, b) in enumerate(ranges):
            writer.write(n + 1 + i, pack([a, b], n + 1 + i))
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
        atomic_write(out / f"{target}.bin", dumps_py2(bins, issame))
    atomic_write(out / "property", f"{ids},{SIZE},{SIZE}\n")
    atomic_write(out / MARKER, json.dumps(params) + "\n")
    return SynthResult(str(out), ids, n, pairs, list(TARGETS), seed)


def read_back(d: Path) -> dict:
    """Read a dataset as the pinned code does (header record, identity records, images): a summary."""
    from mfnpatch.datasets.bins import load_verification
    from mfnpatch.datasets.images import decode_rgb
    from mfnpatch.datasets.recordio import read_record, unpack

    d = Path(d)
    num_classes, h, w = (int(x) for x in (d / "property").read_text().strip().split(","))
    offsets = {int(k): int(o) for k, o in (line.split("\t") for line in (d / "train.idx").read_text().splitlines())}
    data = (d / "train.rec").read_bytes()

    def record(key: int):
        return unpack(read_record(data, offsets[key])[0])

    header, _ = record(0)
    first_id, end_id = int(header.label[0]), int(header.label[1])
    labels = []
    for k in range(1, first_id):
        hk, payload = record(k)
        labels.append(int(hk.first_label))
        if k == 1:
            shape = decode_rgb(payload).shape
    ranges = [(int(hk.label[0]), int(hk.label[1])) for hk, _ in map(record, range(first_id, end_id))]
    bins = {}
    for t in TARGETS:
        vs = load_verification(d / f"{t}.bin")
        bins[t] = {"images": len(vs.images), "pairs": vs.pairs, "positives": sum(vs.issame)}
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
