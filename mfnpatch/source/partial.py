"""Fetching less: a pinned commit's trees without their blobs (git's partial clone, ``--filter=blob:none``), then
only the blobs of the paths a tree materialises (a sparse checkout). The commit and the tree id of the whole
commit are verified as for a full fetch; each materialised file is checked against the pin manifest's blob id.

A path is a directory with everything under it (``src``), or the files directly in a directory (``deploy/*``:
``model_slim.py`` without the 11 MB of ``deploy/mtcnn-model``); the files at the root are always there. A patch
set needs the files directly in the directories of the files it touches; a recipe names the directories its
stages read (may16: ``src`` and ``deploy/*``).

A server that refuses filters (no ``uploadpack.allowFilter``) sends the whole commit instead: git says
"filtering not recognized by server", and the fetch is then today's depth-1 fetch, said once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import git

from mfnpatch.errors import UsageError
from mfnpatch.fsutil import UnsafePath, one_line

FILTER_REFUSED = "filtering not recognized by server"
FILES = "/*"  # "dir/*": the files directly in dir


class BadPath(UsageError):
    """A path of the tree that is not a plain directory (or a directory's files)."""


PATH_HINT = "a directory inside the tree (src, recognition/arcface_torch) or its files (deploy/*)"
# what a sparse-checkout pattern reads as structure: gitignore's wildcards, negation, comments and escapes
PATTERN_CHARS = "*?[]!#\\"


def normalise(paths: list[str]) -> list[str]:
    """Paths of the tree (``dir`` or ``dir/*``), relative, without duplicates or ones another already holds.
    Each becomes a line of git's sparse-checkout file, so a line break, a wildcard or another pattern character
    in one is refused (BadPath) rather than read back as another pattern."""
    out: set[str] = set()
    for p in paths:
        raw = str(p).strip(" ")
        files = raw.endswith(FILES)
        body = raw[: -len(FILES)] if files else raw
        try:
            one_line(body, "path", file="the tree's sparse-checkout patterns (one per line)", forbid=PATTERN_CHARS,
                     hint=PATH_HINT)  # fmt: skip
        except UnsafePath as e:
            raise BadPath(e.message, hint=PATH_HINT) from None
        if body != body.strip():
            raise BadPath(f"path {p!r} begins or ends with whitespace: refused", hint=PATH_HINT)
        q = str(PurePosixPath(body.strip("/")))
        if q in ("", "."):
            continue  # the root's files are always there
        if PurePosixPath(q).is_absolute() or ".." in PurePosixPath(q).parts:
            raise BadPath(f"path {p!r} is not inside the tree: refused", hint=PATH_HINT)
        out.add(q + FILES if files else q)
    return sorted(x for x in out if not any(x != o and holds(o, x) for o in out))


def holds(entry: str, other: str) -> bool:
    """Whether path ``entry`` holds everything path ``other`` does."""
    if entry.endswith(FILES):
        return other == entry
    d = other[: -len(FILES)] if other.endswith(FILES) else other
    return d == entry or d.startswith(entry + "/")


def set_paths(files: list[str]) -> list[str]:
    """What a tree must materialise for a patch set touching ``files``: the files directly in their directories."""
    return normalise([str(PurePosixPath(p).parent) + FILES for p in files])


def covered(path: str, paths: list[str]) -> bool:
    """Whether the file ``path`` is materialised by ``paths`` (the root's files always are)."""
    parent = str(PurePosixPath(path).parent)
    if parent == ".":
        return True
    for e in paths:
        if e.endswith(FILES):
            if parent == e[: -len(FILES)]:
                return True
        elif path.startswith(e + "/"):
            return True
    return False


def patterns(paths: list[str]) -> list[str]:
    """The sparse-checkout patterns (non-cone) of ``paths``: the root's files, then each path."""
    out = ["/*", "!/*/"]
    for e in paths:
        out += [f"/{e}", f"!/{e[: -len(FILES)]}/*/"] if e.endswith(FILES) else [f"/{e}/"]
    return out


def cone_blobs(repo: git.Repo, sha: str, paths: list[str] | None) -> dict[str, str]:
    """path -> blob id of every file the cone of ``paths`` holds at ``sha`` (None: every file)."""
    out = {}
    for line in repo.git.ls_tree("-r", "--full-tree", sha).splitlines():
        meta, path = line.split("\t", 1)
        _mode, kind, oid = meta.split()
        if kind != "blob":
            continue
        if paths is None or covered(path, paths):
            out[path] = oid
    return out


def missing(repo: git.Repo, sha: str) -> set[str]:
    """The objects of commit ``sha`` the repository does not hold. ``git rev-list --missing=print`` lists them
    without fetching (a promisor remote would otherwise fetch each one it is asked about)."""
    r = subprocess.run(["git", "-C", str(repo.git_dir), "rev-list", "--objects", "--missing=print", sha],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return {ln[1:].split()[0] for ln in r.stdout.splitlines() if ln.startswith("?")}


def sparse_paths(repo: git.Repo) -> list[str] | None:
    """The paths a tree materialises, or None when it is whole (no sparse checkout)."""
    try:
        on = repo.git.config("--get", "core.sparseCheckout").strip()
    except git.GitCommandError:
        return None
    if on != "true":
        return None
    out = []
    for pat in repo.git.sparse_checkout("list").splitlines():
        pat = pat.strip()
        if not pat or pat.startswith("!") or pat == "/*":
            continue
        out.append(pat.strip("/") if pat.endswith("/") else pat.lstrip("/"))
    try:
        return normalise(out)
    except UsageError as e:
        raise UsageError(
            f"{repo.working_tree_dir}: its sparse-checkout file holds a pattern mfnpatch does not write ({e.message})",
            hint=f"make the tree whole with: git -C {repo.working_tree_dir} sparse-checkout disable",
        ) from None


def files_in(root: Path, blobs: dict[str, str]) -> list[tuple[str, str]]:
    """(path, why) of each materialised file whose content is not its pinned blob."""
    from mfnpatch.fsutil import git_blob_id

    bad = []
    for path, oid in blobs.items():
        p = root / path
        if p.is_symlink():
            continue  # a link's blob is its target, checked by git itself
        try:
            data = p.read_bytes()
        except OSError as e:
            bad.append((path, f"unreadable ({e.strerror})"))
            continue
        if git_blob_id(data) != oid:
            bad.append((path, f"content is not blob {oid[:12]}"))
    return bad
