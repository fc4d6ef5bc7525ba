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

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import sha256_bytes
from mfnpatch.schema import Strict, load_model
from mfnpatch.source.diff import ApplyFailure, Patch, PatchSetError, read_patch
from mfnpatch.source.hunks import HunkResult, apply_patch, explain

SET_FILE = "set.yaml"
SERIES_FILE = "series"
SUMS_FILE = "SHA256SUMS"
DEP3_REQUIRED = ("Description", "Origin", "Applies-To", "Last-Update")
MAX_SUGGESTED_FUZZ = 3


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

    def listing(self) -> list[tuple[str, int, PatchSet | None, str | None]]:
        """Every version of every set: (name, version, the set or None, why it cannot be read). One broken set
        does not hide the others."""
        out: list[tuple[str, int, PatchSet | None, str | None]] = []
        for name, versions in self.versions.items():
            for v in versions:
                try:
                    out.append((name, v, self.load(name, v), None))
                except MfnError as e:
                    out.append((name, v, None, e.message))
        return out

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

    def applies_to(self, name: str, version: int) -> str:
        """The commit a set version is made for (read from its set.yaml alone)."""
        return load_model(self.root / name / str(version) / SET_FILE, SetManifest).applies_to

    def load_for(self, name: str, commit: str) -> PatchSet:
        """The newest version of ``name`` made for ``commit`` (versions are carried to later commits by
        `mfnpatch patches port`)."""
        self.load(name)  # an unknown set is the usual error
        made = {v: self.applies_to(name, v) for v in self.versions[name]}
        fitting = [v for v, c in made.items() if c == commit]
        if not fitting:
            have = ", ".join(f"{v} for {c[:7]}" for v, c in made.items())
            raise PatchSetError(
                f"patch set {name} has no version made for {commit[:7]} (versions: {have})",
                hint=f"carry it there: mfnpatch patches port {name} --to {commit}",
            )
        return self.load(name, fitting[-1])


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


def select_sets(catalog: Catalog, spec: str, commit: str | None = None) -> list[PatchSet]:
    """The sets ``spec`` names; a set named without @version is the newest version made for ``commit`` (when
    given), else its newest version."""
    chosen = [catalog.load(n, v) if v is not None or commit is None else catalog.load_for(n, commit)
              for n, v in parse_selection(spec)]  # fmt: skip
    return order_sets(chosen)


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
