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

    def render(self) -> str:
        """Plain text form, as the CLI prints it (used for golden-message tests)."""
        lines = [f"error: {self.message}"]
        lines += [f"  {d}" if d else "" for d in self.details]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class NothingToDo(MfnError):
    """The request is already satisfied; not a failure, but distinct from success."""

    exit_code = EXIT_NOTHING_TO_DO


class UsageError(MfnError):
    exit_code = EXIT_USAGE


class Interrupted(MfnError):
    exit_code = EXIT_INTERRUPTED
