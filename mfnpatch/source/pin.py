"""The upstream pin: manifests, fetching exactly one commit, and verifying trees offline.

A pin manifest (``insightface_pin/<short>.yaml``) records the upstream URL, the full commit SHA, its
date, the git tree id and, for every file in the tree, its git blob id and sha256. A fetched commit
is accepted only when both its SHA and its tree id match, and each working file is checked against
its blob id without network (git's ids are content hashes).

Fetches go through a cache (a bare repository under ``~/.cache/mfnpatch/git``) that receives one
commit at depth 1; trees are created from the cache, so a second apply needs no network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import git
import yaml
from pydantic import Field

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write, git_blob_id, locked, not_an_option, sha256_bytes
from mfnpatch.resources import cache_dir, data_dir
from mfnpatch.schema import Strict, load_model
from mfnpatch.source.partial import FILTER_REFUSED, cone_blobs, covered, files_in, missing, patterns

PIN_REF = "refs/mfnpatch/pins/"
STATE_DIRNAME = ".mfnpatch"
# git fails a transfer that stays below 1 kB/s for 60 s instead of hanging forever.
GIT_NET_OPTS = ["-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60"]


class PinError(MfnError):
    pass


class NetworkError(PinError):
    pass


class CorruptCache(PinError):
    """The cache's copy of a commit does not verify (or git cannot read it)."""


class PinnedFile(Strict):
    blob: str = Field(pattern=r"^[0-9a-f]{40}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mode: str = "100644"


class PinManifest(Strict):
    schema_: Literal[1] = Field(alias="schema")
    name: str
    upstream: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    date: str
    subject: str
    tree: str = Field(pattern=r"^[0-9a-f]{40}$")
    note: str = ""  # why this commit is pinned
    # what a plain apply materialises: the directories the pinned code needs to run the seed's commands (dir or
    # dir/* for a directory's own files); empty: only what the patch sets touch
    paths: list[str] = Field(default_factory=list)
    # the tree `apply --commit` and `recipe run` use when no --dest/--tree is given: one per pin, so that two
    # lineages' trees never collide
    dest: str = "insightface"
    files: dict[str, PinnedFile]

    @property
    def short(self) -> str:
        return self.commit[:7]


@dataclass
class Pin:
    manifest: PinManifest
    path: Path

    @property
    def commit(self) -> str:
        return self.manifest.commit

    @property
    def short(self) -> str:
        return self.manifest.short

    def describe(self) -> str:
        m = self.manifest
        return f"{m.short} ({m.date[:10]}, {m.subject!r})"


def load_pins(pins_dir: Path | None = None) -> list[Pin]:
    root = pins_dir or data_dir("insightface_pin")
    pins = []
    for p in sorted(Path(root).glob("*.yaml")):
        pins.append(Pin(load_model(p, PinManifest), p))
    return pins


def default_dest(commit: str) -> Path:
    """The tree a pinned commit uses when no --dest (--tree) is given: its manifest's ``dest``, one per pin."""
    return Path(resolve_pin(commit).manifest.dest)


def resolve_pin(commit: str, pins: list[Pin] | None = None) -> Pin:
    """Find the pinned commit a prefix names; errors list what is pinned."""
    pins = load_pins() if pins is None else pins
    listing = "; ".join(p.describe() for p in pins) or "none"
    c = commit.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4,40}", c):
        raise PinError(
            f"--commit {commit!r} is not a commit id (4 to 40 hex digits)",
            hint=f"pinned commits: {listing}",
        )
    found = [p for p in pins if p.commit.startswith(c)]
    if not found:
        raise PinError(
            f"commit {commit} is not pinned",
            hint=f"pinned commits: {listing}. mfnpatch only applies patch sets to a pinned, verified commit",
        )
    if len(found) > 1:
        raise PinError(
            f"commit prefix {commit} is ambiguous",
            hint="matches " + "; ".join(p.describe() for p in found) + "; give more digits",
        )
    return found[0]


