"""The end of a stage, decided (pure): ``stage_checks`` judges it on facts gathered before
(``mfnpatch.verify.facts``), ``stage_outcome`` says how its process ended; both decide from values alone, so
they can be tested (and reasoned about) without a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from mfnpatch.checkpoint import StopPoint
from mfnpatch.logs.expected import Expectation
from mfnpatch.logs.verdicts import Check, StageFacts, evaluate_stage
from mfnpatch.runs.record import End, StageStatus


def stage_checks(name: str, ended: str, expectations: list[Expectation], facts: StageFacts) -> list[Check]:
    """A stage that ended as planned: its exit check, then its expectations."""
    exit_check = Check("exit", "pass", f"{name}: {ended}", True, "planned stop or exit 0", ended, "stage")
    return [exit_check, *evaluate_stage(expectations, facts)]


@dataclass
class Outcome:
    status: StageStatus  # done, failed or interrupted
    ended: str


def stage_outcome(
    kind: str,
    code: int | None,
    end: End,
    ended: str,
    interrupted: bool,
    stop: StopPoint | None,
    checkpoints_saved: set[int],
) -> Outcome:
    """How a stage's process ended, as the run record says it: interrupted (a signal to the runner), done (a
    planned stop, or exit 0 — a training stage with a checkpoint stop point must have saved it), else failed."""
    if interrupted:
        return Outcome("interrupted", ended)
    if not (end == "stopped" or (end == "exited" and code == 0)):
        return Outcome("failed", ended)
    if (
        kind == "train"
        and stop
        and stop.kind == "checkpoint"
        and end == "exited"
        and stop.value not in checkpoints_saved
    ):
        return Outcome("failed", f"{ended}, before its stop point (checkpoint {stop.value})")
    return Outcome("done", ended)
