"""`mfnpatch patches port SET --to COMMIT`: carry a patch set to a later upstream commit, one patch at a time.

Each patch of the set's newest version is carried across with git's own three-way merge (``git merge-file``):
the pinned file (with the set's earlier patches) is the base, the patched file is ours, and COMMIT's file
(with the earlier patches already carried over) is theirs. Per patch, one status:

- **clean**: it applies to COMMIT's file as it is (same context, same place);
- **moved**: it applies at fuzz 0 but at an offset (regenerated at its new place);
- **merged**: its context changed and the merge is clean (regenerated from the merge);
- **upstream**: COMMIT already contains the change (the merge equals theirs): dropped from the new version;
- **conflict**: the merge conflicts; the conflicting hunks are shown with both sides;
- **resolved**: a conflict the user resolved (``--keep-conflicts DIR``, edit, then ``--continue DIR``).

Success writes version N+1 for COMMIT (regenerated diffs at fuzz 0, DEP-3 headers carried over with
``Applies-To``/``Last-Update`` updated and a ``Ported-From`` line, ``series``, ``SHA256SUMS``, ``set.yaml``),
checked by applying it to COMMIT's files at fuzz 0 before it is moved into place. A conflict writes nothing.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mfnpatch.errors import EXIT_FAILURE, EXIT_OK, MfnError
from mfnpatch.fsutil import UnsafePath, atomic_write, confined, inside, not_an_option
from mfnpatch.schema import SchemaError, load_json
from mfnpatch.source.diff import ApplyFailure, Patch, PatchSetError
from mfnpatch.source.hunks import apply_patch
from mfnpatch.source.partial import set_paths
from mfnpatch.source.patchset import SERIES_FILE, SET_FILE, SUMS_FILE, Catalog, PatchSet, apply_series, load_set
from mfnpatch.source.pin import Cache, Pin, load_pins, manifest_yaml, record_manifest, resolve_pin, resolve_source

Status = Literal["clean", "moved", "merged", "upstream", "conflict", "resolved"]
STATE_DIR = ".mfnpatch-port"  # inside --keep-conflicts DIR: what --continue needs


class PortError(MfnError):
    pass


@dataclass
class ConflictHunk:
    path: str
    line: int  # 1-based line of the conflict marker in the merged file
    ours: str  # the set's side
    theirs: str  # COMMIT's side


@dataclass
class PatchPort:
    patch: str
    status: Status
    detail: str
    files: list[str]
    conflicts: list[ConflictHunk] = field(default_factory=list)
    new_text: str | None = None  # the regenerated patch (not for upstream or conflict)


@dataclass
class PortReport:
    set: str
    from_version: int
    from_commit: str
    to_commit: str
    patches: list[PatchPort] = field(default_factory=list)
    new_version: int | None = None
    written: str | None = None  # the new version's directory, when written
    pin_recorded: str | None = None  # a pin manifest written for COMMIT
    kept: str | None = None  # --keep-conflicts DIR, when conflicts were written there
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not any(p.status == "conflict" for p in self.patches)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILURE

    def to_dict(self) -> dict:
        d = asdict(self)
        for p in d["patches"]:
            p.pop("new_text", None)
        d["ok"] = self.ok
        return d


# --------------------------------------------------------------------------------------------
# git's merge and diff, on in-memory files


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True)


def merge3(ours: bytes, base: bytes, theirs: bytes, labels: tuple[str, str, str]) -> tuple[bytes, int]:
    """``git merge-file``: base's changes to ours carried into theirs; (merged bytes, number of conflicts)."""
    with tempfile.TemporaryDirectory(prefix="mfnpatch-merge-") as tmp:
        t = Path(tmp)
        for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            (t / name).write_bytes(data)
        r = _git(["merge-file", "-p", "-L", labels[0], "-L", labels[1], "-L", labels[2], "ours", "base", "theirs"], t)
        if r.returncode < 0 or r.returncode > 127:
            raise PortError(f"git merge-file failed: {r.stderr.decode(errors='replace').strip()}")
        return r.stdout, r.returncode


def unified_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    """The change old -> new of one file as git writes it (``diff --git``, index line, 3 lines of context)."""
    confined(path, "patch path")
    with tempfile.TemporaryDirectory(prefix="mfnpatch-diff-") as tmp:
        t = Path(tmp)
        args = ["-c", "core.quotepath=off", "diff", "--no-index", "--no-color", "--no-prefix", "-U3", "--"]
        for side, data in (("a", old), ("b", new)):
            if data is not None:
                f = t / side / path
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)
        a = f"a/{path}" if old is not None else "/dev/null"
        b = f"b/{path}" if new is not None else "/dev/null"
        r = _git([*args, a, b], t)
        if r.returncode not in (0, 1):
            raise PortError(f"git diff failed for {path}: {r.stderr.decode(errors='replace').strip()}")
        return r.stdout.decode("utf-8")