def pin_for_commit(sha: str, pins: list[Pin] | None = None) -> Pin | None:
    pins = load_pins() if pins is None else pins
    return next((p for p in pins if p.commit == sha), None)


# --------------------------------------------------------------------------------------------
# Sources


def resolve_source(source: str | None, pin: Pin | None = None, default: str | None = None) -> tuple[str, str]:
    """(git URL, where it came from). --source beats MFNPATCH_UPSTREAM beats the manifest's URL (or
    ``default``). No value may start with '-': git would read it as an option (--upload-pack=...)."""
    if source:
        origin = "--source"
    elif os.environ.get("MFNPATCH_UPSTREAM"):
        source, origin = os.environ["MFNPATCH_UPSTREAM"], "MFNPATCH_UPSTREAM"
    else:
        url = pin.manifest.upstream if pin is not None else default
        where = f"the pin manifest {pin.path.name}: upstream" if pin is not None else "upstream"
        if not url:
            raise PinError("no source to fetch from", hint="give --source PATH|URL")
        return not_an_option(url, where), "pin manifest"
    assert source is not None
    not_an_option(source, origin)
    if "://" in source or re.match(r"^[\w.-]+@[\w.-]+:", source):
        return source, origin
    p = Path(source).expanduser()
    if not p.exists():
        raise PinError(
            f"{origin} {source}: no such file or directory",
            hint="give a local clone or mirror of InsightFace, or a git URL",
        )
    # file:// makes git honour --depth for local sources too.
    return p.resolve().as_uri(), origin


_NET_PATTERNS = (
    "could not resolve host",
    "failed to connect",
    "connection refused",
    "connection timed out",
    "network is unreachable",
    "operation timed out",
    "unable to access",
    "could not read from remote repository",
    "ssl",
    "proxy",
)


def _classify_fetch_error(url: str, sha: str, stderr: str) -> PinError:
    text = stderr.strip()
    last = next(
        (ln for ln in reversed(text.splitlines()) if ln.startswith("fatal:")), text.splitlines()[-1] if text else ""
    )
    low = text.lower()
    if any(s in low for s in ("is corrupt", "inflate", "bad object", "unable to read sha1 file", "missing blob")):
        return CorruptCache(f"git fetch from {url} found damaged objects", details=[last])
    if any(s in low for s in ("not our ref", "couldn't find remote ref", "no such remote ref", "unadvertised object")):
        return PinError(
            f"{url} does not have commit {sha}",
            hint="point --source (or MFNPATCH_UPSTREAM) at a clone that contains it; a full clone of "
            "deepinsight/insightface does",
            details=[last],
        )
    if any(
        s in low for s in ("does not appear to be a git repository", "not a git repository", "repository not found")
    ):
        return PinError(
            f"{url} is not a git repository",
            hint="give a clone, a bare mirror or a git URL of InsightFace",
            details=[last],
        )
    if any(s in low for s in _NET_PATTERNS):
        return NetworkError(
            f"cannot fetch from {url}: the network or host is unreachable",
            hint="fetch from a local clone or mirror instead: --source /path/to/insightface "
            "(or set MFNPATCH_UPSTREAM=/path/to/insightface)",
            details=[last],
        )
    return PinError(f"git fetch from {url} failed", hint="run with --debug to see git's output", details=[last])


class GitFailed(Exception):
    def __init__(self, args: list[str], status: int, stderr: str):
        super().__init__(f"git {' '.join(args)} exited {status}")
        self.status = status
        self.stderr = stderr


