"""`mfnpatch verify`: a training log judged the way the seed's author would judge it.

The stage it ran is read from its own arguments and matched against the recipes (stagematch); a log that
continues its own stage from a checkpoint (a resumed run) has run-relative steps, mapped to stage steps
before any step-wise comparison, or reported unmeasured when the mapping cannot be known. The log is then
checked against that stage's expectations, a reference log when one is given, and patch sets (the rules:
mfnpatch.logs.verdicts). The verdict is ``pass`` only when every *required* check passes, ``fail`` when
a required check fails, else ``unmeasured``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.errors import EXIT_FAILURE, EXIT_OK, MfnError
from mfnpatch.logs.events import Summary
from mfnpatch.logs.evidence import evidence_checks, python_finding
from mfnpatch.logs.expected import load_expected, resolve_reference
from mfnpatch.logs.parser import summarize
from mfnpatch.logs.verdicts import (
    Check,
    Verdict,
    compare_to_reference,
    config_findings,
    evaluate_stage,
    scale_summary,
    shift_summary,
)
from mfnpatch.source.patchset import PatchSet
from mfnpatch.verify.explain import Explanation, seed_total_of, total_batch
from mfnpatch.verify.explain import explain as explain_run
from mfnpatch.verify.facts import gather_facts
from mfnpatch.verify.stagematch import StageMatch, detect_stage


@dataclass
class Verification:
    log: str
    reference: str | None
    rule: str
    checks: list[Check] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    match: StageMatch | None = None
    explanation: Explanation | None = None  # verify --explain

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def verdict(self) -> Verdict:
        required = [c for c in self.checks if c.required]
        if any(c.verdict == "fail" for c in required):
            return "fail"
        if required and all(c.verdict == "pass" for c in required):
            return "pass"
        return "unmeasured"

    @property
    def exit_code(self) -> int:
        """0 only on pass (a check failed or could not be measured: 1)."""
        return EXIT_OK if self.passed else EXIT_FAILURE

    @property
    def stage(self) -> str | None:
        return self.match.stage if self.match else None

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.checks if c.verdict == verdict)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.required and c.verdict != "pass"]

    @property
    def experiment(self) -> dict | None:
        """Whether the log ran the seed's experiment (the matched stage's settings), and which settings differ: a
        run of another experiment can pass the stage's floors, and its verdict must say it is not the seed's."""
        if self.match is None or self.match.signature is None:
            return None
        return {"same_as_seed": not self.match.settings, "differs": list(self.match.settings)}

    def to_dict(self) -> dict:
        return {
            "log": self.log,
            "stage": self.stage,
            "verdict": self.verdict,
            "experiment": self.experiment,
            "match": self.match.to_dict() if self.match else None,
            "reference": self.reference,
            "rule": self.rule,
            "passed": self.passed,
            "counts": {v: self.count(v) for v in ("pass", "fail", "unmeasured", "n/a")},
            "checks": [c.to_dict() for c in self.checks],
            "findings": self.findings,
            "explanation": self.explanation.to_dict() if self.explanation else None,
        }


RULES = (
    "stage targets: at least / best reached = a floor (better passes); about = passes from value − tolerance "
    "up, above the band is a note; reference: each (target, step) within ± tolerance at the same stage step, "
    "best per target at least reference best − tolerance; missing = unmeasured (never a pass)"
)


ONE_RUN_RULE = "one log, one run: one 'Called with argument' line and steps that only go forward"
WELL_FORMED_RULE = "every accuracy, its std and Accuracy-Highest are numbers in [0, 1]; every lr is finite and >= 0"


def _reference_stage(ref_spec: str, ref: Summary) -> str | None:
    expected = load_expected()
    if ref_spec in expected.references:
        return expected.references[ref_spec].stage
    return detect_stage(ref).stage if ref.config is not None else None


def verify(
    log_path: Path,
    reference: str | None,
    *,
    tolerance: float | None = None,
    sets: list[PatchSet] | None = None,
    checkpoint: str | None = None,
    recipe: str | None = None,
    profile: str | None = None,
    stage: str | None = None,
    start_step: int | None = None,
    explain: bool = False,
) -> Verification:
    """Judge a training log: by the recipe stage it ran (detected from its arguments, or ``stage``), against
    a reference log when one is given, and against patch sets."""
    log = summarize(log_path)
    several = log.several_runs
    if several:  # the lines of more than one run: no stage, no verdict on any of them
        v = Verification(log=str(log_path), reference=reference, rule=RULES,
                         match=StageMatch(None, [], [], None, "not detected: the log holds several runs"))  # fmt: skip
        v.checks.append(Check("one-run", "unmeasured", f"the log holds several runs: {several}; nothing judged",
                              rule=ONE_RUN_RULE, group="log"))  # fmt: skip
        v.findings.append("split the log into one file per run (each starts at its 'Called with argument' line)")
        return v
    match = detect_stage(log, recipe=recipe, profile=profile, stage=stage, start_step=start_step)
    if reference is None and not sets and match.signature is None:
        raise MfnError(
            f"nothing to verify against: {match.how}",
            hint="name the stage (--stage arcface [--recipe may16]), or give --reference REF and/or --patches SETS",
        )
    v = Verification(log=str(log_path), reference=reference, rule=RULES, match=match)
    if log.malformed_lines:  # a line no run prints: the log is not (only) a run's output
        v.checks.append(Check("well-formed", "fail",
                              f"{log.malformed_lines} verification line(s) hold values no run prints "
                              f"({log.malformed[0]}); they are not evidence", rule=WELL_FORMED_RULE,
                              group="log"))  # fmt: skip
        v.findings += [f"malformed: {m}" for m in log.malformed[1:]]
    if match.signature is not None:
        mine, seed_total = total_batch(log.config), seed_total_of(match.signature)
        said = any(d.startswith("total batch") for d in match.differences)
        if mine and seed_total and mine[0] != seed_total and not said:
            v.findings.append(f"total batch {mine[0]} ({mine[1]}), the recipe's stage {seed_total}: another "
                              "experiment (its steps see other numbers of samples; verify --explain says what else "
                              "differs)")  # fmt: skip
        sig = match.signature
        what = (
            "exactly"
            if not match.differences and not match.unread
            else (f"with {len(match.differences)} difference(s)" if match.differences else "on what the log has")
        )
        v.findings.append(f"stage: {sig.label} ({sig.title}), {what}: {match.how}")
        v.findings += [f"differs from {sig.label}: {d}" for d in match.differences]
        v.findings += match.notes
        if match.start:
            v.findings.append(f"start: {match.start}")
        if match.also:
            v.findings.append(f"just as close: {', '.join(match.also)}")
    else:
        v.findings.append(f"stage: unknown: {match.how}")
    steps_unknown = None
    if match.resumed is not None:
        v.findings.append(match.resumed.how)
        if match.offset is None:
            steps_unknown = "the log's steps are run-relative (a resumed run) and where they start is unknown"
    staged = shift_summary(log, match.offset or 0)
    if match.signature is not None:
        expectations = [e for e in match.signature.expect if not (reference and e.reference == reference)]
        v.checks += evaluate_stage(expectations, gather_facts(expectations, staged, Path.cwd()),
                                   steps_unknown=steps_unknown)  # fmt: skip
    ref: Summary | None = None
    ref_name: str | None = None
    if reference is not None:
        ref_path, ref_name = resolve_reference(reference)
        ref = summarize(ref_path)
        if ref.several_runs or ref.malformed_lines:
            why = ref.several_runs or f"{ref.malformed_lines} malformed line(s), {ref.malformed[0]}"
            raise MfnError(f"reference {ref_name} is not one run's log: {why}",
                           hint="give the log of one run as the reference")  # fmt: skip
        v.reference = ref_name
        rstage = _reference_stage(reference, ref)
        if rstage and match.stage and rstage != match.stage:
            v.findings.append(
                f"the reference is a {rstage} log, this log ran {match.stage}: their steps are different stages' steps"
            )
        against = staged
        mine, theirs = total_batch(log.config), total_batch(ref.config)
        ref_total = theirs[0] if theirs else (seed_total_of(match.signature) if match.signature else None)
        if mine and ref_total and mine[0] != ref_total:
            against = scale_summary(staged, mine[0] / ref_total)
            v.findings.append(f"total batch {mine[0]} in the log, {ref_total} in the reference"
                              + ("" if theirs else " (the seed's: the reference does not say)")
                              + f": compared at equal samples seen (log step s = reference step s x "
                              f"{mine[0] / ref_total:g})")  # fmt: skip
        v.checks += compare_to_reference(against, ref, ref_name, tolerance, steps_unknown)
        v.findings += config_findings(log, ref)
    if sets:
        v.checks += evidence_checks(log, sets, checkpoint)
        v.findings += python_finding(log, sets)
    if explain and match.signature is not None:
        if ref is None:  # the bundled reference of the stage, if there is one
            for name, r in load_expected().references.items():
                if r.stage == match.stage:
                    ref_path, ref_name = resolve_reference(name)
                    ref = summarize(ref_path)
                    break
        v.explanation = explain_run(staged, match.signature, ref, ref_name)
    elif explain:
        v.findings.append("--explain: the log matches no recipe stage, so there is no seed's stage to explain it by")
    if log.ending:
        v.findings.append(f"the run ended: {log.how_it_ended()}")
    if log.unknown_lines:
        sample = f", e.g. {log.unknown_sample!r}" if log.unknown_sample else ""
        v.findings.append(f"{log.unknown_lines} line(s) of the log were not recognised (counted, not parsed){sample}")
    return v
