"""The command line's shared parts: the Typer apps, the consoles, --json output, shared options, errors."""

from __future__ import annotations

import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from mfnpatch import __version__
from mfnpatch.errors import (
    EXIT_OK,
    MfnError,
    UsageError,
)
from mfnpatch.finite import finite


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Output to a closed pipe (``mfnpatch status | head``): stop quietly, exit 0, as git does on EPIPE (rich
        exits 1). What is still buffered goes to /dev/null, so nothing is said at exit either."""
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (sys.stderr if self.stderr else sys.stdout).fileno())
        raise BrokenPipeError


# emoji=False: a user's value such as ':x:' is printed as written, never as an emoji
out = _Console(highlight=False, soft_wrap=True, emoji=False)
err = _Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


class _Ctx:
    debug = False
    json = False


CTX = _Ctx()

HELP = """\
Reproduce MobileFaceNet on a pinned, patched InsightFace — each step one checked command.

\b
Start here:
  mfnpatch apply --commit 4bc8132                 fetch the pin, apply the recipe's patch set
  mfnpatch apply --commit 4bc8132 --series mfn,py3 --source ~/src/insightface
  mfnpatch status                                 what is applied, and what drifted
  mfnpatch recipe run may16 --profile smoke       the whole plan on the CPU, in minutes
  mfnpatch data check ~/datasets/faces_ms1m_112x112   is it the dataset the recipe expects
  mfnpatch recipe plan may16                      the exact commands of the seed's final plan
  mfnpatch log summary train.log                  what a training log says
  mfnpatch verify --log train.log --reference seed-2018-05-09-arcface-test2
  mfnpatch env check cu101                        the doctor: can this machine run that environment
  mfnpatch convert ncnn PREFIX,EPOCH -o out --verify   a checkpoint to ncnn, checked against MXNet
  mfnpatch convert evaluate out --data DATA       accuracy of every engine on lfw, cfp_fp, agedb_30

\b
Exit codes: 0 done, 1 failed, 2 nothing to do (already so), 64 bad usage, 70 internal error, 130 interrupted.
"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
patches_app = typer.Typer(help="List, show and lock the versioned patch sets.", no_args_is_help=True)
pin_app = typer.Typer(help="The pinned upstream commits (list; record a new pin).", no_args_is_help=True)
log_app = typer.Typer(help="Read training logs: summary and plots.", no_args_is_help=True)
recipe_app = typer.Typer(
    help="Dated training plans from the seed: list, show, plan (print exact commands), run, status.",
    no_args_is_help=True,
)
app.add_typer(recipe_app, name="recipe")
env_app = typer.Typer(
    help="Locked environments (cpu, cu101, cu112) and a doctor for this machine.", no_args_is_help=True
)
app.add_typer(env_app, name="env")
convert_app = typer.Typer(
    help="Slim a checkpoint, convert it to ncnn (BatchNorm folded and unfolded), verify the conversion, and "
    "evaluate every engine on the verification sets.",
    no_args_is_help=True,
)
app.add_typer(convert_app, name="convert")
deploy_app = typer.Typer(
    help="What an app needs to run the converted model: the reference face crop (deploy align).",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")
data_app = typer.Typer(
    help="Training data: check a dataset (data check), build one from your faces (data build), a synthetic one.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
app.add_typer(patches_app, name="patches")
app.add_typer(pin_app, name="pin")
app.add_typer(log_app, name="log")


def _version(value: bool):
    if value:
        out.print(f"mfnpatch {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and git's own output on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    CTX.debug = debug or bool(os.environ.get("MFNPATCH_DEBUG"))


def emit_json(obj: Any) -> None:
    """Results as JSON on stdout: strict JSON (never NaN or Infinity)."""
    write_stdout(json.dumps(finite(obj), indent=2, default=str, allow_nan=False) + "\n")


def write_stdout(text: str) -> None:
    """Text to stdout; a closed pipe ends the command quietly (see _Console.on_broken_pipe)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        out.on_broken_pipe()


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]
DestOpt = Annotated[
    Path,
    typer.Option("--dest", "-d", help="The InsightFace tree (created if absent).", show_default=True),
]
DEFAULT_DEST = Path("insightface")
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="A profile of the recipe (seed, smoke ...).")]
TreeOpt = Annotated[
    Path | None,
    typer.Option(
        "--tree",
        help="The patched InsightFace tree (made if absent); default: the recipe's pin's own "
        "(insightface for may16, insightface-0159b24 for mbf).",
    ),
]
SourceOpt = Annotated[str | None, typer.Option("--source", help="Where to fetch the pin (see apply).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a parameter, KEY=VALUE (repeatable); seed=N sets the run seed (default 0), "
        "seed=none runs unseeded.",
        metavar="KEY=VALUE",
    ),
]


PROGRESS_EVERY = float(os.environ.get("MFNPATCH_PROGRESS_EVERY", "30"))  # seconds between lines in a log


@contextmanager
def progress_bar(enabled: bool, lines: bool = False):
    """A rich progress bar on stderr (a terminal only); yields the ``progress(what, done, total)`` callback.
    ``lines``: where stderr is not a terminal (a log file, a recipe stage), a line when a task starts, one every
    PROGRESS_EVERY seconds with how far it is and an ETA, and one when it completes."""
    if not enabled or not err.is_terminal:
        if not (enabled and lines):
            yield None
            return
        import threading
        import time

        started: dict[str, float] = {}
        said: dict[str, float] = {}
        lock = threading.Lock()

        def line(what: str, done: int, total: int) -> None:
            now = time.perf_counter()
            with lock:
                if what not in started:
                    started[what] = said[what] = now
                    err.print(f"{escape(what)}: 0/{total} …")
                    return
                took = now - started[what]
                if done >= total:
                    err.print(f"{escape(what)}: {total} in {took:.1f} s")
                elif now - said[what] >= PROGRESS_EVERY and done > 0:
                    said[what] = now
                    eta = took / done * (total - done)
                    err.print(f"{escape(what)}: {done}/{total} in {took:.0f} s, about {eta:.0f} s to go")

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(escape(what), total=total)
        bar.update(tasks[what], completed=done, total=total)

    with bar:
        yield update


def _say(text: str) -> None:
    err.print(f"[yellow]note[/]: {escape(text)}")


def _check_tolerance(tolerance: float | None) -> None:

    if tolerance is not None and (not math.isfinite(tolerance) or tolerance < 0):
        raise UsageError(
            f"--tolerance {tolerance}: must be a finite number >= 0", hint="e.g. --tolerance 0.002 (accuracy)"
        )


def _show(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, dict):
        return ", ".join(f"{k}={v!r}" for k, v in x.items())
    return str(x)


# --------------------------------------------------------------------------------------------
# Entry point


def _print_error(e: MfnError) -> None:
    err.print(f"[bold red]error[/]: {escape(e.message)}")
    for d in e.details:
        err.print(f"  {escape(d)}")
    if e.hint:
        err.print(f"[yellow]hint[/]: {escape(e.hint)}")


_SIGNALLED: list[str] = []  # the signal that interrupted this command (the CLI says which)
