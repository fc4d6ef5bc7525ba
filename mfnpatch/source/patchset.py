"""Patch sets: the on-disk model (set.yaml, series, SHA256SUMS, DEP-3 headers) and a pure apply engine.

Layout of one versioned set::

    patches/<name>/<version>/set.yaml      name, version, the commit it applies to, description
    patches/<name>/<version>/series        patch order, quilt style (# comments, optional -p1)
    patches/<name>/<version>/SHA256SUMS    sha256 of every patch (``mfnpatch patches lock`` writes it)
    patches/<name>/<version>/NNNN-*.patch  unified diff (-p1) with a DEP-3 header

A released version never changes: a patch whose bytes differ from SHA256SUMS is refused. The engine
works on in-memory files (path -> bytes, or None for absent) and never touches the disk, so a series
is applied completely in memory before anything is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import unidiff
from pydantic import Field, field_validator

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import UnsafePath, confined, sha256_bytes
from mfnpatch.schema import Strict, load_model

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


# --------------------------------------------------------------------------------------------
# Set manifest


class Evidence(Strict):
    """What a log or checkpoint reveals about a patch (or, without ``patch``, about the whole set)."""

    patch: str | None = None
    when: dict[str, Any] = Field(default_factory=dict, description="config values that make the check apply")
    config: dict[str, Any] | None = Field(default=None, description="Namespace values the log must show")
    symbol_lacks: list[str] | None = Field(default=None, description="nodes absent from the checkpoint symbol")
    python: int | None = Field(default=None, description="the Python major version the log must show")
    unobservable: str | None = Field(default=None, description="why nothing can check it")
    explain: str = ""


class SetManifest(Strict):
    schema_: Literal[1] = Field(alias="schema")
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    version: int = Field(ge=1)
    applies_to: str = Field(pattern=r"^[0-9a-f]{40}$", description="the pinned commit (full SHA)")
    description: str
    after: list[str] = Field(default_factory=list, description="sets that go first when selected together")
    opt_in: bool = False
    evidence: list[Evidence] = Field(default_factory=list)

    @field_validator("description")
    @classmethod
    def _one_paragraph(cls, v: str) -> str:
        return " ".join(v.split())


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


@dataclass
class PatchSet:
    manifest: SetManifest
    directory: Path
    patches: list[Patch]

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def sha256(self) -> str:
        """Identity of the set's content: name, version, commit and every patch's hash, in order."""
        canon = {
            "name": self.name,
            "version": self.version,
            "applies_to": self.manifest.applies_to,
            "patches": [[p.name, p.sha256] for p in self.patches],
        }
        return sha256_bytes(json.dumps(canon, sort_keys=True).encode())

    @property
    def paths(self) -> list[str]:
        seen: dict[str, None] = {}
        for p in self.patches:
            for path in p.paths:
                seen.setdefault(path)
        return list(seen)


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


def parse_patch(text: str, name: str, label: str, sha256: str | None = None) -> Patch:
    """Parse one patch file's text (header + unified diff) into a Patch."""
    lines = _split_text_lines(text)
    start = _diff_start(lines)
    if start is None:
        raise PatchSetError(f"{label}:1: no unified diff found (expected '--- a/...' and '+++ b/...' lines)")
    header = parse_dep3(lines[:start], label)
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
                hl.append(HunkLine(ln.line_type, ln.value.encode("utf-8"), ln.diff_line_no))
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


