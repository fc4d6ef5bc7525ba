"""A patched tree on disk: its state file, its lock, and the journal that makes every write phase all or
nothing, even across kill -9.

The state lives in ``<tree>/.mfnpatch/state.json`` (excluded from git): the pin, the sets and versions
applied with their hashes, every patch with where each hunk landed, and each touched file's pinned and
current blob ids. Every path in it is confined to the tree. A write phase (``write_all``) first writes a
journal with a backup of every file it will change; any error or signal rolls it back at once, and a
process killed outright leaves the journal for the next command's ``recover``.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import git
from pydantic import AfterValidator, Field

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import (
    UnsafePath,
    atomic_write,
    atomic_write_json,
    confined,
    git_blob_id,
    locked,
    mkstemp_beside,
)
from mfnpatch.schema import Strict, load_json, validate
from mfnpatch.source.diff import ApplyFailure
from mfnpatch.source.partial import holds, normalise, sparse_paths
from mfnpatch.source.pin import (
    STATE_DIRNAME,
    Cache,
    CorruptCache,
    FetchResult,
    Pin,
    PinError,
    create_tree,
    is_empty_dir,
    open_tree,
    pristine_blob,
    resolve_pin,
    resolve_source,
    set_sparse,
    verify_files,
)

STATE_FILE = "state.json"
TMP_TAG = "mfnpatch-new"  # suffix of the temporary file beside each file being written


# --------------------------------------------------------------------------------------------
# State model


class PinRef(Strict):
    commit: str
    tree: str
    manifest: str
    manifest_sha256: str


class AppliedSet(Strict):
    name: str
    version: int
    sha256: str


def _tree_path(v: str) -> str:
    """A path inside the tree, as state.json names it (a hand-edited state cannot reach outside)."""
    try:
        return confined(v, "path")
    except UnsafePath as e:
        raise ValueError(e.message) from None


TreePath = Annotated[str, AfterValidator(_tree_path)]


class AppliedHunk(Strict):
    path: TreePath
    hunk: int
    expected_line: int
    applied_line: int
    offset: int
    fuzz: int


class AppliedPatch(Strict):
    set: str
    name: str
    sha256: str
    hunks: list[AppliedHunk]


class FileState(Strict):
    pinned_blob: str | None  # None: the pin has no such file (a patch created it)
    blob: str | None  # after the patches; None: a patch deleted it
    sha256: str | None


class TreeState(Strict):
    schema_: Literal[1] = Field(alias="schema", default=1)
    tool: str
    pin: PinRef
    source: str | None = None
    applied_at: str
    fuzz: int = 0
    sets: list[AppliedSet]
    patches: list[AppliedPatch]
    files: dict[TreePath, FileState]

    def labels(self) -> list[str]:
        return [f"{s.name}@{s.version}" for s in self.sets]


# --------------------------------------------------------------------------------------------
# The tree


@dataclass
class Tree:
    root: Path
    repo: git.Repo
    pin: Pin
    recovered: str | None = None  # what `recover` did when the tree was opened (an interrupted write phase)

    @property
    def paths(self) -> list[str] | None:
        """The directories the tree materialises (a sparse checkout), or None when it holds every file."""
        return sparse_paths(self.repo)

    @property
    def state_dir(self) -> Path:
        """``<tree>/.mfnpatch``: a real directory of the tree, never a symlink to elsewhere."""
        d = self.root / STATE_DIRNAME
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise UnsafePath(
                f"{d} is {'a symlink' if d.is_symlink() else 'not a directory'}: mfnpatch keeps its state in a real "
                "directory of the tree and does not write through links",
                hint=f"remove it (rm {d}) and apply again; the tree's files are checked against the pin",
            )
        return d

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def load_state(self) -> TreeState | None:
        if not self.state_path.is_file():
            return None
        try:
            data = load_json(self.state_path)
        except MfnError as e:
            raise MfnError(
                f"{self.state_path}: unreadable state ({e})",
                hint="restore the pinned files with: git -C <tree> checkout -- . && rm -r <tree>/.mfnpatch",
            ) from None
        state = validate(TreeState, data, self.state_path)
        if state.pin.commit != self.pin.commit:
            raise MfnError(f"{self.state_path} records pin {state.pin.commit[:7]}, but the tree is at {self.pin.short}")
        return state

    def safe_path(self, rel: str) -> Path:
        """The on-disk path of ``rel``; refuse a path that leaves the tree or names .git/ or .mfnpatch/, and
        any component that is a symlink (no writes through links)."""
        try:
            confined(rel, "path")
        except UnsafePath as e:
            raise ApplyFailure(e.message, hint=e.hint, kind="unsafe-path", path=rel) from None
        cur = self.root
        parts = rel.split("/")
        for i, part in enumerate(parts):
            cur = cur / part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                break
            if stat.S_ISLNK(st.st_mode):
                shown = "/".join(parts[: i + 1])
                via = "" if shown == rel else f"{rel} goes through a symlink: "
                raise ApplyFailure(
                    f"refused: {via}{shown} is a symlink; mfnpatch does not write through symlinks",
                    hint=f"replace the link with the real {'file' if i == len(parts) - 1 else 'directory'}, "
                    "or use a fresh tree (another --dest)",
                    kind="unsafe-path",
                    path=rel,
                )
            problem = under_a_file(parts, i, stat.S_ISDIR(st.st_mode))
            if problem:
                raise ApplyFailure(problem, hint="a patch set changes files; it cannot put a file where one is, or "
                                   "a directory where a file is", kind="unsafe-path", path=rel)  # fmt: skip
        return self.root / rel

    def read(self, rel: str) -> bytes | None:
        p = self.safe_path(rel)
        try:
            return p.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise MfnError(f"{rel} is a directory in the tree, a file is expected") from None

    def pristine(self, rel: str) -> bytes | None:
        return pristine_blob(self.repo, self.pin, rel)

    def other_changes(self, exclude: set[str]) -> list[str]:
        """Files git sees as changed that mfnpatch did not touch (informational)."""
        out = []
        for line in self.repo.git.status("--porcelain", "--untracked-files=all").splitlines():
            path = line[3:]
            if " -> " in path:
                path = path.split(" -> ", 1)[1]
            if path.startswith(STATE_DIRNAME + "/") or path in exclude:
                continue
            out.append(f"{line[:2].strip()} {path}")
        return out


def blob_id(data: bytes | None) -> str | None:
    return None if data is None else git_blob_id(data)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------------------------
# Getting a tree


def under_a_file(parts: list[str], i: int, is_dir: bool) -> str | None:
    """Why ``parts`` cannot be a file when its component ``i`` exists and is (or is not) a directory."""
    shown = "/".join(parts[: i + 1])
    if i < len(parts) - 1 and not is_dir:
        return f"{'/'.join(parts)} cannot be written: {shown} is a file, not a directory"
    if i == len(parts) - 1 and is_dir:
        return f"{shown} is a directory in the tree, a file is expected"
    return None


def tree_lock(dest: Path, on_wait=None) -> locked:
    """The lock every command that creates, changes or reads a tree holds: ``.<name>.mfnpatch-lock`` beside
    it (so a tree being created is covered too). A second command waits for the first, saying so."""
    dest = real_dest(dest)  # one lock per tree, however it is named (a symlink to it takes the same lock)
    return locked(dest.parent / f".{dest.name}.mfnpatch-lock", f"the tree {dest}", on_wait=on_wait)


def real_dest(dest: Path) -> Path:
    """``--dest`` with every symlink on the way resolved: the tree itself, whatever path names it."""
    return Path(dest).resolve()


def open_existing(dest: Path) -> Tree:
    """An existing tree (under its lock): opened, verified, and rolled back if a write phase was interrupted."""
    dest = Path(dest)
    if not dest.exists():
        raise MfnError(
            f"{dest}: no such tree", hint="create one with: mfnpatch apply --commit 4bc8132 --dest " + str(dest)
        )
    dest = real_dest(dest)
    repo, pin = open_tree(dest)
    tree = Tree(dest, repo, pin)
    tree.recovered = recover(tree)
    return tree


@dataclass
class Prepared:
    tree: Tree
    created: bool
    fetch: FetchResult | None
    source: str | None

    def fetch_dict(self) -> dict | None:
        f = self.fetch
        if f is None:
            return None
        return {"url": f.url, "from_cache": f.from_cache, "seconds": round(f.seconds, 3), "note": f.note,
                "partial": f.partial, "paths": f.paths, "blobs_fetched": f.blobs_fetched}  # fmt: skip


def prepare_tree(
    commit: str,
    dest: Path,
    source: str | None = None,
    cache: Cache | None = None,
    pins: list[Pin] | None = None,
    on_progress=None,
    paths: list[str] | None = None,
    full: bool = True,
) -> Prepared:
    """Open ``dest`` if it is a checkout of the pin; otherwise fetch the commit and create it. With ``full=False``
    only the directories ``paths`` are materialised (partial clone, sparse checkout); an existing sparse tree is
    widened to them, fetching only the blobs it lacks; ``full`` makes a sparse tree whole."""
    pin = resolve_pin(commit, pins)
    dest = real_dest(dest)
    want = None if full else normalise(paths or [])
    if dest.exists() and not is_empty_dir(dest):
        repo, tpin = open_tree(dest, pins)
        if tpin.commit != pin.commit:
            raise PinError(
                f"{dest} holds InsightFace at {tpin.short}, not at {pin.short} (the commit asked for)",
                hint=f"give {pin.short} its own tree: --dest {pin.manifest.dest} (its default) or another new "
                f"directory; {dest} stays a tree of {tpin.short}",
            )
        tree = Tree(dest, repo, pin)
        tree.recovered = recover(tree)
        fetched = widen(tree, want, source, cache, on_progress)
        return Prepared(tree, False, fetched, source if fetched else None)
    if dest.exists() and not dest.is_dir():
        raise PinError(f"--dest {dest} is a file", hint="choose a directory path")
    cache = cache or Cache()
    url, _origin = resolve_source(source, pin)
    fetched = cache.fetch(pin, url, on_progress, paths=want)
    try:
        create_tree(pin, cache, dest, want)
    except CorruptCache as e:  # an object of the cache changed under its id: set it aside, fetch again, once
        with cache.lock():
            aside = cache.set_aside()
        fetched = cache.fetch(pin, url, on_progress, paths=want)
        fetched.note = f"the cache was corrupt ({e.message}); set aside as {aside} and fetched again"
        create_tree(pin, cache, dest, want)
    repo = git.Repo(dest)
    return Prepared(Tree(dest, repo, pin), True, fetched, url)


def widen(tree: Tree, want: list[str] | None, source: str | None, cache: Cache | None = None,
          on_progress=None) -> FetchResult | None:  # fmt: skip
    """Materialise more of a sparse tree: the blobs it lacks fetched into the cache, then checked out (``want``
    None: the whole tree). None when the tree already holds them."""
    have = tree.paths
    if have is None:
        return None  # already whole
    if want is not None and all(any(holds(h, w) for h in have) for w in want):
        return None
    cache = cache or Cache()
    url, _ = resolve_source(source, tree.pin)
    union = None if want is None else normalise(have + want)
    fetched = cache.fetch(tree.pin, url, on_progress, paths=union)
    cache.repo().git.config("uploadpack.allowFilter", "true")
    if union is None:
        tree.repo.git.sparse_checkout("disable")
    else:
        set_sparse(tree.repo, union)
    # what was materialised now holds its pinned blobs (the files before it may be patched: mfnpatch's to judge)
    verify_files(tree.repo, tree.pin, union, exclude=have)
    return fetched


# --------------------------------------------------------------------------------------------
# The journal: a write phase killed at any instant (kill -9, power loss) is rolled back by the next command


JOURNAL_DIR = "journal"  # <tree>/.mfnpatch/journal/: journal.json and the backups it names


class Journal(Strict):
    """What a write phase is about to change, written (with a backup of every file) before it starts."""

    schema_: Literal[1] = Field(alias="schema", default=1)
    txid: str = Field(pattern=r"^[0-9a-f]{16}$")
    started: str
    pid: int
    files: dict[TreePath, str | None]  # path -> its backup (journal/NNNN), None: the file did not exist
    dirs: list[TreePath]  # directories the write phase creates
    state: str | None  # the state.json before (journal/state.json), None: there was none


def _journal_dir(tree: Tree) -> Path:
    return tree.state_dir / JOURNAL_DIR


def _begin(tree: Tree, changes: dict[str, bytes | None], current: dict[str, bytes | None]) -> Journal:
    jd = _journal_dir(tree)
    if jd.exists():
        recover(tree)
    jd.mkdir(parents=True)
    try:
        return _write_journal(tree, jd, changes, current)
    except BaseException:
        shutil.rmtree(jd, ignore_errors=True)  # nothing was changed yet: no journal, no trace
        raise


def _write_journal(tree: Tree, jd: Path, changes: dict[str, bytes | None], current: dict[str, bytes | None]):
    files: dict[str, str | None] = {}
    for i, rel in enumerate(changes):
        if current[rel] is None:
            files[rel] = None
        else:
            files[rel] = f"{i:04d}"
            atomic_write(jd / files[rel], current[rel])  # type: ignore[operator, arg-type]
    dirs = []
    for rel in changes:
        parent = (tree.root / rel).parent
        while parent != tree.root and not parent.exists():
            d = str(parent.relative_to(tree.root))
            if d not in dirs:
                dirs.append(d)
            parent = parent.parent
    state = None
    if tree.state_path.is_file():
        state = "state.json"
        atomic_write(jd / state, tree.state_path.read_bytes())
    j = Journal(schema=1, txid=os.urandom(8).hex(), started=now(), pid=os.getpid(), files=files,
                dirs=sorted(dirs, key=lambda d: d.count("/")), state=state)  # fmt: skip
    atomic_write_json(jd / "journal.json", j.model_dump(by_alias=True))  # the commit point of "begun"
    return j


def _end(tree: Tree) -> None:
    """The write phase is complete: forget the journal (the commit point)."""
    shutil.rmtree(_journal_dir(tree))


def recover(tree: Tree) -> str | None:
    """Roll back a write phase that did not finish (its journal is still there); say what was done.

    Only a journal inside the tree's own state directory is read (no symlink on the way), and every entry is
    checked before anything is done: a target inside the tree reached through no symlink, a regular file or
    nothing (never a directory), a backup that is a regular file of the journal. A journal that fails any of
    it is set aside (``journal.refused-<time>``) and said, so no later command is ever stopped by it: what it
    would have restored then shows as drift (``mfnpatch status``)."""
    sd = tree.state_dir
    jd = sd / JOURNAL_DIR
    if not jd.exists() and not jd.is_symlink():
        return None
    if sd.is_symlink() or jd.is_symlink() or not jd.is_dir():
        what = "a symlink" if jd.is_symlink() or sd.is_symlink() else "not a directory"
        return _set_aside(tree, f"{jd} is {what}, not the journal mfnpatch writes: set aside, nothing restored")
    jpath = jd / "journal.json"
    if jpath.is_symlink():
        return _set_aside(tree, f"{jpath} is a symlink: set aside, nothing restored")
    if not jpath.is_file():  # killed while the journal itself was written: nothing had been changed yet
        shutil.rmtree(jd)
        return "removed an incomplete journal (nothing had been changed)"
    try:
        j = validate(Journal, load_json(jpath), jpath)
        plan = _rollback_plan(tree, jd, j)
    except MfnError as e:
        return _set_aside(tree, f"{jpath}: refused ({e.message}): set aside, nothing restored")
    restored = 0
    for target, data, rel in plan:
        if data is None:
            target.unlink(missing_ok=True)
        else:
            if not target.is_file() or target.read_bytes() != data:
                mode = os.stat(target).st_mode & 0o7777 if target.exists() else pinned_mode(tree, rel)
                atomic_write(target, data, mode)
            restored += 1
        for stray in target.parent.glob(f".{target.name}.*.{TMP_TAG}-{j.txid}"):
            if stray.is_file() and not stray.is_symlink():
                stray.unlink()
    for d in reversed(j.dirs):
        try:
            tree.safe_path(d).rmdir()
        except (OSError, MfnError):
            pass
    if j.state is None:
        tree.state_path.unlink(missing_ok=True)
    else:
        atomic_write(tree.state_path, _backup(jd, j.state))
    shutil.rmtree(jd)
    return (
        f"rolled back a write phase interrupted at {j.started} (pid {j.pid}): {len(j.files)} file(s) put back as "
        f"they were ({restored} restored, {len(j.files) - restored} removed), the state as it was"
    )


def _backup(jd: Path, name: str) -> bytes:
    p = jd / confined(name, "backup")
    if p.is_symlink() or not p.is_file() or p.parent != jd:
        raise MfnError(f"backup {name!r} is not a file of the journal")
    return p.read_bytes()


def _rollback_plan(tree: Tree, jd: Path, j: Journal) -> list[tuple[Path, bytes | None, str]]:
    """Every entry checked before any is acted on: (target, its bytes or None to remove it, path)."""
    plan = []
    for rel, backup in j.files.items():
        target = tree.safe_path(rel)  # inside the tree, no symlink on the way
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise MfnError(f"{rel} is not a regular file in the tree")
        plan.append((target, None if backup is None else _backup(jd, backup), rel))
    if j.state is not None:
        _backup(jd, j.state)
    return plan


def _set_aside(tree: Tree, why: str) -> str:
    """A journal that cannot be trusted, moved out of the way (never followed, never deleted through a link)."""
    sd = tree.state_dir
    if sd.is_symlink():
        raise MfnError(f"{sd} is a symlink: refused", hint=f"remove it (rm {sd}); mfnpatch never writes through it")
    jd = sd / JOURNAL_DIR
    os.rename(jd, sd / f"{JOURNAL_DIR}.refused-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    return why + "; run mfnpatch status to see what differs from the state"


def write_all(tree: Tree, changes: dict[str, bytes | None], current: dict[str, bytes | None], state: TreeState | None):
    """Write every change, then the state, under a journal. On any error or signal the journal rolls the tree
    back at once (``recover``); if the process dies instead, the next command's ``recover`` does the same."""
    journal = _begin(tree, changes, current)
    try:
        staged: list[tuple[str, str | None]] = []
        for rel, data in changes.items():
            if data is None:
                staged.append((rel, None))
                continue
            target = tree.safe_path(rel)
            target.parent.mkdir(parents=True, exist_ok=True)  # the journal lists the directories it creates
            mode = os.stat(target).st_mode & 0o7777 if target.exists() else pinned_mode(tree, rel)
            # created exclusively (never a planted name or link), named for this write phase
            fd, tmp = mkstemp_beside(target, f"{TMP_TAG}-{journal.txid}")
            staged.append((rel, tmp))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
        for rel, staged_tmp in staged:
            target = tree.root / rel
            if staged_tmp is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(staged_tmp, target)
        if state is None:
            tree.state_path.unlink(missing_ok=True)
        else:
            atomic_write_json(tree.state_path, state.model_dump(by_alias=True))
        _end(tree)
    except BaseException:
        recover(tree)
        raise
    for rel, data in changes.items():
        if data is None:
            prune_empty_dirs(tree, rel)


def pinned_mode(tree: Tree, rel: str) -> int:
    entry = tree.pin.manifest.files.get(rel)
    return 0o755 if entry and entry.mode == "100755" else 0o644


def prune_empty_dirs(tree: Tree, rel: str) -> None:
    pinned_dirs = {str(Path(p).parent) for p in tree.pin.manifest.files}
    d = (tree.root / rel).parent
    while d != tree.root and str(d.relative_to(tree.root)) not in pinned_dirs:
        try:
            d.rmdir()
        except OSError:
            break
        d = d.parent
