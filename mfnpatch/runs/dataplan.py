"""The training data of a run: which dataset each training stage reads, which stage of the run makes it, and
the record of each check — before the first stage starts (the pre-flight), or right after the stage that
makes it (the smoke profile's ``data`` stage).

The check itself is ``mfnpatch.datasets`` (``data check``), which the CLI gives the runner as a callable
(``RunOptions.data_checker``), as it gives the environment's doctor: ``checker(path, targets, variant)``
returns a dict with ``ok``, ``summary``, ``problems``, ``warnings``, ``hint``, ``variant`` (its name),
``fingerprint`` and ``seconds``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mfnpatch.logs.verdicts import Check
from mfnpatch.recipes.expand import Plan, PlannedStage
from mfnpatch.runs.record import DataFingerprint, DatasetRecord, RunError, RunRecord, StageRecord, now

Checker = Callable[[Path, list[str], "str | None"], dict]


@dataclass
class DataUse:
    """One dataset and the training stages that read it."""

    path: Path  # resolved against the tree the stages run in
    stages: list[str]
    targets: list[str]
    variant: str | None
    made_by: str | None  # an earlier, not skipped stage of this run whose output it is


def data_uses(plan: Plan, tree_root: Path) -> list[DataUse]:
    uses: dict[Path, DataUse] = {}
    outputs: dict[Path, str] = {}
    for s in plan.stages:
        if s.skipped:
            continue
        base = Path(tree_root) / s.cwd
        if s.data is not None and s.kind == "train":
            p = Path(_resolved(base / s.data.dir))
            if p in uses:
                u = uses[p]
                u.stages.append(s.name)
                u.targets += [t for t in s.data.targets if t not in u.targets]
                u.variant = u.variant or s.data.variant
            else:
                uses[p] = DataUse(p, [s.name], list(s.data.targets), s.data.variant, outputs.get(p))
        for value in s.outputs.values():
            outputs.setdefault(Path(_resolved(base / value)), s.name)
    return list(uses.values())


def _resolved(p: Path) -> str:
    import os

    return os.path.normpath(p)


def unchecked(use: DataUse, check: Literal["skipped", "deferred"], why: str = "") -> DatasetRecord:
    """A dataset not checked: skipped (``why``), or deferred until the stage that makes it has run."""
    return DatasetRecord(dir=str(use.path), stages=list(use.stages), check=check, made_by=use.made_by,
                         expected_variant=use.variant, summary=why)  # fmt: skip


def record_of(use: DataUse, result: dict) -> DatasetRecord:
    """What the run record keeps of one dataset's check (``result`` from the checker)."""
    rec = unchecked(use, "skipped")
    rec.check = "passed" if result.get("ok") else "failed"
    rec.checked = now()
    rec.summary = str(result.get("summary", ""))
    rec.variant = result.get("variant")
    rec.problems = [str(p) for p in result.get("problems", [])]
    rec.warnings = [str(w) for w in result.get("warnings", [])]
    rec.seconds = result.get("seconds")
    if result.get("fingerprint"):
        rec.fingerprint = DataFingerprint.model_validate(result["fingerprint"])
    return rec


def refuse(records: list[DatasetRecord], hints: list[str]) -> None:
    """The pre-flight's verdict: a dataset that failed its check stops the run before anything starts."""
    failed = [r for r in records if r.check == "failed"]
    if not failed:
        return
    first = failed[0]
    problems = [p for r in failed for p in r.problems]
    head = problems[0] if problems else first.summary
    raise RunError(
        f"the data of stage{'s' * (len(first.stages) > 1)} {', '.join(first.stages)} failed its check: {head}",
        details=problems[1:] + [f"{r.dir}: {r.summary}" for r in failed[1:]],
        hint=(hints[0] if hints and hints[0] else "see: mfnpatch data check " + first.dir)
        + "; nothing was started (skip the check with --no-data-check, recorded)",
    )


def changed_since(previous: RunRecord, records: list[DatasetRecord]) -> list[str]:
    """A resumed run: what differs in each dataset from the fingerprint the run recorded."""
    old = {tuple(r.stages): r for r in previous.datasets if r.fingerprint is not None}
    out = []
    for r in records:
        before = old.get(tuple(r.stages))
        if before is None or before.fingerprint is None or r.fingerprint is None:
            continue
        out += [f"{', '.join(r.stages)}: {c}" for c in before.fingerprint.changes(r.fingerprint)]
    return out


def preflight(
    plan: Plan,
    previous: RunRecord | None,
    tree: Path,
    checker: Checker | None,
    why_not: str,
    force: bool,
    note: Callable[[str], None],
) -> list[DatasetRecord]:
    """Every training stage's data, checked before anything starts: a dataset that fails is refused (nothing
    written); one an earlier stage of this run makes is checked once that stage has made it; a resumed run
    whose data changed since it started is refused unless ``force``."""
    uses = data_uses(plan, tree)
    if checker is None:
        return [unchecked(u, "skipped", why_not) for u in uses]
    records, hints = [], []
    for u in uses:
        made = u.made_by is not None and previous is not None and _done(previous, u.made_by)
        if u.made_by is not None and not made:
            records.append(unchecked(u, "deferred"))
            continue
        result = checker(u.path, u.targets, u.variant)
        hints.append(str(result.get("hint") or ""))
        records.append(record_of(u, result))
    refuse(records, hints)
    if previous is not None:
        changed = changed_since(previous, records)
        if changed and not force:
            raise RunError(
                "the training data changed since this run started; refusing to resume; nothing changed",
                details=changed,
                hint="continue on the new data anyway with --force (recorded), or start a new run",
            )
        if changed:
            note(f"training data changed ({'; '.join(changed)}); continuing on it (--force)")
    for r in records:
        if r.check == "passed":
            note(f"data {r.dir}: {r.summary}")
    return records


def _done(rec: RunRecord, stage: str) -> bool:
    return any(s.name == stage and s.status == "done" for s in rec.stages)


def check_made_data(
    plan: Plan,
    ps: PlannedStage,
    srec: StageRecord,
    rec: RunRecord,
    tree_root: Path,
    checker: Checker,
    note: Callable[[str], None],
) -> None:
    """Data stage ``ps`` made for later stages, checked once it has ended well; the check is one of its checks."""
    if not srec.ok:
        return
    for u in data_uses(plan, tree_root):
        if u.made_by != ps.name:
            continue
        r = record_of(u, checker(u.path, u.targets, u.variant))
        rec.datasets = [x for x in rec.datasets if x.stages != r.stages] + [r]
        ok = r.check == "passed"
        srec.checks.append(
            Check(
                id="data check",
                verdict="pass" if ok else "fail",
                group="data",
                message=f"the data it made for {', '.join(u.stages)}: {r.summary}"
                + ("" if ok else ": " + "; ".join(r.problems[:3])),
            )
        )
        if not ok:
            srec.passed = False
        note(f"data {r.dir}: {r.summary}")
