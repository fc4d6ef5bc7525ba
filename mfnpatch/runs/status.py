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
from mfnpatch.runs.files import check_files
from mfnpatch.runs.handover import verbose_of
from mfnpatch.runs.liveness import RunnerSeen, identify
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
        if s.status == "done":
            bad = [c for c in check_files({**s.checkpoints, **s.files}, [run_dir, Path(rec.tree)]) if
                   c.state in ("changed", "outside")]  # fmt: skip
            if bad:
                row["changed"] = [f"{c.path} ({'changed since recorded' if c.state == 'changed' else 'outside'})"
                                  for c in bad]  # fmt: skip
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


def runner_of(run_dir: Path, rec: RunRecord) -> RunnerSeen | None:
    """A local run that its record says is running on this machine: whether its runner still is (None: not
    such a run, or on another host, where it cannot be seen from here)."""
    ex = rec.executor
    if ex.kind != "local" or rec.status != "running" or (ex.host and ex.host != platform.node()):
        return None
    return identify(Path(run_dir), ex.pid, ex.pid_started, ex.boot_id)


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
    host = rec.executor.host
    if rec.status != "running":
        return CancelResult("local", [], None, [], f"the run is {rec.status}: nothing to cancel")
    if host and host != platform.node():
        raise RunError(f"the run is running on {host}, not here", hint=f"run mfnpatch recipe cancel on {host}")
    seen = runner_of(run_dir, rec)
    if seen is None or not seen.alive:
        why = seen.why if seen is not None else "no runner recorded"
        return CancelResult("local", [], None, [], f"the run was interrupted ({why}): nothing signalled; "
                                                   f"continue it with --resume {run_dir}")  # fmt: skip
    pid = seen.pid  # identified above as this run's runner
    assert pid is not None
    if pid == 1:  # the init process of a container the runner is: signalling it is the container's business
        why = "the runner is pid 1 (a container's init process): nothing signalled; stop the container, or send it "
        return CancelResult("local", [], None, [], why + "SIGTERM yourself")
    os.kill(pid, signal.SIGTERM)
    return CancelResult(
        "local",
        [],
        pid,
        [s.name for s in rec.stages if s.status == "running"],
        f"sent SIGTERM to the runner (pid {pid}); it stops the stage and records it as interrupted",
    )
