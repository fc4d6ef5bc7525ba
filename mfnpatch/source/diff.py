"""Unified diffs with DEP-3 headers, parsed into patches: the file format of one patch of a set.

Paths are checked as they are read (-p1 form, inside the tree, never .git/ or mfnpatch's state): a patch
that names a path outside its tree is refused before anything is applied. Nothing here touches the disk
but ``read_patch``.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import unidiff

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import UnsafePath, confined, sha256_bytes

SET_FILE = "set.yaml"
SERIES_FILE = "series"
SUMS_FILE = "SHA256SUMS"
DEP3_REQUIRED = ("Description", "Origin", "Applies-To", "Last-Update")
MAX_SUGGESTED_FUZZ = 3


# --------------------------------------------------------------------------------------------
# Errors


class PatchSetError(MfnError):
    """A patch set on disk is malformed (manifest, series, checksum, header)."""


class ApplyFailure(MfnError):
    """A patch does not apply. ``kind`` says why; the message names patch, file and hunk."""

    def __init__(self, message, hint=None, details=None, *, kind="mismatch", patch="", path="", hunk=0):
        super().__init__(message, hint=hint, details=details)
        self.kind = kind
        self.patch = patch
        self.path = path
        self.hunk = hunk

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(failure=self.kind, patch=self.patch, file=self.path, hunk=self.hunk)
        return d


@dataclass
class Dep3:
    fields: dict[str, str]
    lines: dict[str, int]  # field -> 1-based line in the patch file

    @property
    def description(self) -> str:
        return self.fields.get("Description") or self.fields.get("Subject", "")


@dataclass(frozen=True)
class HunkLine:
    tag: str  # ' ', '-', '+'
    data: bytes  # the line with its end-of-line bytes (b'' eol on a last line without newline)
    patch_line: int


@dataclass
class Hunk:
    index: int  # 1-based within its file
    header: str
    source_start: int
    source_length: int
    target_start: int
    target_length: int
    lines: list[HunkLine]
    patch_line: int

    def sides(self, reverse: bool = False):
        old = [ln.data for ln in self.lines if ln.tag in " -"]
        new = [ln.data for ln in self.lines if ln.tag in " +"]
        start, length = (self.target_start, self.target_length) if reverse else (self.source_start, self.source_length)
        if reverse:
            old, new = new, old
        lead = 0
        for ln in self.lines:
            if ln.tag != " ":
                break
            lead += 1
        trail = 0
        for ln in reversed(self.lines):
            if ln.tag != " ":
                break
            trail += 1
        return old, new, start, length, lead, trail


@dataclass
class FileDiff:
    path: str
    is_new: bool
    is_deleted: bool
    hunks: list[Hunk]
    patch_line: int


@dataclass
class Patch:
    name: str  # file name, e.g. 0001-no-bias-fc7.patch
    label: str  # set@version/name, as shown to users
    header: Dep3
    files: list[FileDiff]
    sha256: str
    text: str

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]


# --------------------------------------------------------------------------------------------
# Parsing


_FIELD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):(?:\s(.*))?$")
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def split_lines(data: bytes) -> list[bytes]:
    """Split on b'\\n' only, keeping line ends (bytes.splitlines would also split on \\r, \\x0c ...)."""
    if not data:
        return []
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _split_text_lines(text: str) -> list[str]:
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def parse_dep3(lines: list[str], where: str) -> Dep3:
    fields: dict[str, str] = {}
    at: dict[str, int] = {}
    last: str | None = None
    for i, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            last = None
            continue
        if line[0] in " \t" and last is not None:
            cont = line.strip()
            fields[last] += "\n" + ("" if cont == "." else cont)
            continue
        m = _FIELD_RE.match(line)
        if m:
            last = m.group(1)
            if last in fields:
                raise PatchSetError(f"{where}:{i}: DEP-3 field '{last}' appears twice (first at line {at[last]})")
            fields[last] = (m.group(2) or "").strip()
            at[last] = i
        else:
            last = None  # free-form text after the header paragraph is allowed
    if "Subject" in fields and "Description" not in fields:
        fields["Description"], at["Description"] = fields["Subject"], at["Subject"]
    for req in DEP3_REQUIRED:
        if not fields.get(req):
            raise PatchSetError(
                f"{where}:1: DEP-3 header lacks '{req}'",
                hint="every patch starts with Description, Origin, Applies-To and Last-Update lines",
            )
    try:
        _dt.date.fromisoformat(fields["Last-Update"])
    except ValueError:
        raise PatchSetError(
            f"{where}:{at['Last-Update']}: Last-Update '{fields['Last-Update']}' is not a date (YYYY-MM-DD)"
        ) from None
    return Dep3(fields=fields, lines=at)


def _diff_start(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        if line.startswith("diff --git ") or line.startswith("Index: "):
            return i
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            return i
    return None


def _locate_malformed(lines: list[str], first: int) -> tuple[int, str]:
    """Walk the hunks by their declared lengths to name the first line that breaks them."""
    i = first
    n = len(lines)
    while i < n:
        m = _HUNK_RE.match(lines[i])
        if not m:
            i += 1
            continue
        header_line = i + 1
        old_left = int(m.group(2)) if m.group(2) is not None else 1
        new_left = int(m.group(4)) if m.group(4) is not None else 1
        i += 1
        while old_left > 0 or new_left > 0:
            if i >= n:
                return header_line, f"hunk ends early: {old_left} old and {new_left} new lines missing"
            tag = lines[i][:1]
            if tag == " " or lines[i] in ("\n", "\r\n"):
                old_left -= 1
                new_left -= 1
            elif tag == "-":
                old_left -= 1
            elif tag == "+":
                new_left -= 1
            elif tag == "\\":
                pass
            else:
                return i + 1, f"not a hunk line: {lines[i].rstrip()!r}"
            if old_left < 0 or new_left < 0:
                return header_line, "hunk is longer than its @@ header says"
            i += 1
    return first + 1, "unparseable diff"


def _diff_path(raw: str, where: str) -> str | None:
    """Normalise a ---/+++ path: None for /dev/null; refuse absolute and escaping paths."""
    raw = raw.rstrip("\r")
    if raw == "/dev/null":
        return None
    if raw.startswith("/"):
        raise ApplyFailure(
            f"{where}: refused: absolute path '{raw}' (patches may only touch files inside the tree)",
            hint="write the patch with paths relative to the tree root, as a/<path> and b/<path> (git diff does)",
            kind="unsafe-path",
            path=raw,
        )
    if raw.startswith(("a/", "b/")):
        raw = raw[2:]
    else:
        raise ApplyFailure(
            f"{where}: path '{raw}' is not in -p1 form (a/<path>, b/<path>)",
            hint="regenerate the patch with git diff, or prefix its paths with a/ and b/",
            kind="malformed",
            path=raw,
        )
    p = PurePosixPath(raw)
    if not raw or raw.startswith("/") or any(part in ("..", "") for part in raw.split("/")) or "\\" in raw:
        raise ApplyFailure(
            f"{where}: refused: path '{raw}' escapes the tree",
            hint="patches may only name files inside the tree; remove '..' components",
            kind="unsafe-path",
            path=raw,
        )
    try:
        confined(raw, "path")
    except UnsafePath as e:  # .git/ or .mfnpatch/, a control character: never, --force or not
        raise ApplyFailure(
            f"{where}: {e.message}",
            hint="a patch set changes the upstream's files only, never the repository's metadata or mfnpatch's state",
            kind="unsafe-path",
            path=raw,
        ) from None
    return str(p)


_LINK_MODE = re.compile(
    r"^(?:new file mode|deleted file mode|new mode|old mode|index [0-9a-f]+\.\.[0-9a-f]+) 120000\s*$"
)


def parse_patch(text: str, name: str, label: str, sha256: str | None = None) -> Patch:
    """Parse one patch file's text (header + unified diff) into a Patch."""
    lines = _split_text_lines(text)
    start = _diff_start(lines)
    if start is None:
        raise PatchSetError(f"{label}:1: no unified diff found (expected '--- a/...' and '+++ b/...' lines)")
    header = parse_dep3(lines[:start], label)
    for i, text_line in enumerate(lines[start:], start + 1):
        m = _LINK_MODE.match(text_line)
        if m:
            raise ApplyFailure(
                f"{label}:{i}: a symlink (mode 120000) is not something a patch set may create or change",
                hint="patch sets change regular files only; a link could point a later write outside the tree",
                kind="malformed",
                patch=label,
            )
    try:
        ps = unidiff.PatchSet(lines)
    except unidiff.UnidiffParseError as e:
        line, why = _locate_malformed(lines, start)
        raise ApplyFailure(
            f"{label}:{line}: malformed patch: {why}",
            hint="the @@ -a,b +c,d @@ counts must match the hunk's lines; regenerate the patch with git diff",
            details=[f"unidiff: {e}"],
            kind="malformed",
            patch=label,
        ) from None
    file_starts = [
        i
        for i, ln in enumerate(lines)
        if ln.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")
    ]
    files: list[FileDiff] = []
    for k, pf in enumerate(ps):
        fline = file_starts[k] + 1 if k < len(file_starts) else start + 1
        where = f"{label}:{fline}"
        if pf.is_binary_file:
            raise ApplyFailure(f"{where}: binary patches are not supported", kind="malformed", patch=label)
        src = _diff_path(pf.source_file, where)
        dst = _diff_path(pf.target_file, where)
        if src is not None and dst is not None and src != dst:
            raise ApplyFailure(
                f"{where}: renames are not supported ({src} -> {dst})", kind="malformed", patch=label, path=dst
            )
        path = dst if dst is not None else src
        if path is None:
            raise ApplyFailure(f"{where}: both sides are /dev/null", kind="malformed", patch=label)
        hunks: list[Hunk] = []
        for hi, h in enumerate(pf, start=1):
            hl: list[HunkLine] = []
            for ln in h:
                if ln.line_type == "\\":
                    if hl:
                        prev = hl[-1]
                        stripped = prev.data[:-2] if prev.data.endswith(b"\r\n") else prev.data.rstrip(b"\n")
                        hl[-1] = HunkLine(prev.tag, stripped, prev.patch_line)
                    continue
                if ln.line_type not in (" ", "-", "+"):
                    continue
                hl.append(HunkLine(ln.line_type, ln.value.encode("utf-8"), ln.diff_line_no or 0))
            first_line = min((x.patch_line for x in hl), default=fline + 2)
            hunks.append(
                Hunk(
                    index=hi,
                    header=f"@@ -{h.source_start},{h.source_length} +{h.target_start},{h.target_length} @@",
                    source_start=h.source_start,
                    source_length=h.source_length,
                    target_start=h.target_start,
                    target_length=h.target_length,
                    lines=hl,
                    patch_line=first_line - 1,
                )
            )
        files.append(FileDiff(path=path, is_new=src is None, is_deleted=dst is None, hunks=hunks, patch_line=fline))
    if not files:
        raise PatchSetError(f"{label}:{start + 1}: the diff changes no file")
    return Patch(
        name=name,
        label=label,
        header=header,
        files=files,
        sha256=sha256 or sha256_bytes(text.encode("utf-8")),
        text=text,
    )


def read_patch(path: Path, label: str) -> Patch:
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PatchSetError(f"{label}: not UTF-8 (byte {e.start})") from None
    return parse_patch(text, Path(path).name, label, sha256_bytes(data))
