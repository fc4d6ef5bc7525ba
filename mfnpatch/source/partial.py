"""Fetching less: a pinned commit's trees without their blobs (git's partial clone, ``--filter=blob:none``), then
only the blobs of the paths a tree materialises (a sparse checkout in cone mode: each directory named, with the
files directly in it and in its parents). The commit and the tree id of the whole commit are verified as for a
full fetch; each materialised file is checked against the pin manifest's blob id.

A server that refuses filters (no ``uploadpack.allowFilter``) sends the whole commit instead: git says
"filtering not recognized by server", and the fetch is then today's depth-1 fetch, said once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import git

FILTER_REFUSED = "filtering not recognized by server"


def normalise(paths: list[str]) -> list[str]:
    """Directory paths of the tree, relative, without duplicates or ones inside another (cone mode's sets)."""
    out: set[str] = set()
    for p in paths:
        q = str(PurePosixPath(p.strip().strip("/")))
        if q in ("", "."):
            continue
        if q.startswith("..") or PurePosixPath(q).is_absolute() or ".." in PurePosixPath(q).parts:
            raise ValueError(f"{p!r}: a path inside the tree, like src or recognition/arcface_torch")
        out.add(q)
    return sorted(q for q in out if not any(q != o and q.startswith(o + "/") for o in out))


def set_dirs(paths: list[str]) -> list[str]:
    """The directories a tree must materialise for these files: each file's own directory (the root's files are
    in every cone)."""
    return normalise([str(PurePosixPath(p).parent) for p in paths])


def covered(path: str, cone: list[str]) -> bool:
    """Whether a file ``path`` is in the cone of ``cone`` (under one of its directories, or directly in one of
    their parents, the root included)."""
    parent = str(PurePosixPath(path).parent)
    parent = "" if parent == "." else parent
    if parent == "":
        return True
    for d in cone:
        if path.startswith(d + "/"):
            return True
        if d == parent or d.startswith(parent + "/"):  # a file directly in an ancestor of a cone directory
            return True
    return False


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
    """The directories a tree materialises, or None when it is whole (no sparse checkout)."""
    try:
        on = repo.git.config("--get", "core.sparseCheckout").strip()
    except git.GitCommandError:
        return None
    if on != "true":
        return None
    listed = repo.git.sparse_checkout("list").splitlines()
    return sorted(x.strip() for x in listed if x.strip())


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
