"""`recipe status`: a run seen from outside, with Slurm's view of its jobs when it is a Slurm run, once or
followed until nothing of it is queued or running. The CLI renders each view it is given."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.cluster.slurm import SlurmError, job_states
from mfnpatch.errors import EXIT_FAILURE, EXIT_INTERRUPTED
from mfnpatch.runs.liveness import RunnerSeen
from mfnpatch.runs.record import RunRecord, load_record
from mfnpatch.runs.status import finished, live_rows, runner_of, stale


@dataclass
class RunView:
    rec: RunRecord
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    runner: RunnerSeen | None = None  # a local run said to be running here: whether its runner still is

    @property
    def gone(self) -> bool:
        """The record says running, but its local runner is gone (killed outright: nothing could record it)."""
        return self.runner is not None and not self.runner.alive

    @property
    def status(self) -> str:
        """The run's status as seen now: the record's, or "interrupted (runner pid N gone)"."""
        return f"interrupted ({self.runner.why})" if self.gone and self.runner else self.rec.status

    @property
    def finished(self) -> bool:
        return self.gone or finished(self.rec, self.rows)

    @property
    def lost(self) -> list[str] | None:
        """A Slurm run whose record says it runs while no job of it does: the stages that ended unrecorded."""
        return stale(self.rec, self.rows)

    def exit_code(self, followed: bool) -> int:
        """The run's (``RunRecord.exit_code``); a stale record seen by ``--follow`` is a failure, a runner gone
        an interruption."""
        if self.gone:
            return EXIT_INTERRUPTED
        return EXIT_FAILURE if followed and self.lost is not None else self.rec.exit_code


def look(run: Path) -> RunView:
    rec = load_record(run)
    notes: list[str] = []
    states = {}
    ids = [s.job.id for s in rec.stages if s.job]
    if ids and rec.executor.kind == "slurm":
        try:
            states = job_states(ids)
        except SlurmError as e:
            notes.append(e.message)
    rows = live_rows(run, rec, states)
    seen = runner_of(run, rec)
    if seen is not None and not seen.alive:
        for r in rows:
            if r["status"] == "running":
                r["status"], r["ended"] = "interrupted", f"interrupted ({seen.why})"
    return RunView(rec, rows, notes, seen)


def watch(run: Path, follow: bool, interval: float) -> Iterator[RunView]:
    """The run now, and with ``follow`` again every ``interval`` seconds until it has finished."""
    view = look(run)
    yield view
    while follow and not view.finished:
        time.sleep(interval)
        view = look(run)
        yield view