def _run_git(repo: git.Repo, args: list[str], on_progress: Callable[[str], None] | None = None,
             stdin: str | None = None) -> str:  # fmt: skip
    """Run git, streaming stderr progress lines to ``on_progress``; return stderr (GitFailed on failure)."""
    if stdin is not None:
        r = subprocess.run(["git", "-C", str(repo.git_dir), *args], input=stdin.encode(), capture_output=True,
                           env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})  # fmt: skip
        err = r.stderr.decode("utf-8", "replace")
        if r.returncode != 0:
            raise GitFailed(args, r.returncode, err)
        return err
    proc = repo.git.execute(["git", *args], as_process=True, env={"GIT_TERMINAL_PROMPT": "0"})
    chunks: list[bytes] = []
    buf = b""
    assert proc.proc is not None and proc.proc.stderr is not None and proc.proc.stdout is not None
    stderr = proc.proc.stderr
    while True:
        ch = stderr.read(1)
        if not ch:
            break
        chunks.append(ch)
        if ch in (b"\r", b"\n"):
            if on_progress and buf.strip():
                on_progress(buf.decode("utf-8", "replace").strip())
            buf = b""
        else:
            buf += ch
    proc.proc.stdout.read()
    rc = proc.proc.wait()
    err = b"".join(chunks).decode("utf-8", "replace")
    if rc != 0:
        raise GitFailed(args, rc, err)
    return err


# --------------------------------------------------------------------------------------------
# Cache


@dataclass
class FetchResult:
    commit: str
    url: str
    from_cache: bool
    seconds: float
    note: str | None = None  # e.g. a corrupt cache that was set aside and fetched again
    paths: list[str] | None = None  # the directories whose blobs the cache holds for this tree (None: all)
    blobs_fetched: int = 0  # blobs fetched for those paths (a partial fetch)
    partial: bool = False  # the commit was fetched without its blobs (the source allows filters)


