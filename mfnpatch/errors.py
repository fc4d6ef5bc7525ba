"""One exception family for everything a user can get wrong, with the next command to try.

The CLI prints ``error: <message>``, any detail lines, then ``hint: <hint>`` and exits with
``exit_code``. A traceback is shown only under ``--debug``.
"""

from __future__ import annotations

# Exit codes (documented in README.md, "Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NOTHING_TO_DO = 2  # like quilt: the request is already satisfied
EXIT_USAGE = 64  # sysexits EX_USAGE: bad flags or arguments
EXIT_INTERNAL = 70  # sysexits EX_SOFTWARE: a bug of mfnpatch (an internal error; the traceback under --debug)
EXIT_INTERRUPTED = 130


class MfnError(Exception):
    """A failure the user can act on: what went wrong, optional detail lines, and a hint."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details or [])

    def to_dict(self) -> dict:
        return {
            "error": self.message,
            "hint": self.hint,
            "details": self.details,
            "exit_code": self.exit_code,
            "kind": type(self).__name__,
        }


class UsageError(MfnError):
    exit_code = EXIT_USAGE


class Interrupted(MfnError):
    exit_code = EXIT_INTERRUPTED


_OS_HINTS = {
    "EACCES": "check the permissions of {path} (ls -l), or work in a directory you own",
    "EPERM": "the file may be immutable or owned by another user (lsattr, ls -l {path})",
    "EROFS": "{path} is on a read-only file system: choose a writable location",
    "ENOSPC": "the disk is full: free some space and run the command again",
    "EDQUOT": "the disk quota is exhausted: free some space and run the command again",
    "EISDIR": "{path} is a directory: give a file path",
    "ENOTDIR": "a component of {path} is a file, not a directory",
    "ENOENT": "{path} does not exist: check the path",
    "ENAMETOOLONG": "the path is too long: choose a shorter one",
    "EMFILE": "too many open files: raise the limit (ulimit -n) and run again",
}


def from_os_error(e: OSError) -> MfnError:
    """An ordinary failure of the file system (permissions, a read-only or full disk...) as a clear error."""
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    path = e.filename if e.filename is not None else "the file"
    where = f": {e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename is not None else ""
    hint = _OS_HINTS.get(name, "run with --debug for the details").format(path=path)
    return MfnError(f"{e.strerror or e}{where}", hint=hint)