def _text_lines(path: Path, shown: str) -> list[str]:
    """The lines of a small text file of a set (series, SHA256SUMS): UTF-8, or a clear error naming the byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PatchSetError(
            f"{shown}:{line}: not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})",
            hint="save the file as UTF-8 (it names patch files and their sha256)",
        ) from None


def parse_series(path: Path, label: str) -> list[str]:
    names: list[str] = []
    for i, raw in enumerate(_text_lines(path, f"{label}/series"), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *opts = line.split()
        if opts and opts != ["-p1"]:
            raise PatchSetError(
                f"{label}/series:{i}: unsupported option(s) {' '.join(opts)} for {name}",
                hint="mfnpatch applies every patch with -p1 and no other options",
            )
        if "/" in name or name.startswith("."):
            raise PatchSetError(f"{label}/series:{i}: '{name}' must be a file name in the set directory")
        if name in names:
            raise PatchSetError(f"{label}/series:{i}: '{name}' is listed twice")
        names.append(name)
    if not names:
        raise PatchSetError(f"{label}/series: lists no patches")
    return names


def parse_sums(path: Path, label: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for i, raw in enumerate(_text_lines(path, f"{label}/{SUMS_FILE}"), start=1):
        if not raw.strip():
            continue
        m = re.match(r"^([0-9a-f]{64})\s+\*?(\S+)$", raw.strip())
        if not m:
            raise PatchSetError(f"{label}/{SUMS_FILE}:{i}: expected '<sha256>  <file>', got {raw.strip()!r}")
        sums[m.group(2)] = m.group(1)
    return sums


def sums_text(directory: Path, names: list[str]) -> str:
    return "".join(f"{sha256_bytes((directory / n).read_bytes())}  {n}\n" for n in names)


def load_set(directory: Path, check_sums: bool = True) -> PatchSet:
    """Load and validate one set version directory."""
    directory = Path(directory)
    where = f"{directory.parent.name}/{directory.name}"
    manifest = load_model(directory / SET_FILE, SetManifest)
    label = f"{manifest.name}@{manifest.version}"
    if manifest.name != directory.parent.name or str(manifest.version) != directory.name:
        raise PatchSetError(
            f"{directory / SET_FILE}: declares {label} but lives in {where}/",
            hint=f"move it to patches/{manifest.name}/{manifest.version}/ or fix name/version",
        )
    series_path = directory / SERIES_FILE
    if not series_path.is_file():
        raise PatchSetError(f"{label}: no series file in {directory}")
    names = parse_series(series_path, label)
    on_disk = sorted(p.name for p in directory.glob("*.patch"))
    stray = [n for n in on_disk if n not in names]
    if stray:
        raise PatchSetError(f"{label}: {', '.join(stray)} not listed in series", hint="add it to series or delete it")
    sums = parse_sums(directory / SUMS_FILE, label) if (directory / SUMS_FILE).is_file() else None
    if check_sums and sums is None:
        raise PatchSetError(f"{label}: no {SUMS_FILE}", hint=f"run: mfnpatch patches lock {directory}")
    for ev in manifest.evidence:
        if ev.patch is not None and ev.patch not in names:
            raise PatchSetError(
                f"{directory / SET_FILE}: evidence names {ev.patch}, which is not in the series",
                hint="evidence entries name a patch file of this set, or no patch for the whole set",
            )
    patches: list[Patch] = []
    for n in names:
        p = directory / n
        if not p.is_file():
            raise PatchSetError(f"{label}/series lists {n}, which does not exist in {directory}")
        patch = read_patch(p, f"{label}/{n}")
        if check_sums and sums is not None:
            if n not in sums:
                raise PatchSetError(
                    f"{label}: {n} has no entry in {SUMS_FILE}", hint=f"run: mfnpatch patches lock {directory}"
                )
            if sums[n] != patch.sha256:
                raise PatchSetError(
                    f"{label}/{n}: sha256 {patch.sha256[:12]}… does not match {SUMS_FILE} ({sums[n][:12]}…); "
                    "a released patch-set version must not change",
                    hint=f"copy the set to patches/{manifest.name}/{manifest.version + 1}/, bump 'version', "
                    f"edit there, then run: mfnpatch patches lock patches/{manifest.name}/{manifest.version + 1}",
                )
        applies = patch.header.fields["Applies-To"].split()[0]
        if applies != manifest.applies_to:
            raise PatchSetError(
                f"{label}/{n}:{patch.header.lines['Applies-To']}: Applies-To {applies} differs from "
                f"set.yaml applies_to {manifest.applies_to}",
                hint="a set holds patches for one upstream commit only",
            )
        patches.append(patch)
    return PatchSet(manifest=manifest, directory=directory, patches=patches)


@dataclass
class Catalog:
    """All sets and versions under a patches directory."""

    root: Path
    versions: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def scan(cls, root: Path) -> Catalog:
        cat = cls(root=Path(root))
        if not cat.root.is_dir():
            raise PatchSetError(f"patches directory {root} does not exist")
        for d in sorted(cat.root.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            vs = sorted(
                int(v.name) for v in d.iterdir() if v.is_dir() and v.name.isdigit() and (v / SET_FILE).is_file()
            )
            if vs:
                cat.versions[d.name] = vs
        return cat

    def load(self, name: str, version: int | None = None) -> PatchSet:
        if name not in self.versions:
            known = ", ".join(f"{n} (versions {', '.join(map(str, v))})" for n, v in self.versions.items()) or "none"
            raise PatchSetError(f"unknown patch set '{name}'", hint=f"known sets: {known}; see: mfnpatch patches list")
        if version is None:
            version = self.versions[name][-1]
        if version not in self.versions[name]:
            raise PatchSetError(
                f"patch set {name} has no version {version}",
                hint=f"versions of {name}: {', '.join(map(str, self.versions[name]))}",
            )
        return load_set(self.root / name / str(version))


def parse_selection(spec: str) -> list[tuple[str, int | None]]:
    """'mfn,py3@1' -> [('mfn', None), ('py3', 1)]."""
    out: list[tuple[str, int | None]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"([a-z][a-z0-9_-]*)(?:@(\d+))?", part)
        if not m:
            raise PatchSetError(
                f"--series: cannot read '{part}'", hint="write set names separated by commas, e.g. mfn,py3 or mfn@1,py3"
            )
        name = m.group(1)
        if any(n == name for n, _ in out):
            raise PatchSetError(f"--series: set '{name}' is named twice")
        out.append((name, int(m.group(2)) if m.group(2) else None))
    if not out:
        raise PatchSetError("--series is empty", hint="name at least one set, e.g. --series mfn")
    return out


def order_sets(sets: list[PatchSet]) -> list[PatchSet]:
    """Keep the user's order, except that a set goes after the sets its 'after' names."""
    names = {s.name for s in sets}
    placed: list[PatchSet] = []
    pending = list(sets)
    while pending:
        for s in pending:
            if all(a not in names or any(p.name == a for p in placed) for a in s.manifest.after):
                placed.append(s)
                pending.remove(s)
                break
        else:
            raise PatchSetError("patch sets order each other in a cycle: " + ", ".join(s.label for s in pending))
    return placed


