"""The apply engine: hunks placed on in-memory files (path -> bytes, None for absent), exactly, at an
offset, or with fuzz when asked; a failure says where the hunk's context differs. Never touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from mfnpatch.source.diff import ApplyFailure, FileDiff, Patch, split_lines

SET_FILE = "set.yaml"
SERIES_FILE = "series"
SUMS_FILE = "SHA256SUMS"
DEP3_REQUIRED = ("Description", "Origin", "Applies-To", "Last-Update")
MAX_SUGGESTED_FUZZ = 3


# --------------------------------------------------------------------------------------------
# The engine


@dataclass(frozen=True)
class HunkResult:
    patch: str
    path: str
    hunk: int
    expected_line: int  # 1-based, where the header (adjusted for earlier hunks) put it
    applied_line: int  # 1-based, where it went
    offset: int
    fuzz: int


def _expected_pos(start: int, length: int) -> int:
    return start if length == 0 else start - 1


def _trim(old, new, lead, trail, f):
    a = min(f, lead)
    b = min(f, trail)
    return old[a : len(old) - b], new[a : len(new) - b], a


_MOD = (1 << 61) - 1
_BASE = 1_000_003
SHOW_LINES = 40  # of a hunk's lines in a failure's excerpt (the rest counted)
NEAR = 2000  # positions around the expected one that the excerpt's best candidate is looked for in


def _find(lines: list[bytes], old: list[bytes], p0: int, lo: int) -> int | None:
    """Where ``old`` occurs in ``lines`` at or after ``lo``, nearest ``p0`` (after it on a tie). Linear: a
    rolling hash of each window of lines, and a full comparison only where the hashes agree."""
    n, m = len(lines), len(old)
    if m == 0:
        return p0 if lo <= p0 <= n else None
    hi = n - m
    if hi < lo:
        return None
    target = 0
    for x in old:
        target = (target * _BASE + hash(x)) % _MOD
    top = pow(_BASE, m - 1, _MOD)
    h = 0
    for x in lines[lo : lo + m]:
        h = (h * _BASE + hash(x)) % _MOD
    best = None
    for pos in range(lo, hi + 1):
        if pos > lo:
            h = ((h - hash(lines[pos - 1]) * top) * _BASE + hash(lines[pos + m - 1])) % _MOD
        if h == target and lines[pos : pos + m] == old:
            key = (abs(pos - p0), pos < p0)
            if best is None or key < best[0]:
                best = (key, pos)
            elif pos > p0 and key[0] > best[0][0]:
                break  # every later match is farther
    return best[1] if best else None


def _strip_eol(b: bytes) -> bytes:
    return b[:-2] if b.endswith(b"\r\n") else b[:-1] if b.endswith(b"\n") else b


def _show(b: bytes) -> str:
    text = b.decode("utf-8", "replace")
    if text.endswith("\r\n"):
        return text[:-2] + "\\r"
    return text[:-1] if text.endswith("\n") else text + "  (no newline at end of file)"


def _best_candidate(lines: list[bytes], old: list[bytes], p0: int) -> int:
    """Position near p0 where most of the expected lines match (for the expected/found display); looked for
    within NEAR positions of p0 and on the first SHOW_LINES lines, so a huge hunk costs no more than a small one."""
    n, m = len(lines), len(old)
    if n == 0 or m == 0:
        return min(max(p0, 0), n)
    head = old[:SHOW_LINES]
    lo, hi = max(0, p0 - NEAR), min(max(n - m, 0), p0 + NEAR)
    best, best_score = min(max(p0, 0), max(n - m, 0)), -1
    for pos in range(lo, hi + 1):
        score = sum(1 for i in range(len(head)) if pos + i < n and lines[pos + i] == head[i])
        if score > best_score or (score == best_score and abs(pos - p0) < abs(best - p0)):
            best, best_score = pos, score
    return best


def _comparison(lines: list[bytes], old: list[bytes], p0: int, pos: int) -> list[str]:
    shown = old[:SHOW_LINES]
    more = [f"  … and {len(old) - len(shown)} more lines of the hunk"] if len(old) > len(shown) else []
    out = [f"expected at line {p0 + 1} (lines the hunk removes or keeps):"]
    for i, exp in enumerate(shown):
        got = lines[pos + i] if pos + i < len(lines) else None
        mark = " " if got == exp else "!"
        out.append(f"{mark} {p0 + i + 1:5d} | {_show(exp)[:200]}")
    out += more
    out.append(f"found at line {pos + 1}:")
    for i, exp in enumerate(shown):
        got = lines[pos + i] if pos + i < len(lines) else None
        if got is None:
            out.append("!   (end of file)")
            break
        mark = " " if got == exp else "!"
        out.append(f"{mark} {pos + i + 1:5d} | {_show(got)[:200]}")
    return out + more


def _apply_hunks(patch: Patch, fd: FileDiff, data: bytes, fuzz: int, reverse: bool) -> tuple[bytes, list[HunkResult]]:
    lines = split_lines(data)
    results: list[HunkResult] = []
    lo = 0  # hunks apply in order and never overlap: search from the end of the previous one
    size_delta = 0  # lines added minus removed by earlier hunks
    last_offset = 0  # where the previous hunk landed relative to its header; search starts there
    for h in fd.hunks:
        old, new, start, length, lead, trail = h.sides(reverse)
        p_hdr = _expected_pos(start, length) + size_delta
        p0 = p_hdr + last_offset
        pos = None
        used = 0
        for f in range(0, fuzz + 1):
            o, nw, cut = _trim(old, new, lead, trail, f)
            pos = _find(lines, o, p0 + cut, lo)
            if pos is not None:
                used = f
                break
        if pos is None:
            raise _hunk_failure(patch, fd, h, lines, old, new, p0, lo, lead, trail, fuzz)
        o, nw, cut = _trim(old, new, lead, trail, used)
        lines[pos : pos + len(o)] = nw
        last_offset = pos - cut - p_hdr
        results.append(
            HunkResult(
                patch=patch.label,
                path=fd.path,
                hunk=h.index,
                expected_line=p_hdr + 1,
                applied_line=pos - cut + 1,
                offset=last_offset,
                fuzz=used,
            )
        )
        lo = pos + len(nw)
        size_delta += len(nw) - len(o)
    return b"".join(lines), results


def _hunk_failure(patch, fd, h, lines, old, new, p0, lo, lead, trail, fuzz) -> ApplyFailure:
    where = f"{patch.label} does not apply: {fd.path} hunk #{h.index} ({h.header})"
    # Line endings: matches once \r\n and \n are treated alike.
    if old and any(b.endswith(b"\r\n") for b in old + lines):
        norm_lines = [_strip_eol(b) for b in lines]
        norm_old = [_strip_eol(b) for b in old]
        if _find(norm_lines, norm_old, p0, lo) is not None:
            patch_crlf = any(b.endswith(b"\r\n") for b in old)
            return ApplyFailure(
                f"{where}: line endings differ: the patch has {'CRLF' if patch_crlf else 'LF'} lines, "
                f"the file has {'LF' if patch_crlf else 'CRLF'}",
                hint="convert the patch's line endings to match the file (dos2unix/unix2dos), then lock the set again",
                kind="crlf",
                patch=patch.label,
                path=fd.path,
                hunk=h.index,
            )
    # More fuzz would do it: say how much, never do it silently.
    for f in range(fuzz + 1, MAX_SUGGESTED_FUZZ + 1):
        o, _, cut = _trim(old, new, lead, trail, f)
        if len(o) < len(old) and _find(lines, o, p0 + cut, lo) is not None:
            pos = _best_candidate(lines, old, p0)
            return ApplyFailure(
                f"{where}: context differs; it would apply with fuzz {f}",
                hint=f"check the lines above; if the hunk still belongs there, rerun the same command with --fuzz {f} "
                "(the fuzz is recorded in the tree's state)",
                details=_comparison(lines, old, p0, pos),
                kind="fuzz",
                patch=patch.label,
                path=fd.path,
                hunk=h.index,
            )
    pos = _best_candidate(lines, old, p0)
    return ApplyFailure(
        f"{where}: the lines it changes are not in the file",
        hint="the file differs from what the patch was made for; compare with: mfnpatch status, mfnpatch diff",
        details=_comparison(lines, old, p0, pos),
        kind="mismatch",
        patch=patch.label,
        path=fd.path,
        hunk=h.index,
    )


def apply_patch(
    patch: Patch, files: dict[str, bytes | None], *, fuzz: int = 0, reverse: bool = False
) -> tuple[dict[str, bytes | None], list[HunkResult]]:
    """Apply (or reverse) one patch to in-memory files. Raises ApplyFailure; never writes."""
    out = dict(files)
    results: list[HunkResult] = []
    for fd in patch.files:
        if fd.path not in out:
            raise KeyError(f"{fd.path} was not loaded for {patch.label}")
        cur = out[fd.path]
        creates = fd.is_deleted if reverse else fd.is_new
        deletes = fd.is_new if reverse else fd.is_deleted
        if creates:
            body = b"".join(line for h in fd.hunks for line in h.sides(reverse)[1])
            if cur is not None:
                same = cur == body
                raise ApplyFailure(
                    f"{patch.label} does not apply: {fd.path} already exists"
                    + (" with the content the patch creates" if same else ""),
                    hint="the patch creates this file; remove it or use a tree without it",
                    kind="already-applied" if same else "file-exists",
                    patch=patch.label,
                    path=fd.path,
                )
            out[fd.path] = body
            results.extend(HunkResult(patch.label, fd.path, h.index, 1, 1, 0, 0) for h in fd.hunks)
            continue
        if cur is None:
            raise ApplyFailure(
                f"{patch.label} does not apply: {fd.path} does not exist in the tree",
                hint="the patch changes a file the pinned tree does not have; is the set made for this commit?",
                kind="missing-file",
                patch=patch.label,
                path=fd.path,
            )
        if deletes:
            expected = b"".join(line for h in fd.hunks for line in h.sides(reverse)[0])
            if cur != expected:
                raise ApplyFailure(
                    f"{patch.label} does not apply: {fd.path} is to be deleted but differs from what the patch expects",
                    kind="mismatch",
                    patch=patch.label,
                    path=fd.path,
                )
            out[fd.path] = None
            continue
        out[fd.path], res = _apply_hunks(patch, fd, cur, fuzz, reverse)
        results.extend(res)
    return out, results


def explain(failure: ApplyFailure, patch: Patch, files: dict[str, bytes | None], pristine: dict[str, bytes | None]):
    """Refine a mismatch: a patch whose reverse applies is either reversed or already applied."""
    if failure.kind not in ("mismatch", "file-exists", "already-applied"):
        return failure
    try:
        apply_patch(patch, files, reverse=True)
    except ApplyFailure:
        return failure
    untouched = all(files.get(p) == pristine.get(p) for p in patch.paths)
    if untouched:
        return ApplyFailure(
            f"{patch.label} does not apply: it is reversed: its removed lines are absent from the pinned "
            f"{failure.path} and its added lines are already there",
            hint="the patch was made with old and new swapped; regenerate it as git diff <pinned> <changed>",
            kind="reversed",
            patch=patch.label,
            path=failure.path,
            hunk=failure.hunk,
        )
    return ApplyFailure(
        f"{patch.label} does not apply: its changes are already present in {failure.path}",
        hint="an earlier patch (or a hand edit) already made this change; drop the duplicate",
        kind="already-applied",
        patch=patch.label,
        path=failure.path,
        hunk=failure.hunk,
    )