def _conflict_hunks(path: str, merged: bytes) -> list[ConflictHunk]:
    out: list[ConflictHunk] = []
    lines = merged.decode("utf-8", "replace").splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if lines[i].startswith("<<<<<<< "):
            start, ours, theirs, side = i + 1, [], [], "ours"
            i += 1
            while i < len(lines) and not lines[i].startswith(">>>>>>> "):
                if lines[i].startswith("||||||| "):
                    side = "base"
                elif lines[i].startswith("======="):
                    side = "theirs"
                elif side == "ours":
                    ours.append(lines[i])
                elif side == "theirs":
                    theirs.append(lines[i])
                i += 1
            out.append(ConflictHunk(path, start, "".join(ours), "".join(theirs)))
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# The port


@dataclass
class _Sources:
    repo: object
    base: Pin
    target: str

    def read(self, sha: str, path: str) -> bytes | None:
        try:
            return self.repo.commit(sha).tree[path].data_stream.read()  # type: ignore[attr-defined]
        except KeyError:
            return None


def _fetch(
    base: Pin, to: str, source: str | None, on_progress: Callable[[str], None] | None, paths: list[str]
) -> tuple[_Sources, Pin | None]:
    """Both commits in the cache, each with the blobs of the directories the set touches (a partial fetch)."""
    cache = Cache()
    url, _ = resolve_source(source, base)
    dirs = set_paths(paths)
    cache.fetch(base, url, on_progress, paths=dirs)  # verified against the pin, as apply does
    target_pin = next((p for p in load_pins() if p.commit == to), None)
    with cache.lock():
        if not cache.has_commit(to):
            cache.fetch_commit(to, url, on_progress, blobs=False)
        # a target without a pin gets one when the port is written, and a pin records every file's sha256: all of
        # its blobs, fetched now (so that --continue needs no network)
        cache.fetch_blobs(to, url, dirs if target_pin is not None else None, on_progress)
        repo = cache.repo()
    return _Sources(repo, base, to), target_pin


def resolve_target(to: str) -> str:
    """COMMIT as a full SHA: a pinned commit's prefix, or the 40 digits (a ref cannot be fetched by name here)."""
    c = to.strip().lower()
    not_an_option(c, "--to")
    if re.fullmatch(r"[0-9a-f]{40}", c):
        return c
    try:
        return resolve_pin(c).commit
    except MfnError:
        raise PortError(
            f"--to {to}: give the full 40-digit SHA of the commit to port to (it is not pinned yet)",
            hint="git rev-parse <ref> prints it, e.g. in your InsightFace clone: git rev-parse 90547bd",
        ) from None


def _labels(ps: PatchSet, patch: Patch, base: str, to: str) -> tuple[str, str, str]:
    return (f"{ps.label} {patch.name}", f"{base[:7]} (pinned, with the set's earlier patches)", f"{to[:7]}")


def _merge_patch(
    ps: PatchSet, patch: Patch, base_files: dict, ours_files: dict, theirs_files: dict, base: str, to: str
) -> tuple[Status, dict, list[ConflictHunk], dict]:
    """Three-way merge of every file the patch touches; returns (status, result files, conflicts, marked files)."""
    result, marked, conflicts = dict(theirs_files), {}, []
    for path in patch.paths:
        b, o, t = base_files.get(path), ours_files.get(path), theirs_files.get(path)
        if o == b:
            continue
        if t is None and b is not None:  # COMMIT deleted a file the patch changes
            conflicts.append(ConflictHunk(path, 0, (o or b"").decode("utf-8", "replace"), "(deleted at the commit)"))
            continue
        if o is None:  # the patch deletes the file
            if t == b:
                result[path] = None
            else:
                conflicts.append(ConflictHunk(path, 0, "(deleted by the patch)", (t or b"").decode("utf-8", "replace")))
            continue
        merged, n = merge3(o, b or b"", t or b"", _labels(ps, patch, base, to))
        if n:
            marked[path] = merged
            conflicts += _conflict_hunks(path, merged)
        else:
            result[path] = merged
    if conflicts:
        return "conflict", result, conflicts, marked
    if all(result.get(p) == theirs_files.get(p) for p in patch.paths):
        return "upstream", result, [], {}
    return "merged", result, [], {}


