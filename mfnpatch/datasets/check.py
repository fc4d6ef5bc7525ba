"""`mfnpatch data check DIR`: is this the dataset the pinned code reads, whole and consistent, and which one?

What the pinned ``train_softmax.py`` reads from ``--data-dir``: ``property`` (``num_classes,height,width``),
``train.rec``/``train.idx`` through ``FaceImageIter`` (record 0 the header with the identity range
``[N+1, N+1+ids)``, records 1..N images labelled with their class, records N+1.. one per identity with its
image range ``[first, last+1)``), and ``<target>.bin`` for each verification target. Every check here is one
of those promises; a broken promise is one error line naming the file and the line, key or byte offset.

The default check reads the whole index and the head of every record (framing, header, labels: ``scan``)
and decodes a sample of the images; ``--full`` decodes every image on all cores and hashes the whole
``train.rec``. Memory is flat in the file's size: one byte per record (which keys were seen) and a few
numbers per identity.

The fingerprint (``DataReport.fingerprint``) is what a run record keeps: property, counts, the variant, size
and sha256 of ``property``, ``train.idx`` and each ``.bin``, and a fast digest of ``train.rec`` — BLAKE2b over
its size, the first 40 bytes of every record in index order (frames, headers, labels) and 64 KiB windows at
16 evenly spaced offsets and the end. It sees any record added, removed, moved, resized or relabelled and any
change inside the windows; it cannot see image bytes changed in place, with their length kept, outside the
windows (``--full`` adds the whole file's sha256).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from mfnpatch.datasets import variants
from mfnpatch.datasets.bins import BinError, fold_problem, load_verification
from mfnpatch.datasets.decode import Pool, cores
from mfnpatch.datasets.images import problem
from mfnpatch.datasets.records import check_records
from mfnpatch.datasets.report import DataError, DataReport, Progress, Row, Tally
from mfnpatch.errors import MfnError
from mfnpatch.fsutil import read_bounded

TARGETS = ("lfw", "cfp_fp", "agedb_30")
BIN_SAMPLE = 32  # images of each .bin decoded by default
MARKERS_BUILT = ".mfnpatch-build.json"
MARKERS = {".mfnpatch-synth.json": variants.SYNTHETIC, MARKERS_BUILT: variants.BUILT}
FORMAT = 1  # of the fingerprint
ORDER = [
    "directory",
    "property",
    "train.rec/.idx",
    "train.idx",
    "train.rec records",
    "header record",
    "identity records",
    "labels",
    "images",
    "variant",
]  # the table's rows; the .bin sets before the variant


def file_digest(p: Path) -> dict:
    h = hashlib.sha256()
    n = 0
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return {"size": n, "sha256": h.hexdigest()}


def built_targets(d: Path) -> list[str] | None:
    """The verification sets ``data build`` made in ``d`` (its marker says), or None when mfnpatch did not build it."""
    p = Path(d) / MARKERS_BUILT
    if not p.is_file() or p.is_symlink():
        return None
    try:
        data = json.loads(read_bounded(p, "marker", 1 << 20))
    except (MfnError, ValueError):
        return None
    t = data.get("targets") if isinstance(data, dict) else None
    return [str(k) for k in t] if isinstance(t, dict) else None


def made_by(d: Path) -> str | None:
    """SYNTHETIC or BUILT when mfnpatch wrote this dataset (its marker file, complete), else None."""
    for name, what in MARKERS.items():
        p = d / name
        if p.is_file() and not p.is_symlink():
            try:
                data = json.loads(read_bounded(p, "marker", 1 << 20))
            except (MfnError, ValueError):
                continue
            if isinstance(data, dict) and not data.get("writing"):
                return what
    return None


def read_property(d: Path, tally: Tally) -> tuple[int, int, int] | None:
    p = d / "property"
    if not p.is_file():
        tally.add(
            "property",
            p,
            "missing" if not p.exists() else "not a file",
            hint="the pinned code reads num_classes,height,width from DIR/property (e.g. 85164,112,112)",
        )
        return None
    try:
        text = read_bounded(p, "property", 4096).decode("latin1").strip()
    except MfnError as e:
        tally.add("property", p, e.message, hint="property is one line: num_classes,height,width (e.g. 85164,112,112)")
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(x.strip().isdigit() for x in parts):
        tally.add(
            "property",
            p,
            f"{text[:60]!r} is not num_classes,height,width",
            where="line 1",
            hint="one line of three integers, e.g. 85164,112,112",
        )
        return None
    ids, h, w = (int(x) for x in parts)
    if min(ids, h, w) < 1:
        tally.add("property", p, f"{text!r}: every value must be at least 1", where="line 1")
        return None
    return ids, h, w


def check_bin(
    d: Path,
    target: str,
    prop,
    tally: Tally,
    report: DataReport,
    full: bool,
    workers: int,
    progress: Progress | None,
    standard: bool,
) -> dict | None:
    """One verification set: loads (safely), an even number of images, two per pair, images decode."""
    check = f"{target}.bin"
    p = d / check
    try:
        vs = load_verification(p)
    except BinError as e:
        tally.add(check, p, e.message.removeprefix(f"{p}: "), hint=e.hint or "")
        tally.row(check, "")
        return None
    n = len(vs.images)
    if n % 2:
        tally.add(check, p, f"an odd number of images ({n}): a verification set holds two per pair")
    if vs.pairs * 2 != n:
        tally.add(
            check,
            p,
            f"{vs.pairs} pairs in issame_list but {n} images (two per pair expected)",
            hint="the pinned load_bin reads 2 x len(issame_list) images",
        )
    folds = fold_problem(vs.issame)
    if folds:
        tally.add(
            check, p, folds, hint="order the pairs so that every tenth holds both kinds (as LFW's pairs.txt does)"
        )
    std = variants.STANDARD_PAIRS.get(target)
    if standard and std is not None and vs.pairs != std:
        tally.add(
            check,
            p,
            f"{vs.pairs} pairs where the standard {target} set has {std} "
            f"({variants.STANDARD_PAIRS_SOURCE}): the seed's targets assume the standard set",
            severity="warning",
        )
    h, w = (prop[1], prop[2]) if prop else (None, None)
    count = min(n, 2 * vs.pairs)
    if full:
        with Pool(f"{target}.bin images", count, workers, progress=progress) as pool:
            pool.images(vs.images[:count], h, w)
            pool.finish()
            fails, bad, decoded = pool.fails, pool.bad, pool.done
    else:
        picks = (
            list(range(count))
            if count <= BIN_SAMPLE
            else [i * (count - 1) // (BIN_SAMPLE - 1) for i in range(BIN_SAMPLE)]
        )
        fails = [(i, pr) for i in picks if (pr := problem(vs.images[i], h, w))]
        bad, decoded = len(fails), len(picks)
    for j, (i, pr) in enumerate(fails):
        tally.add(
            check, p, f"image {i}: {pr}", kind="image", count=1 + (bad - len(fails) if j == len(fails) - 1 else 0)
        )
    report.decoded += decoded
    same = sum(vs.issame)
    tally.row(
        check,
        f"{vs.pairs:,} pairs ({same:,} same), {vs.encoding}; "
        + (f"all {decoded:,} images" if full else f"{decoded} sampled images")
        + f" decode as {h}x{w}",
    )
    return {"size": vs.size, "sha256": vs.sha256, "pairs": vs.pairs}


def check_dataset(
    d: Path,
    targets: tuple[str, ...] | list[str] = TARGETS,
    full: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
) -> DataReport:
    """Check a dataset directory; the report's findings say what is wrong, its fingerprint what it is."""
    t0 = time.monotonic()
    d = Path(d)
    report = DataReport(dir=str(d), targets=list(targets), full=full)
    tally = Tally(report)
    if not d.is_dir():
        tally.add(
            "directory",
            d,
            "no such directory" if not d.exists() else "not a directory",
            hint="give the dataset directory: the one holding property, train.rec, train.idx and the .bin files",
        )
        report.seconds = time.monotonic() - t0
        return report
    workers = workers or cores()
    prop = read_property(d, tally)
    if prop:
        report.prop = {"ids": prop[0], "height": prop[1], "width": prop[2]}
    files: dict[str, Any] = {}
    if prop:  # a property that reads (a regular file of at most 4 KiB): digested
        files["property"] = file_digest(d / "property")
    files.update(check_records(d, prop, report, tally, full, workers, progress))
    maker = made_by(d)
    for t in targets:
        got = check_bin(d, t, prop, tally, report, full, workers, progress, standard=maker is None)
        if got:
            files[f"{t}.bin"] = got
    rowed = {row.check for row in report.rows}
    for check in dict.fromkeys(f.check for f in report.findings):  # a check that stopped early still has its row
        if check not in rowed and check != "property":
            tally.row(check, "")
            rowed.add(check)
    for check in ("train.rec records", "header record", "identity records", "labels", "images"):
        if check not in rowed:
            tally.row(check, "", skipped="train.rec/.idx cannot be read")
    tally.row("property", f"{prop[0]:,} identities, {prop[1]}x{prop[2]}" if prop else "")
    if report.identities is not None and report.images is not None:
        report.variant = variants.recognise(report.identities, report.images, maker)
        report.rows.append(Row("variant", "ok" if report.variant.exact else "warn", report.variant.message))
    order = [*ORDER[:-1], *(f"{t}.bin" for t in targets), ORDER[-1]]
    report.rows.sort(key=lambda row: order.index(row.check) if row.check in order else len(order))
    report.fingerprint = {
        "format": FORMAT,
        "property": report.prop,
        "images": report.images,
        "identities": report.identities,
        "variant": report.variant.key if report.variant else None,
        "files": files,
    }
    report.seconds = time.monotonic() - t0
    return report


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, in words (a resumed run names what changed)."""
    out = []
    for key in ("property", "images", "identities", "variant"):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)} -> {new.get(key)}")
    of, nf = old.get("files") or {}, new.get("files") or {}
    for name in sorted(set(of) | set(nf)):
        a, b = of.get(name), nf.get(name)
        if a is None or b is None:
            out.append(f"{name}: {'added' if a is None else 'removed'}")
            continue
        for field in ("size", "sha256", "digest"):
            if field in a and field in b and a[field] != b[field]:
                av, bv = str(a[field]), str(b[field])
                out.append(f"{name} {field}: {av[:12]} -> {bv[:12]}")
                break
    return out


__all__ = ["DataError", "DataReport", "TARGETS", "check_dataset", "fingerprint_changes", "made_by"]
