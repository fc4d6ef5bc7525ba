"""A run seen from outside: one row per stage for `recipe status` (progress from the logs as they grow, a
job's state when the caller has it), whether the record is stale, and cancelling a local run.
"""

from __future__ import annotations

import os
import platform
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mfnpatch.errors import EXIT_NOTHING_TO_DO, EXIT_OK
from mfnpatch.runs.handover import verbose_of
from mfnpatch.runs.record import RunError, RunRecord, load_record, record_lock
from mfnpatch.runs.summaries import stage_summary


@dataclass(frozen=True)
class JobState:
    """A Slurm job's state as the cluster reports it; ``active``: queued, running or about to run again."""

    state: str
    reason: str = ""
    active: bool = False
    time: str = ""
    node: str = ""

    def __str__(self) -> str:
        return self.state + (f" ({self.reason})" if self.reason not in ("", "None") else "")


def live_rows(run_dir: Path, rec: RunRecord, states: dict[str, JobState] | None = None) -> list[dict]:
    """One row per stage: status, how it ended, checks, the job's state (``states``: job id -> state), and for a
    training stage the step and accuracies its log shows now."""
    rows = []
    for s in rec.stages:
        row: dict[str, Any] = {"stage": s.name, "status": s.status, "ended": s.ended or s.skipped or ""}
        if s.job:
            row["job"] = s.job.id
            st = (states or {}).get(s.job.id)
            if st:
                row["job_state"], row["job_active"] = str(st), st.active
            if len(s.attempts) > 1:
                row["requeued"] = len(s.attempts) - 1
        if s.checks:
            row["checks"] = f"{sum(c.verdict == 'pass' for c in s.checks)}/{len(s.checks)}"
        if s.kind == "train" and s.status in ("running", "interrupted", "done", "failed") and s.log:
            summ = stage_summary(run_dir, s)
            if summ is not None:
                row["step"] = summ.last_step
                if s.stop and s.stop.kind == "checkpoint":
                    row["total"] = s.stop.value * verbose_of(s.argv)
                elif s.stop:
                    row["total"] = s.stop.value
                row["accuracy"] = {t: x.last_accuracy for t, x in summ.targets().items()}
        rows.append(row)
    return rows


def stale(rec: RunRecord, rows: list[dict]) -> list[str] | None:
    """A Slurm run whose record says queued or running while Slurm runs no job of it: the jobs that ended
    without recording (their stage and job id), else None. A local run, or a finished one, is never stale."""
    queued = any(r.get("job_active") for r in rows)
    if rec.status in ("passed", "failed", "cancelled", "incomplete", "interrupted") or queued:
        return None
    if rec.executor.kind != "slurm" or not any(r.get("job") for r in rows):
        return None
    return [f"{r['stage']} (job {r['job']}: {r.get('job_state') or 'gone'})" for r in rows
            if r.get("job") and r["status"] in ("queued", "running")]  # fmt: skip


def finished(rec: RunRecord, rows: list[dict]) -> bool:
    """Nothing of the run is queued or running any more (what `recipe status --follow` waits for)."""
    queued = any(r.get("job_active") for r in rows)
    if rec.status in ("passed", "failed", "cancelled", "incomplete", "interrupted"):
        return not queued
    return stale(rec, rows) is not None


@dataclass
class CancelResult:
    kind: str
    cancelled_jobs: list[str]
    signalled_pid: int | None
    stages: list[str]
    message: str

    @property
    def nothing(self) -> bool:
        return not self.cancelled_jobs and self.signalled_pid is None

    @property
    def exit_code(self) -> int:
        """0 when something was cancelled, 2 when nothing was queued or running."""
        return EXIT_NOTHING_TO_DO if self.nothing else EXIT_OK

    def to_dict(self) -> dict:
        return asdict(self)


def cancel_local(run_dir: Path) -> CancelResult:
    """Stop a run a local runner is running (on this machine): SIGTERM to the runner, which stops the stage and
    records it as interrupted."""
    with record_lock(run_dir):
        rec = load_record(run_dir)
    pid, host = rec.executor.pid, rec.executor.host
    if rec.status != "running" or not pid:
        return CancelResult("local", [], None, [], f"the run is {rec.status}: nothing to cancel")
    if host and host != platform.node():
        raise RunError(f"the run is running on {host}, not here", hint=f"run mfnpatch recipe cancel on {host}")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return CancelResult("local", [], None, [], f"its runner (pid {pid}) is no longer running")
    if b"mfnpatch" not in cmdline:
        return CancelResult("local", [], None, [], f"pid {pid} is no longer this run's runner")
    os.kill(int(pid), signal.SIGTERM)
    return CancelResult(
        "local",
        [],
        int(pid),
        [s.name for s in rec.stages if s.status == "running"],
        f"sent SIGTERM to the runner (pid {pid}); it stops the stage and records it as interrupted",
    )