def select_sets(catalog: Catalog, spec: str) -> list[PatchSet]:
    return order_sets([catalog.load(n, v) for n, v in parse_selection(spec)])


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


def _find(lines: list[bytes], old: list[bytes], p0: int, lo: int) -> int | None:
    n, m = len(lines), len(old)
    if m == 0:
        return p0 if lo <= p0 <= n else None
    hi = n - m
    if hi < lo:
        return None
    p0 = min(max(p0, lo), hi)
    for d in range(0, max(p0 - lo, hi - p0) + 1):
        for pos in (p0 + d, p0 - d) if d else (p0,):
            if lo <= pos <= hi and lines[pos : pos + m] == old:
                return pos
    return None


def _strip_eol(b: bytes) -> bytes:
    return b[:-2] if b.endswith(b"\r\n") else b[:-1] if b.endswith(b"\n") else b


def _show(b: bytes) -> str:
    text = b.decode("utf-8", "replace")
    if text.endswith("\r\n"):
        return text[:-2] + "\\r"
    return text[:-1] if text.endswith("\n") else text + "  (no newline at end of file)"


def _best_candidate(lines: list[bytes], old: list[bytes], p0: int) -> int:
    """Position near p0 where most of the expected lines match (for the expected/found display)."""
    n, m = len(lines), len(old)
    if n == 0 or m == 0:
        return min(max(p0, 0), n)
    best, best_score = min(max(p0, 0), max(n - m, 0)), -1
    for pos in range(0, max(n - m, 0) + 1):
        score = sum(1 for i in range(m) if pos + i < n and lines[pos + i] == old[i])
        if score > best_score or (score == best_score and abs(pos - p0) < abs(best - p0)):
            best, best_score = pos, score
    return best


def _comparison(lines: list[bytes], old: list[bytes], p0: int, pos: int) -> list[str]:
    out = [f"expected at line {p0 + 1} (lines the hunk removes or keeps):"]
    for i, exp in enumerate(old):
        got = lines[pos + i] if pos + i < len(lines) else None
        mark = " " if got == exp else "!"
        out.append(f"{mark} {p0 + i + 1:5d} | {_show(exp)}")
    out.append(f"found at line {pos + 1}:")
    for i, exp in enumerate(old):
        got = lines[pos + i] if pos + i < len(lines) else None
        if got is None:
            out.append("!   (end of file)")
            break
        mark = " " if got == exp else "!"
        out.append(f"{mark} {pos + i + 1:5d} | {_show(got)}")
    return out


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


@dataclass
class SeriesResult:
    files: dict[str, bytes | None]
    hunks: list[HunkResult]

    @property
    def offsets(self) -> list[HunkResult]:
        return [h for h in self.hunks if h.offset or h.fuzz]


def apply_series(sets: list[PatchSet], files: dict[str, bytes | None], *, fuzz: int = 0) -> SeriesResult:
    """Apply every patch of every set, in order, to in-memory files. All or nothing."""
    pristine = dict(files)
    cur = dict(files)
    hunks: list[HunkResult] = []
    for s in sets:
        for p in s.patches:
            try:
                cur, res = apply_patch(p, cur, fuzz=fuzz)
            except ApplyFailure as f:
                raise explain(f, p, cur, pristine) from None
            hunks.extend(res)
    return SeriesResult(files=cur, hunks=hunks)


def series_paths(sets: list[PatchSet]) -> list[str]:
    seen: dict[str, None] = {}
    for s in sets:
        for p in s.paths:
            seen.setdefault(p)
    return list(seen)
