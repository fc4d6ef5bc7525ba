"""Apply, unapply, status and diff of a patched tree.

Apply computes the target content of every touched file in memory from the *pinned* blobs, then writes
all files and the state in one journaled write phase (``tree.write_all``). So the whole series applies,
or the tree is left byte for byte as it was. Anything that differs from the state is drift: changed
outside mfnpatch, refused unless --force (which saves a copy first).
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mfnpatch import __version__
from mfnpatch.errors import EXIT_FAILURE, EXIT_NOTHING_TO_DO, EXIT_OK, MfnError
from mfnpatch.fsutil import (
    atomic_write,
    sha256_bytes,
    sha256_file,
)
from mfnpatch.source.diff import ApplyFailure
from mfnpatch.source.hunks import HunkResult, apply_patch
from mfnpatch.source.patchset import PatchSet, apply_series, series_paths
from mfnpatch.source.pin import (
    STATE_DIRNAME,
    Pin,
    PinError,
)
from mfnpatch.source.tree import (
    AppliedHunk,
    AppliedPatch,
    AppliedSet,
    FileState,
    PinRef,
    Tree,
    TreeState,
    blob_id,
    now,
    write_all,
)


class DriftError(MfnError):
    pass


# --------------------------------------------------------------------------------------------
# Apply


ApplyAction = Literal["applied", "switched", "nothing", "adopted", "checked"]
FileCondition = Literal["patched", "pinned", "drifted", "missing", "created", "deleted"]


@dataclass
class ApplyOutcome:
    action: ApplyAction
    tree: Path
    pin: Pin
    sets: list[str]
    previous: list[str]
    changed: list[str]
    hunks: list[HunkResult]
    saved: Path | None = None
    fuzz: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def moved(self) -> list[HunkResult]:
        return [h for h in self.hunks if h.offset or h.fuzz]

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "tree": str(self.tree),
            "pin": {"commit": self.pin.commit, "tree": self.pin.manifest.tree},
            "sets": self.sets,
            "previous": self.previous,
            "changed": self.changed,
            "fuzz": self.fuzz,
            "moved_hunks": [h.__dict__ for h in self.moved],
            "saved": str(self.saved) if self.saved else None,
        }


def _state_for(tree: Tree, sets: list[PatchSet], result_hunks, files_after, pristine, fuzz, source) -> TreeState:
    by_patch: dict[str, list[HunkResult]] = {}
    for h in result_hunks:
        by_patch.setdefault(h.patch, []).append(h)
    return TreeState(
        schema=1,
        tool=f"mfnpatch {__version__}",
        pin=PinRef(
            commit=tree.pin.commit,
            tree=tree.pin.manifest.tree,
            manifest=tree.pin.path.name,
            manifest_sha256=sha256_file(tree.pin.path),
        ),
        source=source,
        applied_at=now(),
        fuzz=fuzz,
        sets=[AppliedSet(name=s.name, version=s.version, sha256=s.sha256) for s in sets],
        patches=[
            AppliedPatch(
                set=s.label,
                name=p.name,
                sha256=p.sha256,
                hunks=[
                    AppliedHunk(
                        path=h.path,
                        hunk=h.hunk,
                        expected_line=h.expected_line,
                        applied_line=h.applied_line,
                        offset=h.offset,
                        fuzz=h.fuzz,
                    )
                    for h in by_patch.get(p.label, [])
                ],
            )
            for s in sets
            for p in s.patches
        ],
        files={
            path: FileState(
                pinned_blob=blob_id(pristine[path]),
                blob=blob_id(files_after[path]),
                sha256=None if files_after[path] is None else sha256_bytes(files_after[path]),
            )
            for path in files_after
        },
    )


def _drift(tree: Tree, state: TreeState | None, paths: list[str], current: dict[str, bytes | None]) -> list[str]:
    """Paths whose content is not what mfnpatch last left there (or the pin, when nothing is applied)."""
    out = []
    for p in paths:
        if state is not None and p in state.files:
            expected = state.files[p].blob
        else:
            entry = tree.pin.manifest.files.get(p)
            expected = entry.blob if entry else None
        if blob_id(current[p]) != expected:
            out.append(p)
    return out


def _describe_drift(tree: Tree, sets: list[PatchSet], state, drifted, current, pristine) -> list[str]:
    details = []
    for p in drifted:
        cur = current[p]
        if cur is None:
            details.append(f"{p}: deleted")
            continue
        if pristine.get(p) is None and (state is None or p not in state.files):
            details.append(f"{p}: exists, but the pin has no such file")
            continue
        present = []
        for s in sets:
            for patch in s.patches:
                if p not in patch.paths:
                    continue
                files = {q: current.get(q, pristine.get(q)) for q in patch.paths}
                try:
                    apply_patch(patch, files, reverse=True)
                    present.append(patch.label)
                except ApplyFailure:
                    pass
        if present and state is None:
            details.append(f"{p}: already contains the changes of {', '.join(present)} (edited by hand?)")
        else:
            details.append(f"{p}: modified outside mfnpatch")
    return details


def _save_copies(tree: Tree, paths: list[str], current: dict[str, bytes | None]) -> Path:
    dest = tree.state_dir / "saved" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(dest.name.split(".")[0] + f".{n}")
    for p in paths:
        data = current[p]
        if data is not None:
            atomic_write(dest / p, data)
    return dest


def apply(
    tree: Tree,
    sets: list[PatchSet],
    *,
    fuzz: int = 0,
    force: bool = False,
    check: bool = False,
    source: str | None = None,
) -> ApplyOutcome:
    for s in sets:
        if s.manifest.applies_to != tree.pin.commit:
            raise PinError(
                f"patch set {s.label} is made for {s.manifest.applies_to[:7]}, but the tree is at {tree.pin.short}",
                hint="choose sets made for this pin (mfnpatch patches list)",
            )
    state = tree.load_state()
    paths = list(dict.fromkeys([*series_paths(sets), *(state.files if state else {})]))
    current = {p: tree.read(p) for p in paths}
    pristine = {p: tree.pristine(p) for p in paths}
    result = apply_series(sets, pristine, fuzz=fuzz)
    target = {p: result.files.get(p, pristine[p]) for p in paths}
    labels = [s.label for s in sets]
    previous = state.labels() if state else []
    drifted = _drift(tree, state, paths, current)

    def outcome(action: ApplyAction, changed: list[str], **extra) -> ApplyOutcome:
        return ApplyOutcome(action, tree.root, tree.pin, labels, previous, changed, result.hunks, fuzz=fuzz, **extra)

    if drifted and not force:
        if state is None and all(current[p] == target[p] for p in paths):
            if not check:
                new_state = _state_for(tree, sets, result.hunks, target, pristine, fuzz, source)
                write_all(tree, {}, current, new_state)
            return outcome(
                "adopted",
                [],
                notes=["the tree already holds exactly these changes (made by hand?); recorded them as applied"],
            )
        raise DriftError(
            f"{len(drifted)} file(s) in {tree.root} changed outside mfnpatch; refusing to overwrite them",
            details=_describe_drift(tree, sets, state, drifted, current, pristine),
            hint="keep your edits elsewhere, or rerun with --force: the changed files are saved under "
            f"{STATE_DIRNAME}/saved/<time>/ and reset to the pin before the patches apply",
        )

    same_sets = state is not None and [(s.name, s.version, s.sha256) for s in state.sets] == [
        (s.name, s.version, s.sha256) for s in sets
    ]
    changes = {p: target[p] for p in paths if current[p] != target[p]}
    if same_sets and not changes and state is not None and state.fuzz == fuzz:
        return outcome("nothing", [])
    if check:
        return outcome("checked", sorted(changes))
    saved = _save_copies(tree, drifted, current) if drifted else None
    new_state = _state_for(tree, sets, result.hunks, target, pristine, fuzz, source)
    write_all(tree, changes, current, new_state)
    return outcome("switched" if state is not None else "applied", sorted(changes), saved=saved)


# --------------------------------------------------------------------------------------------
# Unapply


@dataclass
class UnapplyOutcome:
    action: Literal["unapplied", "nothing"]
    tree: Path
    pin: Pin
    previous: list[str]
    restored: list[str]
    saved: Path | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_NOTHING_TO_DO if self.action == "nothing" else EXIT_OK

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "tree": str(self.tree),
            "removed": self.previous,
            "restored": self.restored,
            "saved": str(self.saved) if self.saved else None,
        }


def unapply(tree: Tree, *, force: bool = False) -> UnapplyOutcome:
    state = tree.load_state()
    if state is None:
        return UnapplyOutcome("nothing", tree.root, tree.pin, [], [])
    paths = list(state.files)
    current = {p: tree.read(p) for p in paths}
    pristine = {p: tree.pristine(p) for p in paths}
    drifted = _drift(tree, state, paths, current)
    if drifted and not force:
        raise DriftError(
            f"{len(drifted)} patched file(s) changed since mfnpatch applied the patches; refusing to discard the edits",
            details=[f"{p}: modified outside mfnpatch" for p in drifted],
            hint="rerun with --force to save them under .mfnpatch/saved/<time>/ and restore the pin",
        )
    saved = _save_copies(tree, drifted, current) if drifted else None
    changes = {p: pristine[p] for p in paths if current[p] != pristine[p]}
    write_all(tree, changes, current, None)
    for p in paths:
        if blob_id(tree.read(p)) != blob_id(pristine[p]):
            raise MfnError(f"{p} does not match the pin after unapply", hint="run: mfnpatch status")
    return UnapplyOutcome("unapplied", tree.root, tree.pin, state.labels(), sorted(changes), saved)


# --------------------------------------------------------------------------------------------
# Status and diff


@dataclass
class FileStatus:
    path: str
    state: FileCondition


@dataclass
class Status:
    tree: Path
    pin: Pin
    state: TreeState | None
    files: list[FileStatus]
    other_changes: list[str]
    paths: list[str] | None = None  # the directories the tree materialises (None: every file)

    @property
    def drifted(self) -> list[str]:
        return [f.path for f in self.files if f.state in ("drifted", "missing")]

    @property
    def clean(self) -> bool:
        return not self.drifted

    @property
    def exit_code(self) -> int:
        """0, or 1 when files changed outside mfnpatch."""
        return EXIT_OK if self.clean else EXIT_FAILURE

    def to_dict(self) -> dict:
        return {
            "tree": str(self.tree),
            "pin": {"commit": self.pin.commit, "date": self.pin.manifest.date, "subject": self.pin.manifest.subject},
            "applied": self.state is not None,
            "sets": self.state.labels() if self.state else [],
            "fuzz": self.state.fuzz if self.state else 0,
            "applied_at": self.state.applied_at if self.state else None,
            "patches": [p.model_dump() for p in self.state.patches] if self.state else [],
            "files": [{"path": f.path, "state": f.state} for f in self.files],
            "drift": self.drifted,
            "other_changes": self.other_changes,
            "clean": self.clean,
            "paths": self.paths,
        }


def status(tree: Tree) -> Status:
    state = tree.load_state()
    files: list[FileStatus] = []
    if state is not None:
        for p, fs in state.files.items():
            cur = tree.read(p)
            kind: FileCondition
            if blob_id(cur) == fs.blob:
                kind = (
                    "created"
                    if fs.pinned_blob is None
                    else "deleted"
                    if fs.blob is None
                    else ("pinned" if fs.blob == fs.pinned_blob else "patched")
                )
            else:
                kind = "missing" if cur is None else "drifted"
            files.append(FileStatus(p, kind))
    exclude = set(state.files) if state else set()
    return Status(tree.root, tree.pin, state, files, tree.other_changes(exclude), tree.paths)


def diff(tree: Tree) -> str:
    """Unified diff, pin -> current, of every file the applied patches touch."""
    state = tree.load_state()
    if state is None:
        return ""
    out: list[str] = []
    for p in state.files:
        old = tree.pristine(p)
        new = tree.read(p)
        if old == new:
            continue
        a = (old or b"").decode("utf-8", "replace").splitlines(keepends=True)
        b = (new or b"").decode("utf-8", "replace").splitlines(keepends=True)
        out.append(f"diff --git a/{p} b/{p}\n")
        for line in difflib.unified_diff(
            a, b, "/dev/null" if old is None else f"a/{p}", "/dev/null" if new is None else f"b/{p}"
        ):
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)
