"""Small filesystem helpers: atomic writes, hashing, and the guards every path and value from data passes.

Security habits, one place each:

- ``not_an_option``: a value from a user, a file or the environment that another program receives as a
  positional argument (a URL, a path, a job id) never starts with ``-``.
- ``confined``: a relative path from data (a patch, a state file, a recipe's stage name or cwd) stays
  inside its root: no absolute path, no ``..``, no backslash, no empty component, never ``.git`` or the
  tool's own state folder.
- ``atomic_write``: the temporary file is created exclusively (``mkstemp``) beside the target and renamed
  into place; an existing target that is not a regular file (a directory, a device, a FIFO, a symlink) is
  refused, never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from mfnpatch.errors import MfnError

# Folders a path from data may never name: git's metadata and mfnpatch's own state in a tree.
PROTECTED_DIRS = (".git", ".mfnpatch")


class UnsafePath(MfnError):
    """A path or value from data that would reach outside where it belongs."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_blob_id(data: bytes) -> str:
    """The id git gives a blob with this content (so a file is checked offline, without git)."""
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def not_an_option(value: str, what: str) -> str:
    """``value`` unchanged, unless another program could read it as an option (it starts with ``-``)."""
    if str(value).startswith("-"):
        raise UnsafePath(
            f"{what} {value!r} starts with '-': refused (another program would read it as an option)",
            hint="give a path (./-name for a file that starts with '-') or a URL (https://, file://, ssh://)",
        )
    return value


def confined(rel: str, what: str, protected: tuple[str, ...] = PROTECTED_DIRS) -> str:
    """A relative POSIX path from data, checked to stay inside its root: returns it normalised."""
    text = str(rel)
    bad = None
    if not text:
        bad = "is empty"
    elif text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        bad = "is absolute"
    elif "\\" in text or "\x00" in text:
        bad = "contains a backslash or a NUL"
    elif any(part in ("..", "") for part in text.split("/")):
        bad = "has a '..' or empty component"
    elif any(ord(c) < 32 for c in text):
        bad = "contains a control character"
    else:
        hit = next((p for p in text.split("/") if p.casefold() in {d.casefold() for d in protected}), None)
        if hit is not None:
            bad = f"names {hit}/ (git's metadata and mfnpatch's state are never written from data)"
    if bad:
        raise UnsafePath(f"{what} {text!r} {bad}: refused", hint="name a path relative to its root, inside it")
    return str(PurePosixPath(text))


def inside(root: Path, path: Path, what: str) -> Path:
    """``path`` resolved (symlinks followed), refused unless it is ``root`` (resolved) or below it."""
    r, p = Path(root).resolve(), Path(path).resolve()
    if p != r and r not in p.parents:
        raise UnsafePath(f"{what} {path} resolves to {p}, outside {r}: refused", hint="keep it inside")
    return p


def check_replaceable(path: Path, what: str = "output") -> None:
    """An output path may be new or a regular file; a directory, device, FIFO, socket or symlink is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    kind = None
    if stat.S_ISLNK(st.st_mode):
        kind = "a symlink (mfnpatch does not write through or replace links)"
    elif stat.S_ISDIR(st.st_mode):
        kind = "a directory"
    elif not stat.S_ISREG(st.st_mode):
        kind = "a device, FIFO or socket"
    if kind:
        raise UnsafePath(f"{what} {path} is {kind}: refused", hint="give the path of a new or regular file")


def mkstemp_beside(path: Path, tag: str = "tmp") -> tuple[int, str]:
    """A new temporary file in ``path``'s directory, created exclusively (never an existing name or link)."""
    path = Path(path)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".{tag}", dir=path.parent)


@contextmanager
def replacing(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """For writers that need a file name (savefig, mx.nd.save, onnx.save): a temporary file beside ``path``,
    created exclusively, renamed over ``path`` when the block ends without error, removed otherwise.
    ``path`` must be new or a regular file (``check_replaceable``)."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        check_replaceable(path)  # not turned into something else meanwhile
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file keeps its permissions when it exists; a new one gets 0666 minus the umask. An existing
    ``path`` that is not a regular file is refused (UnsafePath), not replaced.
    """
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
    fd, tmp = mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# --------------------------------------------------------------------------------------------
# Locks


LOCK_TIMEOUT = float(os.environ.get("MFNPATCH_LOCK_TIMEOUT", "600"))


class Busy(MfnError):
    """Another process holds the lock and did not let go in time."""


class locked:
    """An exclusive lock (filelock, flock on ``path``) for work that must not run twice at once.

    Taken at once when free; otherwise ``on_wait`` is told who holds it (the pid written in the lock file)
    and the lock is waited for up to ``timeout`` seconds, then refused with a clear error.
    """

    def __init__(self, path: Path, what: str, timeout: float | None = None, on_wait=None):
        import filelock

        self.path = Path(path)
        self.what = what
        self.timeout = LOCK_TIMEOUT if timeout is None else timeout
        self.on_wait = on_wait or (lambda text: __import__("sys").stderr.write(text + "\n"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = filelock.FileLock(str(self.path))

    def holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "another process"

    def __enter__(self):
        import filelock

        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644))  # cannot be made (read-only ...): say so now
        try:
            self.lock.acquire(timeout=0)
        except filelock.Timeout:
            self.on_wait(f"waiting for {self.holder()} to finish with {self.what} …")
            try:
                self.lock.acquire(timeout=self.timeout)
            except filelock.Timeout:
                raise Busy(
                    f"{self.what} is still in use by {self.holder()} after {self.timeout:g} s",
                    hint="try again when it has finished (MFNPATCH_LOCK_TIMEOUT sets how long to wait)",
                ) from None
        try:
            with open(self.path, "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()
