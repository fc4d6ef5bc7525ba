"""`recipe status`: a run seen from outside, with Slurm's view of its jobs when it is a Slurm run, once or
followed until nothing of it is queued or running. The CLI renders each view it is given."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.cluster.slurm import SlurmError, job_states
from mfnpatch.errors import EXIT_FAILURE
from mfnpatch.runs.record import RunRecord, load_record
from mfnpatch.runs.status import finished, live_rows, stale


@dataclass
class RunView:
    rec: RunRecord
    rows: list[dict]
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return finished(self.rec, self.rows)

    @property
    def lost(self) -> list[str] | None:
        """A Slurm run whose record says it runs while no job of it does: the stages that ended unrecorded."""
        return stale(self.rec, self.rows)

    def exit_code(self, followed: bool) -> int:
        """The run's (``RunRecord.exit_code``); a stale record seen by ``--follow`` is a failure."""
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
    return RunView(rec, live_rows(run, rec, states), notes)


def watch(run: Path, follow: bool, interval: float) -> Iterator[RunView]:
    """The run now, and with ``follow`` again every ``interval`` seconds until it has finished."""
    view = look(run)
    yield view
    while follow and not view.finished:
        time.sleep(interval)
        view = look(run)
        yield view
