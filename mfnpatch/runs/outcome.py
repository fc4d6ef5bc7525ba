"""The end of a stage: what its checks are judged on (gathered from disk here), and the decision (pure).

``gather_facts`` reads what a stage's expectations name: its log summary, the reference logs, the values of
the result files. ``stage_checks`` and ``stage_outcome`` decide from those values alone, so they can be
tested (and reasoned about) without a run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.logs.events import Summary
from mfnpatch.logs.expected import Expectation, resolve_reference
from mfnpatch.logs.parser import summarize
from mfnpatch.logs.verdicts import Check, StageFacts, Unreadable, evaluate_stage, result_value


def gather_facts(expectations: list[Expectation], summary: Summary | None, cwd: Path) -> StageFacts:
    """Read what ``expectations`` name: bundled or given reference logs, and result files (relative to cwd)."""
    facts = StageFacts(summary)
    for e in expectations:
        if e.reference is not None and e.reference not in facts.references:
            path, name = resolve_reference(e.reference)
            facts.references[e.reference] = (summarize(path), name)
        if e.json_file is not None:
            p = Path(e.json_file)
            p = p if p.is_absolute() else cwd / p
            try:
                value = result_value(json.loads(p.read_text()), e.key)
            except FileNotFoundError:
                value = Unreadable("not written")
            except (KeyError, IndexError, ValueError, TypeError, OSError) as err:
                value = Unreadable(str(err) or type(err).__name__)
            facts.results[(e.json_file, e.key)] = value
    return facts


def stage_checks(name: str, ended: str, expectations: list[Expectation], facts: StageFacts) -> list[Check]:
    """A stage that ended as planned: its exit check, then its expectations."""
    exit_check = Check("exit", "pass", f"{name}: {ended}", True, "planned stop or exit 0", ended, "stage")
    return [exit_check, *evaluate_stage(expectations, facts)]


@dataclass
class Outcome:
    status: str  # done | failed | interrupted
    ended: str


def stage_outcome(
    kind: str,
    code: int | None,
    ended: str,
    interrupted: bool,
    stop: tuple[str, int] | None,
    checkpoints_saved: set[int],
) -> Outcome:
    """How a stage's process ended, as the run record says it: interrupted (a signal to the runner), done (a
    planned stop, or exit 0 — a training stage with a checkpoint stop point must have saved it), else failed."""
    if interrupted:
        return Outcome("interrupted", ended)
    if not (ended.startswith("stopped at") or code == 0):
        return Outcome("failed", ended)
    if kind == "train" and stop and stop[0] == "checkpoint" and ended.startswith("exited"):
        if stop[1] not in checkpoints_saved:
            return Outcome("failed", f"{ended}, before its stop point (checkpoint {stop[1]})")
    return Outcome("done", ended)
