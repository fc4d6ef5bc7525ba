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
- ``one_line``: a value written into one line of a line-oriented file (an sbatch script, git's sparse-checkout
  patterns, ``train.lst``) holds no line break (nor, where the file is split on whitespace, a space or tab),
  so it cannot be read back as more structure than the writer wrote.
- ``read_bounded`` / ``regular_file``: a file read whole is a regular file (never a FIFO that blocks the read
  forever, never ``/dev/zero``) of at most a stated size, checked before a byte is read.
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

from mfnpatch.errors import MfnError, from_os_error

# Folders a path from data may never name: git's metadata and mfnpatch's own state in a tree.
PROTECTED_DIRS = (".git", ".mfnpatch")


class UnsafePath(MfnError):
    """A path or value from data that would reach outside where it belongs."""


class TooLarge(MfnError):
    """A file, or a size declared inside one, over the limit stated for its kind."""


# Characters that end a line for someone: POSIX tools, git and Slurm (\n, \r), and Python's str.splitlines
# (\v, \f, \x1c-\x1e, \x85, U+2028, U+2029) — every control character is refused with them.
_LINE_BREAKS = {"\x85", "\u2028", "\u2029"}


def one_line(value: object, what: str, *, file: str, hint: str, no_space: bool = False, forbid: str = "") -> str:
    """``value`` as text, refused unless it stays one field of one line of ``file``: no control character or line
    break; with ``no_space``, no whitespace either (a file split on whitespace would read two fields); none of
    ``forbid`` (characters with a meaning in that file)."""
    text = str(value)
    bad = None
    if any(ord(c) < 32 or ord(c) == 127 or c in _LINE_BREAKS for c in text):
        bad = "holds a newline, tab or other control character"
    elif no_space and any(c.isspace() for c in text):
        bad = "holds whitespace"
    elif forbid and any(c in forbid for c in text):
        bad = f"holds {next(c for c in text if c in forbid)!r}, which has a meaning there"
    if bad:
        raise UnsafePath(f"{what} {text[:200]!r} {bad}: refused (it is written into {file})", hint=hint)
    return text


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, from its ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size(n: int) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} bytes"


def _open_regular(path: Path, what: str, limit: int, hint: str) -> tuple[int, int]:
    """An fd of ``path`` opened without blocking (a FIFO never waits), and its size: refused unless it is a
    regular file of at most ``limit`` bytes."""
    name = f"{what} {path}" if what else str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise MfnError(f"{name}: no such file", hint=hint) from None
    except OSError as e:
        raise from_os_error(e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MfnError(f"{name} is {kind_of(st.st_mode)}: refused, never waited on or read", hint=hint)
        if st.st_size > limit:
            raise TooLarge(
                f"{name} is {_size(st.st_size)}, over the {_size(limit)} a file of this kind holds: refused, unread",
                hint=hint,
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def regular_file(path: Path, what: str, limit: int, hint: str = "give the path of the file itself") -> int:
    """The size of ``path`` once it is known to be a regular file within ``limit`` bytes (for a library that
    opens the file itself: onnx, OpenCV)."""
    fd, size = _open_regular(Path(path), what, limit, hint)
    os.close(fd)
    return size


def read_bounded(path: Path, what: str, limit: int, hint: str = "give the path of the file itself") -> bytes:
    """The whole of ``path``: a regular file of at most ``limit`` bytes (a FIFO, a device such as /dev/zero or a
    huge sparse file is refused before it is read; a file that grows while read is cut at the limit and refused)."""
    fd, _ = _open_regular(Path(path), what, limit, hint)
    try:
        chunks, n = [], 0
        while n <= limit:
            b = os.read(fd, min(1 << 20, limit + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
    except OSError as e:
        raise from_os_error(e) from None
    finally:
        os.close(fd)
    if n > limit:
        name = f"{what} {path}" if what else str(path)
        raise TooLarge(f"{name} grew past {_size(limit)} while it was read: refused", hint=hint)
    return b"".join(chunks)


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
    """Strict JSON (a NaN or infinity is written as null: a strict reader never meets one)."""
    from mfnpatch.finite import finite

    atomic_write(path, json.dumps(finite(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


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