class Cache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else cache_dir()
        self.git_dir = self.root / "git"
        self.last_stderr = ""

    def lock(self) -> locked:
        """Fetches into one cache take turns (``git.lock`` beside the repository)."""
        return locked(self.root / "git.lock", f"the cache {self.root}")

    def repo(self) -> git.Repo:
        if not (self.git_dir / "HEAD").is_file():
            self.git_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".git-init-", dir=self.git_dir.parent)  # exclusive, never a planted link
            try:
                r = git.Repo.init(tmp, bare=True)
                r.git.config("uploadpack.allowFilter", "true")  # trees made from it fetch their blobs lazily
                r.close()
                os.rename(tmp, self.git_dir)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
                if not (self.git_dir / "HEAD").is_file():
                    raise
        return git.Repo(self.git_dir)

    def has_commit(self, sha: str) -> bool:
        if not (self.git_dir / "HEAD").is_file():
            return False
        try:
            self.repo().git.cat_file("-e", f"{sha}^{{commit}}")
            return True
        except git.GitCommandError:
            return False

    def url(self) -> str:
        return self.git_dir.resolve().as_uri()

    def fetch_commit(self, sha: str, url: str, on_progress: Callable[[str], None] | None = None,
                     blobs: bool = True) -> git.Repo:  # fmt: skip
        """Fetch one commit (depth 1) into the cache, with its blobs or (``blobs=False``) without them (a source
        that refuses the filter sends them anyway); ``url`` is never read as an option (``--``)."""
        not_an_option(url, "source")
        repo = self.repo()
        flt = [] if blobs else ["--filter=blob:none"]
        args = [*GIT_NET_OPTS, "fetch", "--depth", "1", *flt, "--no-tags", "--progress", "--", url, sha]
        try:
            self.last_stderr = _run_git(repo, args, on_progress)
        except GitFailed as e:
            raise _classify_fetch_error(url, sha, e.stderr) from None
        return repo

    def fetch_blobs(self, sha: str, url: str, paths: list[str] | None, on_progress=None) -> int:
        """Fetch the blobs of ``sha`` the cone of ``paths`` needs (None: every blob) that the cache lacks; how many."""
        repo = self.repo()
        want = cone_blobs(repo, sha, paths)
        lacking = sorted(set(want.values()) & missing(repo, sha))
        if not lacking:
            return 0
        # no "have"s (as git's own lazy fetch): the server would leave out blobs reachable from the pinned commit
        args = [*GIT_NET_OPTS, "-c", "fetch.negotiationAlgorithm=noop", "fetch", "--filter=blob:none", "--no-tags",
                "--no-write-fetch-head", "--progress", "--stdin", "--", url]  # fmt: skip
        try:
            _run_git(repo, args, on_progress, stdin="\n".join(lacking) + "\n")
        except GitFailed as e:
            raise _classify_fetch_error(url, sha, e.stderr) from None
        still = sorted(set(lacking) & missing(repo, sha))
        if still:
            raise CorruptCache(f"{url} did not send {len(still)} of the blobs asked for (first {still[0]})")
        return len(lacking)

    def fetch(self, pin: Pin, url: str, on_progress: Callable[[str], None] | None = None,
              paths: list[str] | None = None) -> FetchResult:  # fmt: skip
        """Make sure the cache holds the pinned commit, fetching only that commit (depth 1): with ``paths``, its
        trees and only the blobs those directories need (partial clone), else all of it. A cache whose copy does
        not verify (a truncated pack, a tampered object) is set aside and fetched again, once."""
        t0 = time.perf_counter()
        note = None
        with self.lock():
            for attempt in (1, 2):
                try:
                    cached = self.has_commit(pin.commit)
                    partial = False
                    if not cached:
                        repo = self.fetch_commit(pin.commit, url, on_progress, blobs=paths is None)
                        refused = paths is not None and FILTER_REFUSED in self.last_stderr
                        if refused:
                            said = f"{url} refuses partial fetches: the whole commit was fetched (depth 1)"
                            note = f"{note}; {said}" if note else said
                        partial = paths is not None and not refused
                    repo = self.repo()
                    verify_commit(repo, pin)
                    n = self.fetch_blobs(pin.commit, url, paths, on_progress)
                    if not cached:
                        repo.git.update_ref(PIN_REF + pin.commit, pin.commit)
                    return FetchResult(pin.commit, url, cached and not n, time.perf_counter() - t0, note, paths, n,
                                       partial)  # fmt: skip
                except (CorruptCache, git.GitCommandError, ValueError, OSError) as e:
                    if attempt == 2:
                        raise CorruptCache(
                            f"the cache {self.git_dir} is corrupt and fetching again did not help: {e}",
                            hint=f"remove it (rm -r {self.git_dir}) and apply again",
                        ) from None
                    why = e.message if isinstance(e, MfnError) else f"{type(e).__name__}: {e}"
                    aside = self.set_aside()
                    note = (
                        f"the cache was corrupt ({why.splitlines()[0][:160]}); set aside as {aside} and fetched again"
                    )
        raise AssertionError("unreachable")

    def set_aside(self) -> Path | None:
        """Move a corrupt cache out of the way (kept for inspection as git.corrupt-<time>)."""
        if not self.git_dir.exists():
            return None
        dest = self.git_dir.with_name(f"git.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.rename(self.git_dir, dest)
        return dest


def verify_commit(repo: git.Repo, pin: Pin) -> None:
    """The commit exists and its tree id is the manifest's (refuse when SHA and tree disagree)."""
    try:
        commit = repo.commit(pin.commit)
        tree = commit.tree.hexsha
    except (ValueError, git.BadName, git.GitCommandError, OSError) as e:
        raise CorruptCache(f"commit {pin.commit} is missing or unreadable in {repo.git_dir} ({e})") from None
    if commit.hexsha != pin.commit:
        raise PinError(f"{repo.git_dir}: {pin.short} resolved to {commit.hexsha}")
    if tree != pin.manifest.tree:
        raise PinError(
            f"commit {pin.short} has tree {tree}, but {pin.path.name} pins tree {pin.manifest.tree}",
            hint="the pin manifest or the fetched object store is corrupt; refetch with an empty MFNPATCH_CACHE",
        )


# --------------------------------------------------------------------------------------------
# Trees


def _exclude_state_dir(repo: git.Repo) -> None:
    excl = Path(repo.git_dir) / "info" / "exclude"
    text = excl.read_text() if excl.is_file() else ""
    line = f"/{STATE_DIRNAME}/"
    if line not in text.splitlines():
        atomic_write(excl, text + ("" if text.endswith("\n") or not text else "\n") + line + "\n")


def create_tree(pin: Pin, cache: Cache, dest: Path, paths: list[str] | None = None) -> None:
    """Check the pinned commit out of the cache into ``dest`` (created whole, or not at all): every file, or with
    ``paths`` a sparse checkout of those directories whose blobs come from the cache as git needs them."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.mfnpatch-tmp-", dir=dest.parent))  # exclusive: never a link
    try:
        repo = git.Repo.init(tmp)
        if paths is None:
            repo.git.fetch("--depth", "1", "--no-tags", "--quiet", cache.url(), pin.commit)
        else:
            cache.repo().git.config("uploadpack.allowFilter", "true")  # a cache made before it allowed filters
            for key, value in (("url", cache.url()), ("promisor", "true"), ("partialclonefilter", "blob:none")):
                repo.git.config(f"remote.{CACHE_REMOTE}.{key}", value)
            repo.git.fetch("--depth", "1", "--filter=blob:none", "--no-tags", "--quiet", CACHE_REMOTE, pin.commit)
            set_sparse(repo, paths)
        repo.git.update_ref(PIN_REF + pin.commit, pin.commit)
        repo.git.checkout("--quiet", "--detach", pin.commit)
        verify_commit(repo, pin)
        if paths is not None:
            verify_files(repo, pin, paths)
        _exclude_state_dir(repo)
        repo.close()
        if dest.exists():
            dest.rmdir()  # only an empty directory gets here
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


CACHE_REMOTE = "mfnpatch-cache"  # a sparse tree's promisor remote: the cache, where its missing blobs come from


def set_sparse(repo: git.Repo, paths: list[str]) -> None:
    """The tree's sparse checkout: exactly ``paths`` (non-cone patterns: whole directories or a directory's files)."""
    subprocess.run(["git", "-C", str(repo.working_tree_dir), "sparse-checkout", "set", "--no-cone", "--stdin"],
                   input="\n".join(patterns(paths)) + "\n", text=True, capture_output=True, check=True)  # fmt: skip


def verify_files(repo: git.Repo, pin: Pin, paths: list[str] | None, exclude: list[str] | None = None) -> None:
    """Each file a tree materialises (in the cone of ``paths``, not in that of ``exclude``) holds its pinned blob:
    a cache object changed under the same id is caught."""
    blobs = {p: e.blob for p, e in pin.manifest.files.items()
             if (paths is None or covered(p, paths)) and not (exclude is not None and covered(p, exclude))}  # fmt: skip
    bad = files_in(Path(repo.working_tree_dir or ""), {p: b for p, b in blobs.items()
                                                        if pin.manifest.files[p].mode != "120000"})  # fmt: skip
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CorruptCache(f"{bad[0][0]}: {bad[0][1]}{more}", hint="the cache is corrupt: set it aside and fetch again")


def open_tree(dest: Path, pins: list[Pin] | None = None) -> tuple[git.Repo, Pin]:
    """An existing tree: the top of a git checkout whose HEAD is a pinned commit."""
    dest = Path(dest)
    try:
        repo = git.Repo(dest, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise PinError(
            f"{dest} is not a git checkout of a pinned commit",
            hint="choose another --dest (mfnpatch creates it), or remove this directory",
        ) from None
    top = Path(repo.working_tree_dir or "").resolve()
    if top != dest.resolve():
        raise PinError(f"{dest} is inside the git checkout {top}, not its top", hint=f"use --dest {top}")
    try:
        head = repo.head.commit.hexsha
    except ValueError:
        raise PinError(f"{dest} is a git repository with no commit checked out", hint="choose another --dest") from None
    pin = pin_for_commit(head, pins)
    if pin is None:
        names = ", ".join(p.short for p in (pins if pins is not None else load_pins()))
        raise PinError(
            f"{dest} is checked out at {head[:7]}, which is not pinned (pinned: {names})",
            hint=f"check out a pinned commit there (git -C {dest} checkout --detach <sha>) or choose another --dest",
        )
    verify_commit(repo, pin)
    return repo, pin


def is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


def pristine_blob(repo: git.Repo, pin: Pin, path: str) -> bytes | None:
    """The pinned content of ``path`` (None when the pin has no such file), read from git objects."""
    entry = pin.manifest.files.get(path)
    if entry is None:
        return None
    data = repo.odb.stream(bytes.fromhex(entry.blob)).read()
    if git_blob_id(data) != entry.blob:
        raise PinError(f"object {entry.blob} for {path} is corrupt in {repo.git_dir}")
    return data


# --------------------------------------------------------------------------------------------
# Recording a pin (maintainers)


def record_pin(commit: str, source: str, name: str, upstream: str, cache: Cache | None = None) -> PinManifest:
    """Fetch ``commit`` from ``source`` into the cache (like apply does) and describe it as a pin manifest."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise PinError(f"--commit {commit}: give the full 40-digit SHA", hint="git rev-parse <ref> prints it")
    not_an_option(upstream, "--upstream")
    check_labels(name, upstream)
    url, _ = resolve_source(source, default=upstream)
    cache = cache or Cache()
    with cache.lock():
        repo = cache.repo() if cache.has_commit(commit) else cache.fetch_commit(commit, url)
        return record_manifest(repo, commit, name, upstream)


