"""The command line: parses arguments, calls the core, renders with rich or --json, maps errors to exit codes.

No logic lives here beyond choosing what to show. One module per command family (source, logs, recipes,
environments, deploy), the progress view apart (progress), the shared parts in app.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

import typer
from rich.markup import escape

# the command families register their commands on the apps when they are imported, in --help's order
# isort: off
from mfnpatch.cli import source  # noqa: F401
from mfnpatch.cli import port  # noqa: F401
from mfnpatch.cli import logs  # noqa: F401
from mfnpatch.cli import recipes  # noqa: F401
from mfnpatch.cli import fit  # noqa: F401
from mfnpatch.cli import environments  # noqa: F401
from mfnpatch.cli import deploy  # noqa: F401
from mfnpatch.cli import data  # noqa: F401

# isort: on
from mfnpatch.cli.app import CTX, _print_error, app, emit_json, err
from mfnpatch.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, MfnError, from_os_error

_SIGNALLED: list[str] = []  # the signal that interrupted this command (the CLI says which)


def _interrupt(signum, frame):
    _SIGNALLED.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    # SIGTERM (kill, a service manager, `recipe cancel`) is handled like Ctrl-C: every transaction rolls
    # back and every temporary file goes (a recipe run installs its own handlers while it runs stages)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    code = run(argv)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away with output still buffered: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this)."""
    CTX.json = False
    try:
        rv = app(args=argv, prog_name="mfnpatch", standalone_mode=False)
        if _SIGNALLED:  # click turns KeyboardInterrupt into an exit code of its own, silently
            raise KeyboardInterrupt
        return rv if isinstance(rv, int) else EXIT_OK
    except MfnError as e:
        if CTX.debug:
            traceback.print_exc()
        if CTX.json:
            emit_json(e.to_dict())
        _print_error(e)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()  # type: ignore[attr-defined]  # click's NoArgsIsHelpError prints the help
            return EXIT_USAGE
        err.print(f"[bold red]error[/]: {escape(e.format_message())}")
        ctx = getattr(e, "ctx", None)
        err.print(f"[yellow]hint[/]: see: {escape(ctx.command_path if ctx else 'mfnpatch')} --help")
        return EXIT_USAGE if getattr(e, "exit_code", 1) == 2 else e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        how = f" by {_SIGNALLED[0]}" if _SIGNALLED else ""
        err.print(f"[bold red]interrupted{how}[/]")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except SystemExit:  # click ends a command whose stdout pipe closed with exit 1 (after pacifying it)
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            return EXIT_OK
        raise
    except OSError as e:  # permissions, a read-only or full disk ...: ordinary, not a bug
        if CTX.debug:
            traceback.print_exc()
        me = from_os_error(e)
        if CTX.json:
            emit_json(me.to_dict())
        _print_error(me)
        return me.exit_code
    except Exception as e:  # a bug: say so plainly, with the traceback only under --debug
        if CTX.debug:
            traceback.print_exc()
        if type(e).__name__ == "GitCommandError":  # git itself failed (a corrupt repository, a full disk ...)
            stderr = (getattr(e, "stderr", "") or "").strip().splitlines()
            me = MfnError(
                f"git failed: {stderr[-1] if stderr else e}",
                hint="run with --debug for git's output; a corrupt tree or cache can be removed and made again",
            )
            if CTX.json:
                emit_json(me.to_dict())
            _print_error(me)
            return me.exit_code
        err.print(f"[bold red]internal error[/]: {escape(type(e).__name__)}: {escape(str(e))}")
        err.print("[yellow]hint[/]: rerun with --debug for the traceback and report it")
        return EXIT_INTERNAL
