"""``train.idx`` and ``train.rec`` against what the pinned ``FaceImageIter`` reads: every index line points at a
valid record (magic, length, continuation flags) and the records tile the file; record 0 is the header with
the identity range; the identity records' image ranges are contiguous, disjoint and cover every image; every
image's label is a class in ``[0, ids)`` and the identity whose range holds it; images decode (a sample, or
all on every core with ``--full``).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfnpatch.datasets import images as img
from mfnpatch.datasets.decode import Pool, record_problem
from mfnpatch.datasets.recordio import IR_SIZE, RecordError, read_record, unpack
from mfnpatch.datasets.report import DataReport, Progress, Severity, Tally
from mfnpatch.datasets.scan import IdxError, heads, idx_chunk_at, idx_chunks, words_of

SAMPLE = 256  # images of train.rec decoded by default
WINDOW = 64 << 10
WINDOWS = 16
DIGEST = "fast-1"
PASS_BLOCK = 1 << 15  # of train.idx per chunk of the record pass: some 1,000 records, their pages released after


@dataclass
class _Header:
    first_identity: int  # N + 1
    end_identity: int  # N + 1 + ids

    @property
    def images(self) -> int:
        return self.first_identity - 1

    @property
    def identities(self) -> int:
        return self.end_identity - self.first_identity


def _where(key: int, line: int, offset: int) -> str:
    return f"key {key} (train.idx line {line}) at byte {offset}"


RECORD_MIN = 32  # bytes of the smallest record: its 8-byte frame and 24-byte IRHeader


def _read_header(view, size: int, offset: int, line: int, rec: Path, tally: Tally) -> _Header | None:
    check = "header record"
    try:
        payload, _ = read_record(view, offset)
        h, rest = unpack(payload)
    except (RecordError, ValueError) as e:
        tally.add(check, rec, f"record 0 is not readable: {getattr(e, 'message', e)}", _where(0, line, offset))
        return None
    if rest and img.kind(rest):
        tally.add(
            check,
            rec,
            f"record 0 is an image (label {h.label}), not the header record face2rec2.py writes "
            "first: the pinned FaceImageIter would take its label for the identity range",
            _where(0, line, offset),
            hint="rebuild train.rec with face2rec2.py or mfnpatch data build",
        )
        return None
    if h.flag < 2 or not isinstance(h.label, tuple):
        tally.add(
            check,
            rec,
            f"record 0 has no identity range (IRHeader flag {h.flag}): a .rec without the header "
            "record face2rec2.py writes; the pinned FaceImageIter would misread it",
            _where(0, line, offset),
            hint="rebuild train.rec with face2rec2.py or mfnpatch data build",
        )
        return None
    a, b = h.label[0], h.label[1]
    if not (float(a).is_integer() and float(b).is_integer() and 2 <= a < b):
        tally.add(
            check,
            rec,
            f"record 0's identity range [{a}, {b}) is not two increasing integers >= 2",
            _where(0, line, offset),
        )
        return None
    if b > size // RECORD_MIN + 1:  # every key below b is a record, and a record takes at least RECORD_MIN bytes
        tally.add(
            check,
            rec,
            f"record 0's identity range [{a:.0f}, {b:.0f}) ends past the {size // RECORD_MIN + 1:,} records "
            f"train.rec's {size:,} bytes can hold (a header declaring more records than the file has)",
            _where(0, line, offset),
            hint="rebuild train.rec/.idx with face2rec2.py or mfnpatch data build",
        )
        return None
    if rest:
        tally.add(
            check,
            rec,
            f"record 0 carries {len(rest)} bytes after its labels (face2rec2 writes none)",
            _where(0, line, offset),
            severity="warning",
        )
    return _Header(int(a), int(b))


def _identities(fd: int, words, mm, size: int, d_rec: Path, idx: Path, hdr: _Header, tally: Tally,
                spans: list[tuple[int, int, int, int, int]]):  # fmt: skip
    """The identity records' ranges, in key order: (keys, starts, ends) as NumPy arrays, or None."""
    import numpy as np

    check = "identity records"
    found: dict[int, tuple[int, int]] = {}
    for span in spans:  # only the chunks of the index whose keys reach into the identity range
        if span[3] < hdr.first_identity or span[2] >= hdr.end_identity:
            continue
        chunk = idx_chunk_at(idx, span[0], span[1], span[4])
        k = chunk.keys
        sel = np.flatnonzero((k >= hdr.first_identity) & (k < hdr.end_identity))
        for i in sel:
            found.setdefault(int(k[i]), (int(chunk.offsets[i]), chunk.first_line + int(i)))
    missing = hdr.identities - len(found)
    if missing:
        first = next(k for k in range(hdr.first_identity, hdr.end_identity) if k not in found)
        tally.add(
            check,
            idx,
            f"no line for identity record {first}; the header promises records "
            f"{hdr.first_identity}..{hdr.end_identity - 1}",
            count=missing,
            kind="missing identity",
        )
    keys = np.array(sorted(found), np.int64)
    offs = np.array([found[int(k)][0] for k in keys], np.int64)
    hd = heads(words, size, offs)  # 40 bytes: an identity record is its frame, IRHeader and two labels
    if len(offs):
        release(mm, int(offs.min()), int(hd.end.max()))
    whole = hd.magic_ok & (hd.cflag == 0) & hd.fits & (hd.flag >= 2) & (hd.length >= IR_SIZE + 8)
    starts, ends = hd.label0.copy(), hd.label1.copy()
    for i in np.flatnonzero(hd.magic_ok & (hd.cflag == 1)):  # split at a magic number: read it whole
        try:
            h, _ = unpack(read_record(fd, int(offs[i]))[0])
        except (RecordError, ValueError):
            continue
        if isinstance(h.label, tuple) and len(h.label) >= 2:
            starts[i], ends[i], whole[i] = h.label[0], h.label[1], True
    integral = whole & (starts == np.floor(starts)) & (ends == np.floor(ends))
    bad = np.flatnonzero(hd.fits & hd.magic_ok & ~integral & ((hd.cflag == 0) | whole))
    if len(bad):
        i = int(bad[0])
        off, line = found[int(keys[i])]
        tally.add(check, d_rec, f"identity record {keys[i]} has no image range (IRHeader flag {hd.flag[i]})",
                  _where(int(keys[i]), line, off), count=len(bad), kind="no range")  # fmt: skip
    starts = np.where(integral, starts, -1).astype(np.int64)
    ends = np.where(integral, ends, -1).astype(np.int64)  # an unreadable record: the record pass names it
    if missing or not (starts >= 0).all():
        return None  # labels cannot be held against identities that are not all there
    order_ok = True
    if len(keys):
        if starts[0] != 1:
            tally.add(check, d_rec, f"the first identity's images start at {starts[0]}, not 1", f"key {keys[0]}")
            order_ok = False
        empty = np.flatnonzero(ends <= starts)
        if len(empty):
            i = empty[0]
            tally.add(
                check,
                d_rec,
                f"identity record {keys[i]} has an empty range [{starts[i]}, {ends[i]})",
                f"key {keys[i]}",
                count=len(empty),
                kind="empty",
            )
            order_ok = False
        gaps = np.flatnonzero(ends[:-1] != starts[1:])
        if len(gaps):
            i = gaps[0]
            what = "overlaps" if ends[i] > starts[i + 1] else "leaves a gap before"
            tally.add(
                check,
                d_rec,
                f"identity {keys[i]}'s range [{starts[i]}, {ends[i]}) {what} identity "
                f"{keys[i + 1]}'s [{starts[i + 1]}, {ends[i + 1]})",
                f"key {keys[i]}",
                count=len(gaps),
                kind="not contiguous",
            )
            order_ok = False
        if ends[-1] != hdr.first_identity:
            tally.add(
                check,
                d_rec,
                f"the last identity's range ends at {ends[-1]}, but the images end at "
                f"{hdr.images} (header: first identity record {hdr.first_identity})",
                f"key {keys[-1]}",
            )
            order_ok = False
    return (keys, starts, ends) if order_ok else None