def record_manifest(repo: git.Repo, sha: str, name: str, upstream: str) -> PinManifest:
    commit = repo.commit(sha)
    files: dict[str, PinnedFile] = {}
    for item in commit.tree.traverse():
        if not isinstance(item, git.Blob):
            continue
        data = item.data_stream.read()
        files[str(item.path)] = PinnedFile(blob=item.hexsha, sha256=sha256_bytes(data), mode=f"{item.mode:o}")
    date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(commit.committed_date)) + "Z"
    return PinManifest(
        schema=1,
        name=name,
        upstream=upstream,
        commit=commit.hexsha,
        date=date,
        subject=commit.summary if isinstance(commit.summary, str) else commit.summary.decode(),
        tree=commit.tree.hexsha,
        files=dict(sorted(files.items())),
    )


def check_labels(name: str, upstream: str) -> None:
    """A pin's name and upstream are one line each: a control character (a newline, a tab ...) is refused."""
    for what, value in (("name", name), ("upstream", upstream)):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise PinError(f"pin {what} {value!r} holds a control character (a newline, a tab ...)",
                           hint=f"give the {what} on one line, without control characters")  # fmt: skip


def manifest_yaml(m: PinManifest) -> str:
    """The manifest as YAML, written by a serialiser (a value with a newline or a quote stays one value)."""
    check_labels(m.name, m.upstream)
    head = {
        "schema": 1,
        "name": m.name,
        "upstream": m.upstream,
        "commit": m.commit,
        "date": m.date,
        "subject": m.subject,
        "tree": m.tree,
        **({"note": m.note} if m.note else {}),
        **({"paths": m.paths} if m.paths else {}),
        **({"dest": m.dest} if m.dest != "insightface" else {}),
    }
    files = {path: {"blob": f.blob, "sha256": f.sha256, "mode": f.mode} for path, f in m.files.items()}
    text = yaml.safe_dump(head, sort_keys=False, allow_unicode=True, width=1 << 30)
    text += yaml.safe_dump({"files": files}, sort_keys=False, allow_unicode=True, width=1 << 30,
                           default_flow_style=None)  # fmt: skip
    return (
        "# Pin manifest: written by `mfnpatch pin record`; do not edit by hand.\n"
        "# Every file of the tree with its git blob id and sha256, so a tree is verified offline.\n" + text
    )