def _regenerate(patch: Patch, old: dict, new: dict) -> str:
    body = "".join(unified_diff(p, old.get(p), new.get(p)) for p in patch.paths if old.get(p) != new.get(p))
    return body


def port(
    name: str,
    to: str,
    *,
    source: str | None = None,
    patches_root: Path,
    dry_run: bool = False,
    keep_conflicts: Path | None = None,
    resume: Path | None = None,
    today: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> PortReport:
    """Carry the newest version of set ``name`` to commit ``to``; see the module's docstring."""
    catalog = Catalog.scan(patches_root)
    state: dict = {}
    if resume is not None:
        state = _load_state(resume)
        name, to = state["set"], state["to"]
    ps = catalog.load(name)
    if state and state.get("set_sha256") != ps.sha256:
        raise PortError(
            f"{resume}: the port was started from {name}@{state['version']}, and the set has changed since",
            hint=f"start again: mfnpatch patches port {name} --to {to} --keep-conflicts DIR",
        )
    base_pin = resolve_pin(ps.manifest.applies_to)
    target = resolve_target(to)
    if target == base_pin.commit:
        raise PortError(f"{ps.label} is already made for {target[:7]}", hint="name a later commit with --to")
    if keep_conflicts is not None and resume is None:
        keep_conflicts = Path(keep_conflicts)
        if keep_conflicts.exists() and any(keep_conflicts.iterdir()):
            raise PortError(f"--keep-conflicts {keep_conflicts}: exists and is not empty", hint="name a new directory")
    paths = list(dict.fromkeys(p for patch in ps.patches for p in patch.paths))
    src, target_pin = _fetch(base_pin, target, source, on_progress, paths)
    report = PortReport(ps.name, ps.version, base_pin.commit, target, dry_run=dry_run)
    base_files = {p: src.read(base_pin.commit, p) for p in paths}
    theirs_files = {p: src.read(target, p) for p in paths}
    resolved: dict[str, dict[str, str]] = state.get("resolved", {})
    work_dir = Path(resume) if resume is not None else keep_conflicts
    unresolved: list[str] = []
    for patch in ps.patches:
        ours_files, _ = apply_patch(patch, base_files)
        conflicts: list[ConflictHunk] = []
        marked: dict[str, bytes] = {}
        if patch.name in resolved:
            assert work_dir is not None
            result = dict(theirs_files)
            for path, rel in resolved[patch.name].items():
                states = Path(work_dir).absolute() / STATE_DIR
                result[confined(path, "patch path")] = _in_work(
                    states, rel, "resolved file", states / "state.json"
                ).read_bytes()
            status: Status = "resolved"
            detail = "a conflict resolved by hand (--continue)"
        else:
            try:
                result, hunks = apply_patch(patch, theirs_files)
                moved = [h for h in hunks if h.offset]
                status = "moved" if moved else "clean"
                detail = (
                    "applies as it is" if not moved
                    else "applies at an offset: " + ", ".join(f"{h.path} hunk #{h.hunk} {h.offset:+d}" for h in moved)
                )  # fmt: skip
            except ApplyFailure:
                status, result, conflicts, marked = _merge_patch(
                    ps, patch, base_files, ours_files, theirs_files, base_pin.commit, target
                )
                detail = {
                    "merged": "context changed at the commit; git's three-way merge is clean",
                    "upstream": f"{target[:7]} already contains the change: dropped from the new version",
                    "conflict": f"the merge conflicts in {len(conflicts)} place(s)",
                }[status]
        if unresolved:
            detail += f" (judged without {', '.join(unresolved)}, which conflicts)"
        entry = PatchPort(patch.name, status, detail, patch.paths, conflicts)
        report.patches.append(entry)
        if status == "conflict":
            if not unresolved and (keep_conflicts is not None or resume is not None):
                assert work_dir is not None  # the first conflict is kept; --continue carries on from it
                _keep(work_dir, ps, target, patch, marked, theirs_files, resolved, report)
            unresolved.append(patch.name)  # the later patches are still judged (and named), without this one
            base_files = ours_files
            continue
        if status != "upstream":
            entry.new_text = _regenerate(patch, theirs_files, result)
        base_files, theirs_files = ours_files, result
    if not report.ok or dry_run:
        return report
    report.new_version = catalog.versions[ps.name][-1] + 1
    if target_pin is None:
        report.pin_recorded = _record_target_pin(src, base_pin, target)
    report.written = str(_write_version(ps, report, target, patches_root, today))
    if resume is not None:
        shutil.rmtree(Path(resume) / STATE_DIR, ignore_errors=True)
    return report


def _keep(work: Path, ps: PatchSet, target: str, patch: Patch, marked: dict, theirs: dict, resolved: dict,
          report: PortReport) -> None:  # fmt: skip
    """Write the conflicting files with markers into DIR, and what --continue needs into DIR/.mfnpatch-port."""
    work.mkdir(parents=True, exist_ok=True)
    for path, data in marked.items():
        atomic_write(work / confined(path, "patch path"), data)
    state = {
        "set": ps.name,
        "version": ps.version,
        "set_sha256": ps.sha256,
        "to": target,
        "conflict": patch.name,
        "files": sorted(marked),
        "resolved": resolved,
    }
    atomic_write(work / STATE_DIR / "state.json", json.dumps(state, indent=2) + "\n")
    report.kept = str(work)


class _PortState(BaseModel):
    """What --continue reads back from DIR/.mfnpatch-port/state.json: checked whole before anything is used."""

    model_config = ConfigDict(extra="forbid", strict=True)
    set: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: int = Field(ge=1)
    set_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    to: str = Field(pattern=r"^[0-9a-f]{40}$")
    conflict: str = Field(min_length=1, max_length=255)
    files: list[str] = Field(max_length=10_000)
    resolved: dict[str, dict[str, str]] = Field(default_factory=dict)


def _in_work(work: Path, rel: str, what: str, state: Path) -> Path:
    """``work/rel`` for a path named by the state: relative, no '..', and not through a link out of ``work``."""
    try:
        return inside(work, work / confined(rel, what), what)
    except UnsafePath as e:
        hint = "the state was edited or is damaged: start the port again with --keep-conflicts into a new DIR"
        raise PortError(f"{state}: {e.message}", hint=hint) from None


def _load_state(work: Path) -> dict:
    work = Path(work).absolute()
    p = work / STATE_DIR / "state.json"
    if not p.is_file():
        raise PortError(f"--continue {work}: no port in progress there ({p} is missing)",
                        hint="start one with: mfnpatch patches port SET --to COMMIT --keep-conflicts DIR")  # fmt: skip
    again = "start the port again with --keep-conflicts into a new DIR"
    try:
        inside(work, p, "the port's state")  # DIR/.mfnpatch-port (or its state.json) a link out of DIR: refused
    except UnsafePath as e:
        raise PortError(e.message, hint=f"a link was planted in {work}: {again}") from None
    try:
        raw = load_json(p, limit=1 << 20)
        state = _PortState.model_validate(raw)
    except SchemaError as e:
        raise PortError(f"{e.message}: the port's state is damaged", hint=again) from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(the whole file)"
        raise PortError(f"{p}: {where}: {first['msg']}: the port's state is damaged", hint=again) from None
    for path in state.files:
        _in_work(work, path, "conflicting file", p)
    for patch, files in state.resolved.items():
        for path, rel in files.items():
            _in_work(work, path, "resolved path", p)
            _in_work(work / STATE_DIR, rel, "resolved file", p)
            if rel != f"resolved/{patch}/{confined(path, 'resolved path')}":
                raise PortError(f"{p}: resolved file {rel!r} is not where --continue keeps {patch}'s {path}",
                                hint=again)  # fmt: skip
    name = state.conflict
    saved: dict[str, str] = {}
    for path in state.files:
        f = _in_work(work, path, "conflicting file", p)
        data = f.read_bytes() if f.is_file() else b""
        text = data.decode("utf-8", "replace")
        left = [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(("<<<<<<< ", "=======", ">>>>>>> "))]
        if left:
            raise PortError(
                f"{f}:{left[0]}: conflict markers are still there; resolve every conflict of {name} first",
                hint=f"edit {f}, remove the <<<<<<< ======= >>>>>>> lines, then run --continue {work} again",
            )
        rel = f"resolved/{name}/{confined(path, 'conflicting file')}"
        atomic_write(_in_work(work / STATE_DIR, rel, "resolved file", p), data)
        saved[path] = rel
    out = state.model_dump()
    out["resolved"][name] = saved
    atomic_write(p, json.dumps(out, indent=2) + "\n")
    return out


def _record_target_pin(src: _Sources, base: Pin, target: str) -> str:
    m = record_manifest(src.repo, target, base.manifest.name, base.manifest.upstream)  # type: ignore[arg-type]
    path = base.path.parent / f"{target[:7]}.yaml"
    if path.exists():
        raise PortError(f"{path} exists and pins another commit", hint="move it aside, then port again")
    atomic_write(path, manifest_yaml(m))
    return str(path)


def _header(patch: Patch, ps: PatchSet, target: str, status: Status, today: str) -> str:
    """The patch's DEP-3 header paragraph with Applies-To and Last-Update for the new commit, and where from."""
    text = patch.text
    end = text.find("\ndiff --git ")
    head = text[: end + 1] if end >= 0 else text
    lines = head.rstrip("\n").split("\n")
    out: list[str] = []
    for ln in lines:
        if ln.startswith("Applies-To:"):
            out.append(f"Applies-To: {target}")
            out.append(
                f"Ported-From: {ps.label} {patch.name} at {ps.manifest.applies_to} ({status}, mfnpatch patches port)"
            )
        elif ln.startswith("Last-Update:"):
            out.append(f"Last-Update: {today}")
        elif ln.startswith("Ported-From:"):
            continue
        else:
            out.append(ln)
    return "\n".join(out).rstrip("\n") + "\n\n"


def _write_version(ps: PatchSet, report: PortReport, target: str, root: Path, today: str | None) -> Path:
    today = today or _dt.date.today().isoformat()
    version = report.new_version
    assert version is not None
    final = Path(root) / ps.name / str(version)
    if final.exists():
        raise PortError(f"{final} exists", hint="a released version never changes; remove it if it is a failed port")
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.port-", dir=final.parent))
    try:
        kept = [p for p in report.patches if p.status != "upstream"]
        names = [p.patch for p in kept]
        by_name = {p.name: p for p in ps.patches}
        for p in kept:
            assert p.new_text is not None
            atomic_write(tmp / p.patch, _header(by_name[p.patch], ps, target, p.status, today) + p.new_text)
        atomic_write(tmp / SERIES_FILE, "".join(f"{n}\n" for n in names))
        atomic_write(tmp / SET_FILE, _set_yaml(ps, version, target, names, report, today))
        from mfnpatch.source.patchset import sums_text

        atomic_write(tmp / SUMS_FILE, sums_text(tmp, names))
        _check_new_version(tmp, ps, version, target, report)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _set_yaml(ps: PatchSet, version: int, target: str, names: list[str], report: PortReport, today: str) -> str:
    """set.yaml of the new version: the old one with version and applies_to changed (its comments kept); when a
    patch was dropped (already upstream), its evidence entries go too."""
    text = (ps.directory / SET_FILE).read_text()
    dropped = [p.patch for p in report.patches if p.status == "upstream"]
    head = (f"# {ps.name}@{version}: {ps.label} ported to {target} by mfnpatch patches port on {today}"
            + (f"; dropped (already upstream): {', '.join(dropped)}" if dropped else "") + ".\n")  # fmt: skip
    if not dropped:
        new, n1 = re.subn(r"(?m)^version: *\d+ *$", f"version: {version}", text)
        new, n2 = re.subn(r"(?m)^applies_to: *'?[0-9a-f]{40}'? *$", f"applies_to: '{target}'", new)
        if n1 == n2 == 1:
            return head + new
    manifest = yaml.safe_load(text)
    manifest["version"] = version
    manifest["applies_to"] = target
    manifest["evidence"] = [e for e in manifest.get("evidence") or [] if e.get("patch") in (None, *names)]
    if not manifest["evidence"]:
        del manifest["evidence"]
    return head + yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=110)


def _check_new_version(tmp: Path, ps: PatchSet, version: int, target: str, report: PortReport) -> None:
    """The written version loads and applies to COMMIT's files at fuzz 0 without an offset, before it is kept."""
    staged = tmp.parent.parent / f".{ps.name}.port-check-{os.getpid()}" / ps.name / str(version)
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(tmp, staged)
        new = load_set(staged)
        cache = Cache()
        repo = cache.repo()
        files = {}
        for p in new.paths:
            try:
                files[p] = repo.commit(target).tree[p].data_stream.read()
            except KeyError:
                files[p] = None
        res = apply_series([new], files, fuzz=0)
        if res.offsets:
            raise PortError(f"the ported {new.label} applies to {target[:7]} only with offsets: an internal error")
    except PatchSetError as e:
        raise PortError(f"the ported set does not load: {e.message}") from None
    finally:
        shutil.rmtree(staged.parent.parent, ignore_errors=True)