def check_records(
    d: Path,
    prop: tuple[int, int, int] | None,
    report: DataReport,
    tally: Tally,
    full: bool,
    workers: int,
    progress: Progress | None,
) -> dict:
    """train.idx and train.rec: framing, header, identities, labels, images. Returns the fingerprint parts."""
    import numpy as np

    rec, idx = d / "train.rec", d / "train.idx"
    parts: dict[str, Any] = {}
    for p in (rec, idx):
        if not p.is_file():
            tally.add(
                "train.rec/.idx",
                p,
                "missing" if not p.exists() else "not a file",
                hint="the pinned code reads DIR/train.rec with its index DIR/train.idx",
            )
    if tally.failed("train.rec/.idx"):
        return parts
    size = rec.stat().st_size
    if size == 0:
        tally.add("train.rec/.idx", rec, "empty")
        return parts
    # pass 1: the index alone (syntax, its digest, where record 0 is)
    idx_hash = hashlib.sha256()
    lines = 0
    key0: tuple[int, int] | None = None
    spans: list[tuple[int, int, int, int, int]] = []  # (byte offset, bytes, min key, max key, first line) per chunk
    try:
        for chunk in idx_chunks(idx, idx_hash):
            lines += len(chunk.keys)
            if len(chunk.keys):
                spans.append((chunk.start, chunk.size, int(chunk.keys.min()), int(chunk.keys.max()), chunk.first_line))
            if key0 is None:
                hit = np.flatnonzero(chunk.keys == 0)
                if len(hit):
                    key0 = (int(chunk.offsets[hit[0]]), chunk.first_line + int(hit[0]))
    except IdxError as e:
        tally.add(
            "train.idx",
            idx,
            e.message,
            hint="train.idx has one KEY<TAB>OFFSET line per record, as MXNet's MXIndexedRecordIO writes it",
        )
        return parts
    parts["train.idx"] = {"size": idx.stat().st_size, "sha256": idx_hash.hexdigest()}
    if lines == 0:
        tally.add("train.idx", idx, "no records")
        return parts
    with open(rec, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return _check_rec(d, rec, idx, words_of(mm), mm, f.fileno(), size, lines, key0, spans, prop, report,
                              tally, full, workers, progress, parts)  # fmt: skip
        finally:
            try:
                mm.close()
            except BufferError:  # an error on the way out still holds a view of it: freed with the traceback
                pass


def _check_rec(d, rec, idx, view, mm, fd, size, lines, key0, spans, prop, report, tally, full, workers, progress,
               parts):  # fmt: skip
    hdr = None
    if key0 is None:
        tally.add(
            "header record",
            idx,
            "no line for record 0 (the header record the pinned FaceImageIter reads first)",
            hint="rebuild train.rec/.idx with face2rec2.py or mfnpatch data build",
        )
    elif not (0 <= key0[0] < size):
        tally.add(
            "header record",
            idx,
            f"record 0's offset {key0[0]} lies outside train.rec ({size} bytes)",
            f"line {key0[1]}",
        )
    else:
        hdr = _read_header(fd, size, key0[0], key0[1], rec, tally)
    ranges = _identities(fd, view, mm, size, rec, idx, hdr, tally, spans) if hdr else None
    n_ids = prop[0] if prop else None
    if hdr and prop and hdr.identities != prop[0]:
        tally.add(
            "property",
            d / "property",
            f"says {prop[0]} identities, but train.rec's header has "
            f"{hdr.identities} (records {hdr.first_identity}..{hdr.end_identity - 1})",
            "line 1",
            hint="property's first number is the number of identities: fix it or rebuild the dataset",
        )
        n_ids = min(prop[0], hdr.identities)
    h, w = (prop[1], prop[2]) if prop else (None, None)
    p = _RecordPass(rec, view, mm, fd, size, hdr, ranges, n_ids, tally)
    pool: Pool | None
    with Pool("images", hdr.images, workers, rec, progress) if full and hdr else nullcontext() as pool:
        p.pool, p.hw = pool, (h, w)
        for chunk in idx_chunks(idx, block=PASS_BLOCK):
            p.chunk(chunk)
            if progress:
                progress("records", p.done, lines)
        if pool is not None:
            pool.finish()
            decoded, fails, bad = pool.done, pool.fails, pool.bad
            parts["full_sha256"] = pool.sha256.get("sha256")
    if pool is None:
        decoded, fails = _decode_sample(fd, p.sample, h, w, workers)
        bad = len(fails)
    p.finish(idx, lines)
    if hdr:
        report.images, report.identities = hdr.images, hdr.identities
    tally.row("train.idx", f"{lines:,} lines" + ("" if p.in_order else ", not in file order"))
    tally.row("train.rec records", f"{lines:,} records, framing valid" + (", tiling the file" if p.in_order else ""))
    if hdr:
        tally.row(
            "header record", f"images 1..{hdr.images:,}, identities {hdr.first_identity:,}..{hdr.end_identity - 1:,}"
        )
        unread = None if ranges is not None or tally.failed("identity records") else "unreadable (train.rec records)"
        tally.row("identity records", f"{hdr.identities:,} ranges, contiguous and disjoint, covering every image",
                  skipped=unread)  # fmt: skip
        why = "no property" if n_ids is None else None
        against = "and the identity whose range holds it" if ranges is not None else "(identities unreadable)"
        tally.row("labels", f"every image's label in [0, {n_ids or 0:,}) {against}", skipped=why)
    else:
        tally.row("header record", "")
        for check in ("identity records", "labels"):
            tally.row(check, "", skipped="no header record")
    for i, (key, off, line, problem) in enumerate(fails):
        tally.add(
            "images",
            rec,
            problem,
            _where(key, line, off),
            kind="image",
            count=1 + (bad - len(fails) if i == len(fails) - 1 else 0),
        )
    report.decoded += decoded
    what = "all" if pool is not None else f"{decoded:,} sampled of"
    tally.row(
        "images",
        f"{what} {report.images or 0:,} decode as {h}x{w} JPEG/PNG"
        + ("" if pool is not None else " (--full decodes all)"),
    )
    parts["train.rec"] = {"size": size, "digest": p.digest_windows(), "how": DIGEST}
    if parts.get("full_sha256"):
        parts["train.rec"]["sha256"] = parts.pop("full_sha256")
    parts.pop("full_sha256", None)
    return parts


class _RecordPass:
    """The second pass: every index line's record, chunk by chunk (``scan.heads``), checked and digested."""

    def __init__(self, rec, view, mm, fd: int, size, hdr: _Header | None, ranges, n_ids, tally: Tally):
        import numpy as np

        self.rec, self.view, self.mm, self.fd, self.size = rec, view, mm, fd, size
        self.hdr, self.ranges, self.n_ids, self.tally = hdr, ranges, n_ids, tally
        self.digest = hashlib.blake2b(digest_size=32)
        self.digest.update(f"mfnpatch-rec-{DIGEST} {size}\n".encode())
        self.seen = np.zeros(hdr.end_identity if hdr else 0, bool)  # one byte per record
        n = hdr.images if hdr else 0
        self.sample_keys: Any = np.unique(np.linspace(1, n, min(SAMPLE, n)).round().astype(np.int64)) if n else []
        self.sample: list[tuple[int, int, int]] = []
        self.prev: tuple[int, int] | None = None  # (offset, end) of the previous chunk's last record
        self.in_order = True
        self.extra = 0
        self.done = 0
        self.pool: Pool | None = None
        self.hw: tuple = (None, None)

    def chunk(self, chunk) -> None:
        import numpy as np

        k, o = chunk.keys, chunk.offsets
        lines_of = chunk.first_line + np.arange(len(k))
        hd = self._heads(o)
        self.digest.update(hd.raw.tobytes())
        self.done += len(k)

        def bad(mask, message, kind, hint: str = "", check="train.rec records", severity: Severity = "error"):
            where = np.flatnonzero(mask)
            if len(where):
                i = where[0]
                self.tally.add(
                    check,
                    self.rec,
                    message,
                    _where(int(k[i]), int(lines_of[i]), int(o[i])),
                    severity=severity,
                    hint=hint,
                    count=len(where),
                    kind=kind,
                )

        bad(~hd.aligned, "the offset is not a multiple of 4 (every RecordIO record starts at a 4-byte boundary)",
            "misaligned", hint="train.idx does not belong to this train.rec, or the file is damaged")  # fmt: skip
        bad(hd.aligned & ~hd.in_file, "the offset lies outside train.rec", "outside",
            hint="train.idx does not belong to this train.rec, or train.rec was cut short")  # fmt: skip
        bad(
            hd.in_file & ~hd.magic_ok,
            "bad magic (not the start of a RecordIO record)",
            "magic",
            hint="train.idx does not belong to this train.rec, or the file is damaged",
        )
        ok = hd.magic_ok & np.isin(hd.cflag, (0, 1))
        bad(hd.magic_ok & ~ok, "a continuation flag where a record must start (flag 0 or 1)", "cflag")
        bad(
            ok & ~hd.fits,
            "the record runs past the end of the file (train.rec is truncated)",
            "truncated",
            hint="the copy of train.rec is incomplete: copy or download it again",
        )
        ok &= hd.fits
        end, length = hd.end.copy(), hd.length.copy()
        flag, label, label0 = hd.flag.copy(), hd.label.copy(), hd.label0.copy()
        for i in np.flatnonzero(ok & (hd.cflag == 1)):  # a record split at a magic number: read it whole
            try:
                payload, end[i] = read_record(self.fd, int(o[i]))
                h, _ = unpack(payload)
            except (RecordError, ValueError) as e:
                self.tally.add(
                    "train.rec records",
                    self.rec,
                    f"a split record is broken: {getattr(e, 'message', e)}",
                    _where(int(k[i]), int(lines_of[i]), int(o[i])),
                    kind="split",
                )
                ok[i] = False
                continue
            length[i], flag[i] = len(payload), h.flag
            label[i] = h.label if h.flag == 0 else 0.0
            label0[i] = h.first_label
        labels_len = IR_SIZE + 4 * np.clip(flag, 0, 1 << 20)
        bad(ok & (length < labels_len), "shorter than its IRHeader and the labels it announces", "short")
        ok &= length >= labels_len
        self._tiling(k, o, end, ok, lines_of)
        if self.hdr is None:
            return
        hdr = self.hdr
        inside = (k >= 0) & (k < hdr.end_identity)
        self.extra += int((~inside).sum())
        ki = k[inside]
        dup = self.seen[ki]
        u, c = np.unique(ki, return_counts=True)
        if (c > 1).any():
            dup = dup | np.isin(ki, u[c > 1])
        bad(np.isin(k, ki[dup]) & inside, "a key that appears twice in train.idx", "duplicate", check="train.idx")
        self.seen[ki] = True
        image = ok & (k >= 1) & (k <= hdr.images)
        cls = np.where(flag == 0, label, label0)
        integral = np.isfinite(cls) & (cls == np.floor(cls))
        bad(image & ~integral, "its label is not an integer class", "label", check="labels")
        if self.n_ids is not None:
            bad(
                image & integral & ((cls < 0) | (cls >= self.n_ids)),
                f"its label is outside [0, {self.n_ids}) (property's identities)",
                "range",
                check="labels",
                hint="labels are class ids 0..num_classes-1",
            )
        if self.ranges is not None:
            owner = np.searchsorted(self.ranges[1], k, side="right") - 1
            bad(
                image & integral & (cls != owner),
                "its label is not the identity whose range holds it",
                "identity",
                check="labels",
            )
        has_image = length - labels_len > 0
        bad(image & ~has_image, "an image record without image bytes (a non-image record)", "noimage", check="images")
        pick = np.flatnonzero(image & has_image & np.isin(k, self.sample_keys))
        self.sample += [(int(k[i]), int(o[i]), int(lines_of[i])) for i in pick]
        if self.pool is not None:
            sel = np.flatnonzero(image & has_image)
            self.pool.records(k[sel], o[sel], lines_of[sel], *self.hw)

    def _heads(self, o):
        """The records' heads, gathered from the mapping; the pages touched are released after (flat memory)."""
        valid = (o >= 0) & (o < self.size)
        hd = heads(self.view, self.size, o)
        if valid.any():
            release(self.mm, int(o[valid].min()), int(hd.end[valid].max()))
        return hd

    def _tiling(self, k, o, end, ok, lines_of) -> None:
        """In file order each record ends where the next begins: no bytes that no index line points at."""
        import numpy as np

        if not (self.in_order and len(o)):
            return
        if self.prev is None:
            starts, prior_starts, prior_ends, base = o[1:], o[:-1], end[:-1], 1
        else:
            starts, base = o, 0
            prior_starts = np.concatenate(([self.prev[0]], o[:-1]))
            prior_ends = np.concatenate(([self.prev[1]], end[:-1]))
        if (starts <= prior_starts).any():
            self.in_order = False  # an index in another order: its records are still checked one by one
            return
        gap = np.flatnonzero(ok[base:] & (starts != prior_ends)) + base
        if len(gap):
            i = int(gap[0])
            self.tally.add(
                "train.rec records",
                self.rec,
                "does not begin where the record before it ends: bytes that "
                "no index line points at, or records that overlap",
                _where(int(k[i]), int(lines_of[i]), int(o[i])),
                count=len(gap),
                kind="tiling",
            )
        self.prev = (int(o[-1]), int(end[-1]))

    def finish(self, idx: Path, lines: int) -> None:
        import numpy as np

        if self.in_order and self.prev is not None and self.prev[1] < self.size:
            self.tally.add(
                "train.rec records",
                self.rec,
                f"{self.size - self.prev[1]} bytes after the last indexed record (it ends at byte {self.prev[1]})",
                kind="trailing",
            )
        if self.hdr is None:
            return
        missing = np.flatnonzero(~self.seen[1:]) + 1
        if len(missing):
            m = int(missing[0])
            what = "image" if m <= self.hdr.images else "identity"
            self.tally.add(
                "train.idx",
                idx,
                f"no line for {what} record {m}, which the header's ranges include (the pinned reader fails on it)",
                count=len(missing),
                kind="missing key",
            )
        if self.extra:
            self.tally.add(
                "train.idx",
                idx,
                f"{self.extra} keys outside the header's ranges (the pinned code never reads them)",
                severity="warning",
            )

    def digest_windows(self) -> str:
        size = self.size
        for j in range(WINDOWS):
            pos = (size - WINDOW) * j // (WINDOWS - 1) if size > WINDOW else 0
            self.digest.update(os.pread(self.fd, WINDOW, pos))
        self.digest.update(os.pread(self.fd, WINDOW, max(0, size - WINDOW)))
        return self.digest.hexdigest()


def release(mm, start: int, end: int) -> None:
    """The pages of ``mm[start:end]`` this process touched leave its memory (the page cache keeps them)."""
    start = max(0, start) // mmap.PAGESIZE * mmap.PAGESIZE
    end = min(len(mm), end + 64)
    if end <= start:
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)
    except (OSError, ValueError):
        pass


def _decode_sample(fd: int, sample, h, w, workers: int):
    """The sampled images, decoded in threads (OpenCV releases the GIL while it decodes)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        problems = list(pool.map(lambda s: record_problem(fd, s[1], h, w), sample))
    fails = [(key, off, line, pr) for (key, off, line), pr in zip(sample, problems, strict=True) if pr]
    return len(sample), fails
