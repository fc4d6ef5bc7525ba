"""One stage's process: spawn, tee to its log, parse live, stop at a planned point, stop on request.

``run_process`` is what the local runner and each Slurm job use to run a stage's command. The process gets
its own process group (so a stop reaches everything it starts) and, on Linux, SIGTERM if the runner dies.
Its output goes to the log as it comes; it is parsed at most ``PARSE_HZ`` times a second, in batches, so a
chatty process costs little (a stop point is seen at most 1/PARSE_HZ s late). A stop — planned, or asked for
by ``interrupted`` — freezes the process group between two saves (never while a symbol file is half
rewritten), then sends SIGTERM, and SIGKILL after ``TERM_GRACE`` seconds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.checkpoint import Checkpoint, StopPoint
from mfnpatch.logs.events import CheckpointWritten, Event, Summary
from mfnpatch.logs.parser import LogParser
from mfnpatch.runs.record import End

TERM_GRACE = 15.0  # seconds between SIGTERM and SIGKILL
SAVE_GRACE = 30.0  # at most this long, a stop waits for a save in progress to finish
PARSE_HZ = 10  # how often a running stage's new output is parsed


@dataclass
class ProcessResult:
    code: int | None  # None: could not be started
    end: End  # how it ended
    ended: str  # the same, in words
    summary: Summary
    stopped_at: str | None = None  # the planned stop point it reached ("checkpoint 2")
    interrupted: str | None = None  # the signal name that stopped it
    parse_cpu: float = 0.0  # CPU seconds the live parser took
    symbols: set[Path] = field(default_factory=set)


def reached(stop: StopPoint | None, ev: Event, cwd: Path) -> str | None:
    """The planned stop point, if ``ev`` reaches it (a checkpoint counts once both its files are on disk)."""
    if stop is None:
        return None
    kind, n = stop.kind, stop.value
    if kind == "checkpoint" and isinstance(ev, CheckpointWritten) and ev.number is not None and ev.number >= n:
        ck = Checkpoint.from_params(ev.path)
        if ck is not None and ck.exists(cwd):
            return f"checkpoint {ev.number}"
    if kind == "step":
        step = getattr(ev, "step", None)
        if isinstance(step, int) and step >= n:
            return f"step {step}"
    return None


def run_process(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    log: Path,
    stop: StopPoint | None,
    on_events: Callable[[list[Event]], None],
    *,
    interrupted: Callable[[], str | None] = lambda: None,
    on_output: Callable[[bytes], None] | None = None,
    tripped: Callable[[], str | None] = lambda: None,
) -> ProcessResult:
    """Run ``argv`` in ``cwd`` with ``env``, appending its output (stdout and stderr) to ``log``; events go to
    ``on_events`` as they are parsed, in the process's own numbering; ``stop`` is checked in that numbering.
    ``interrupted()`` returns a signal name when the caller was asked to stop, ``tripped()`` why a sentinel
    fired on the events (the process is then stopped, as at a stop point: between two saves)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=_child_setup)  # fmt: skip
    parser = LogParser(events=True, path=str(log))
    symbols: set[Path] = set()  # the symbol files the trainer writes (rewritten in place at every save)
    stop_reason: str | None = None
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    pending = bytearray()
    last = 0.0
    parse_cpu = 0.0

    def process() -> None:
        nonlocal stop_reason, last, parse_cpu
        last = time.monotonic()
        if not pending:
            return
        data = bytes(pending)
        pending.clear()
        f.flush()
        if on_output is not None:
            on_output(data)
        t = time.process_time()
        events = parser.feed_bytes(data)
        parse_cpu += time.process_time() - t
        stop_at = None
        for i, ev in enumerate(events):
            if isinstance(ev, CheckpointWritten):
                ck = Checkpoint.from_params(ev.path)
                if ck is not None:
                    symbols.add(ck.at(cwd).symbol)
            if stop_reason is None and tripped() is None:
                stop_reason = reached(stop, ev, cwd)
                stop_at = i if stop_reason is not None else None
        if stop_at:  # whichever came first in the log ends the stage: a sentinel on an earlier line, or the stop
            on_events(events[:stop_at])
            if tripped() is not None:
                stop_reason = None
            events = events[stop_at:]
        if events:
            on_events(events)

    with open(log, "ab") as f:
        eof = False
        while not eof:
            r, _, _ = select.select([fd], [], [], 1.0 / PARSE_HZ)
            data = b""
            if r:
                data = os.read(fd, 1 << 16)
                if data:
                    f.write(data)
                    pending += data
                else:
                    eof = True
            saved = stop is not None and b"Saved checkpoint" in data  # a stop point may have come: look now
            if eof or saved or time.monotonic() - last >= 1.0 / PARSE_HZ or len(pending) > (1 << 20):
                process()
            elif data and len(data) < (1 << 16) and stop_reason is None and interrupted() is None:
                # little output: let more collect in the pipe until the next tick (a full read skips this)
                time.sleep(max(0.0, last + 1.0 / PARSE_HZ - time.monotonic()))
            if stop_reason is None and interrupted() is None and tripped() is None:
                continue
            terminate(proc, symbols)
            while True:  # drain what the process printed before it ended
                r, _, _ = select.select([fd], [], [], 1.0)
                if not r:
                    break
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                f.write(chunk)
                pending += chunk
            process()
            break
        parser.close()
    code = proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    summary = parser.summary()
    signalled = interrupted()
    sentinel = tripped()
    end: End
    if signalled:
        end, ended = "interrupted", f"interrupted ({signalled}); the process was stopped"
    elif sentinel and not stop_reason:
        end, ended = "sentinel", f"stopped by mfnpatch: {sentinel}"
    elif stop_reason:
        end, ended = "stopped", f"stopped at {stop_reason} (planned), by mfnpatch"
    elif code == 0:
        end, ended = "exited", "exited 0"
    else:
        why = summary.how_it_ended() if summary.ending else ""
        end, ended = "exited", f"exited {code}" + (f": {why}" if why else "")
    return ProcessResult(code, end, ended, summary, stop_reason, signalled, parse_cpu, symbols)


def terminate(proc: subprocess.Popen, symbols: set[Path] = frozenset()) -> None:  # type: ignore[assignment]
    """Stop a process group between two saves: frozen (SIGSTOP) at a moment no symbol file is half rewritten
    (the pinned code rewrites PREFIX-symbol.json in place at every save), then SIGTERM, which it meets before
    it can write again; SIGKILL after TERM_GRACE."""
    if proc.poll() is not None:
        return
    try:
        deadline = time.monotonic() + SAVE_GRACE
        while True:
            os.killpg(proc.pid, signal.SIGSTOP)
            if time.monotonic() > deadline or all(_whole_json(p) for p in symbols):
                break
            os.killpg(proc.pid, signal.SIGCONT)  # in the middle of a save: let it finish
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        return
    try:
        proc.wait(TERM_GRACE)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _whole_json(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
        return True
    except FileNotFoundError:
        return True  # nothing there to be half written
    except (OSError, ValueError):
        return False


def _child_setup() -> None:
    """In the stage's process before exec: its own process group (so a stop reaches everything it starts),
    and on Linux SIGTERM when the runner dies, even by SIGKILL (no orphan trains on unwatched)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
