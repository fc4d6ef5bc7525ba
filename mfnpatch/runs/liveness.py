"""Whether a local run's runner still runs, and is the process its record names — before anything is sent to it.

A record's ``pid`` is only a number: the runner may have been killed (SIGKILL leaves the record saying
"running") and the number reused by any process of the user's. Before `recipe cancel` signals a pid, and
before `recipe status` calls a run running, the process must be this run's runner on all counts it can be
checked on, as a service manager checks a pid file:

* it holds the run's lock (``.NAME.mfnpatch-lock`` beside the run directory; on Linux the kernel's
  ``/proc/locks`` names the holder of the flock, without taking it);
* it started when the record says the runner started (its start time in clock ticks since boot, and the
  boot it started in: a pid reused after a reboot or later in the same boot has another);
* its command line is mfnpatch's ``recipe`` command;
* it is a process of this user, and not this process itself; a pid of 0 or below is none (kill(0) and
  kill(-N) would signal whole process groups), and pid 1 is never signalled (`recipe cancel` says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def run_lock_path(run_dir: Path) -> Path:
    """The run's lock, beside its directory, so the run directory holds only the run."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.mfnpatch-lock"


def boot_id() -> str | None:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (field 22 of /proc/PID/stat), None when unknown."""
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces and parentheses
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def flock_holders(path: Path) -> set[int] | None:
    """The pids holding a flock on ``path`` (from /proc/locks), None when the kernel does not say."""
    try:
        st = os.stat(path)
        text = (PROC / "locks").read_text()
    except OSError:
        return None
    want = st.st_ino
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{want}"
    holders = set()
    for line in text.splitlines():
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == dev and parts[4].isdigit():
            holders.add(int(parts[4]))
    return holders


@dataclass(frozen=True)
class RunnerSeen:
    """A local runner as seen from outside: ``alive`` only when every check says it is this run's runner."""

    pid: int | None
    alive: bool
    why: str  # when not alive: why not, in words ("runner pid 123 gone")


def identify(run_dir: Path, pid: int | None, started: int | None = None, boot: str | None = None) -> RunnerSeen:
    """Whether ``pid`` is the runner of the run in ``run_dir`` (``started``/``boot``: what the record says of
    the runner's start, when it says)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:  # kill(0) and kill(-N) signal whole groups
        return RunnerSeen(pid, False, f"runner pid {pid!r} gone (the record's pid is not a process's)")
    if pid == os.getpid():
        return RunnerSeen(pid, False, f"the record's runner pid {pid} is this process")
    proc = PROC / str(pid)
    try:
        owner = os.stat(proc).st_uid
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return RunnerSeen(pid, False, f"runner pid {pid} gone")
    if owner != os.getuid():
        return RunnerSeen(pid, False, f"runner pid {pid} gone (pid {pid} is now another user's process)")
    if started is not None:
        now_boot = boot_id()
        if boot is not None and now_boot is not None and boot != now_boot:
            return RunnerSeen(pid, False, f"runner pid {pid} gone (the machine has rebooted since the run started)")
        ticks = start_ticks(pid)
        if ticks is not None and ticks != started:
            return RunnerSeen(pid, False, f"runner pid {pid} gone (pid {pid} is now another process, started later)")
    words = [os.path.basename(w) for w in cmdline if w]
    if not any(w.startswith(b"mfnpatch") for w in words) or b"recipe" not in words:
        shown = b" ".join([w for w in cmdline if w][:4]).decode("utf-8", "replace")[:80]
        return RunnerSeen(pid, False, f"runner pid {pid} gone (pid {pid} is now {shown!r})")
    holders = flock_holders(run_lock_path(run_dir))
    if holders is not None and pid not in holders:
        return RunnerSeen(pid, False, f"runner pid {pid} gone (pid {pid} does not hold the run's lock)")
    return RunnerSeen(pid, True, "")
