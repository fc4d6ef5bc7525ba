"""Verdicts: checks of a training log against the seed's expected results, a reference log, and a stage's
expectations. Pure: everything a check needs (the log's summary, reference summaries, values read from
result files) is gathered by the caller and passed in.

Every check says ``pass``, ``fail``, ``unmeasured`` (the log does not show it: never a pass) or ``n/a``,
and states its rule.

Rules against the stage's expected results (recipes/expected.yaml, the seed's own words):

* "at least" (以上, 至少) and "best reached": a floor. The run's best must reach the value (minus the
  recipe's tolerance, when it gives one); doing better passes.
* "about" (左右): passes from ``value - tolerance`` upward; a best above ``value + tolerance`` is noted
  ("above the band"), not failed.
* a logged value (``accuracy`` ± ``std``): within the tolerance on both sides.

The rule against a reference log:

* every (target, step) the reference verified is a required check: the log must have verified the same
  target at the same (stage) step, with ``|accuracy - reference| <= tolerance``. The tolerance is the
  reference's own ``±`` std at that step, or ``--tolerance`` (absolute) when given. Missing: unmeasured.
* every target's best accuracy is a required check, one-sided: the log's best must reach the reference's
  best minus the same tolerance (a reproduction may do better, not worse).
* configuration keys (the ``Namespace``) that differ are findings, listed but not failing; a reference
  without a configuration (an excerpt) is noted as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as model

from mfnpatch.errors import MfnError
from mfnpatch.logs.events import Summary
from mfnpatch.logs.expected import Expectation, Expected, _from_expected, load_expected, seed_rule

Verdict = Literal["pass", "fail", "unmeasured", "n/a"]
STEP_RULE = "the reference's (target, step) within ± tolerance (its std, or --tolerance), at the same stage step"
BEST_RULE = "one-sided: the log's best reaches the reference's best − tolerance; better passes"

# Namespace keys that name where things are, not how the run trains: differences are expected.
LOCATION_KEYS = {"data_dir", "prefix", "output_dir", "work_dir", "log_dir", "pretrained", "num_gpus", "ctx_num"}


# --------------------------------------------------------------------------------------------
# Checks


@model(config=ConfigDict(extra="forbid"))
class Check:
    """One check and its verdict: what a verification prints and what a run record keeps of each stage check."""

    id: str
    verdict: Verdict
    message: str
    required: bool = True
    expected: Any = None
    actual: Any = None
    group: str = "reference"
    rule: str = ""
    target: str | None = None
    step: int | None = None
    above_band: bool = False  # an "about" value passed, above its band: better than the seed says (a note)

    def to_dict(self) -> dict:
        return asdict(self) | {"found": self.actual, "at_step": self.step}


def compare_to_reference(
    log: Summary, ref: Summary, ref_name: str, tolerance: float | None = None, steps_unknown: str | None = None
) -> list[Check]:
    """The log (in stage steps) against a reference log. ``steps_unknown``: why the log's steps cannot be
    mapped to stage steps (a resumed run); its step-wise checks are then unmeasured, never passed."""
    checks: list[Check] = []
    if not ref.verifications:
        raise MfnError(
            f"reference {ref_name} has no verification lines",
            hint="a reference is a training log with [target][step]Accuracy-Flip lines",
        )
    for target in ref.verifications:
        for step, (racc, rstd, _) in sorted(ref.verifications[target].items()):
            tol = tolerance if tolerance is not None else rstd
            expected = f"{racc:.5f} ± {tol:.5f}"
            cid = f"{target}@{step}"
            if steps_unknown:
                checks.append(Check(cid, "unmeasured", f"{target} at step {step}: {steps_unknown}; expected {expected}",
                                    True, expected, None, rule=STEP_RULE, target=target, step=step))  # fmt: skip
                continue
            got = log.verifications.get(target, {}).get(step)
            if got is None:
                why = "the log never verified " + (target if target not in log.verifications else f"{target} at {step}")
                checks.append(
                    Check(
                        cid,
                        "unmeasured",
                        f"{target} at step {step}: not in the log ({why}); expected {expected}",
                        True,
                        expected,
                        None,
                        rule=STEP_RULE,
                        target=target,
                        step=step,
                    )
                )
                continue
            acc = got[0]
            ok = abs(acc - racc) <= tol + 1e-12
            checks.append(
                Check(
                    cid,
                    "pass" if ok else "fail",
                    f"{target} at step {step}: {acc:.5f}, expected {expected} (reference {ref_name})",
                    True,
                    expected,
                    round(acc, 6),
                    rule=STEP_RULE,
                    target=target,
                    step=step,
                )
            )
    rt = ref.targets()
    lt = log.targets()
    for target, r in rt.items():
        tol = tolerance if tolerance is not None else r.best_std
        expected = f">= {r.best_accuracy - tol:.5f}"
        why = f"reference best {r.best_accuracy:.5f} at step {r.best_step} − {tol:.5f}"
        cid = f"best {target}"
        if target not in lt:
            checks.append(
                Check(
                    cid,
                    "unmeasured",
                    f"best {target}: the log never verified {target} ({why})",
                    True,
                    expected,
                    rule=BEST_RULE,
                    target=target,
                )  # fmt: skip
            )
            continue
        b = lt[target]
        ok = b.best_accuracy >= r.best_accuracy - tol - 1e-12
        checks.append(
            Check(
                cid,
                "pass" if ok else "fail",
                f"best {target}: {b.best_accuracy:.5f} at step {b.best_step}, expected {expected} ({why})",
                True,
                expected,
                round(b.best_accuracy, 6),
                rule=BEST_RULE,
                target=target,
                step=b.best_step,
            )
        )
    return checks


def shift_summary(s: Summary, offset: int) -> Summary:
    """A summary in stage steps: every step of a resumed run's log + ``offset``."""
    if not offset:
        return s
    return replace(
        s,
        verifications={t: {st + offset: v for st, v in steps.items()} for t, steps in s.verifications.items()},
        checkpoints={n: {**c, "step": c["step"] + offset if c.get("step") is not None else None}
                     for n, c in s.checkpoints.items()},
        train_curve=[(st + offset if st is not None else None, a) for st, a in s.train_curve],
        lr_changes={st + offset: lr for st, lr in s.lr_changes.items()},
        lr_points={st + offset: lr for st, lr in s.lr_points.items()},
        last_step=s.last_step + offset if s.last_step is not None else None,
        highest=(s.highest[0] + offset, s.highest[1]) if s.highest else None,
    )  # fmt: skip


def scale_summary(s: Summary, factor: float) -> Summary:
    """A summary whose steps are counted in another run's batches: step x ``factor`` (the log's total batch over
    the other's), so that the same step means the same number of samples seen."""
    if factor == 1:
        return s

    def st(x: int) -> int:
        return round(x * factor)

    return replace(
        s,
        verifications={t: {st(k): v for k, v in steps.items()} for t, steps in s.verifications.items()},
        checkpoints={n: {**c, "step": st(c["step"]) if c.get("step") is not None else None}
                     for n, c in s.checkpoints.items()},
        train_curve=[(st(k) if k is not None else None, a) for k, a in s.train_curve],
        lr_changes={st(k): lr for k, lr in s.lr_changes.items()},
        lr_points={st(k): lr for k, lr in s.lr_points.items()},
        last_step=st(s.last_step) if s.last_step is not None else None,
        highest=(st(s.highest[0]), s.highest[1]) if s.highest else None,
    )  # fmt: skip


def config_findings(log: Summary, ref: Summary) -> list[str]:
    if ref.config is None:
        return ["the reference has no configuration line (an excerpt): configuration not compared"]
    if log.config is None:
        return ["the log has no 'Called with argument' line: configuration not compared"]
    out = []
    for key in sorted(set(log.config) | set(ref.config)):
        a, b = log.config.get(key, "(absent)"), ref.config.get(key, "(absent)")
        if a != b:
            kind = "location" if key in LOCATION_KEYS else "training"
            out.append(f"config {key}: {a!r} in the log, {b!r} in the reference ({kind} setting)")
    return out


def _value_at(s: Summary, target: str, at: str) -> tuple[float | None, int | None]:
    steps = s.verifications.get(target) or {}
    if not steps:
        return None, None
    if at == "best":
        step, v = max(steps.items(), key=lambda kv: (kv[1][0], -kv[0]))
        return v[0], step
    if at == "last":
        step = max(steps)
        return steps[step][0], step
    if at.startswith("step:"):
        step = int(at.split(":", 1)[1])
        return (steps[step][0], step) if step in steps else (None, step)
    raise MfnError(f"expectation at: {at!r}: write best, last or step:N")


@dataclass
class StageFacts:
    """What a stage's expectations are checked against, gathered by the caller (this module reads nothing):
    the stage's log summary, the reference logs its expectations name (name -> (summary, shown name)), and
    the values of the result files they name ((file, key) -> the value, or ``Unreadable(why)``)."""

    summary: Summary | None
    references: dict[str, tuple[Summary, str]] = field(default_factory=dict)
    results: dict[tuple[str, str | None], Any] = field(default_factory=dict)


class Unreadable(str):
    """A result value that could not be read: why (``not written`` = unmeasured, anything else = fail)."""


def result_value(data: Any, key: str | None) -> Any:
    """``key`` (dotted, list indices as numbers) in a result file's JSON; a list or dict counts its items."""
    for part in (key or "").split(".") if key else []:
        data = data[int(part)] if isinstance(data, list) else data[part]
    return len(data) if isinstance(data, list | dict) else data


def evaluate_stage(
    expectations: list[Expectation],
    facts: StageFacts,
    expected: Expected | None = None,
    steps_unknown: str | None = None,
) -> list[Check]:
    """Each recipe expectation of a stage -> a Check (pass/fail/unmeasured) that states its rule."""
    checks: list[Check] = []
    summary = facts.summary
    for e in expectations:
        group = "stage"
        if e.verified is not None:
            for t in e.verified:
                n = len((summary.verifications.get(t) if summary else None) or {})
                ok = n >= e.rounds_at_least
                checks.append(
                    Check(
                        f"{t} verified",
                        "pass" if ok else ("fail" if n else "unmeasured"),
                        f"{t} verified {n} time(s), expected at least {e.rounds_at_least}",
                        e.required,
                        f">= {e.rounds_at_least}",
                        n,
                        group,
                        rule=f"verified at least {e.rounds_at_least} time(s)",
                        target=t,
                    )
                )
            continue
        if e.reference is not None:
            if summary is None:
                checks.append(
                    Check(f"reference {e.reference}", "unmeasured", "no log to compare", e.required, group=group)
                )
                continue
            ref, name = facts.references[e.reference]
            for c in compare_to_reference(summary, ref, name, e.tolerance, steps_unknown):
                c.required, c.group = e.required, group
                checks.append(c)
            continue
        if e.json_file is not None:
            cid = f"{Path(e.json_file).name}:{e.key}"
            v = facts.results.get((e.json_file, e.key), Unreadable("not written"))
            if isinstance(v, Unreadable):
                missing = v == "not written"
                why = "not written" if missing else f"no {e.key} ({v})"
                checks.append(Check(cid, "unmeasured" if missing else "fail", f"{e.json_file}: {why}", e.required,
                                    group=group))  # fmt: skip
                continue
            checks.append(
                _compare(
                    cid,
                    f"{e.key} in {Path(e.json_file).name}",
                    v,
                    e.op,
                    e.value,
                    e.tolerance,
                    e.required,
                    group,
                    e.note,
                )
            )
            continue
        if e.metric == "train_acc":
            curve = [a for st, a in (summary.train_curve if summary else []) if st is not None]
            if len(curve) < 2:
                checks.append(
                    Check(
                        "train_acc rises",
                        "unmeasured",
                        f"training accuracy: {len(curve)} Speedometer point(s), need 2",
                        e.required,
                        group=group,
                        rule="the last quarter's mean training accuracy above the first quarter's",
                        target="train_acc",
                    )
                )
                continue
            q = max(1, len(curve) // 4)
            first, last = sum(curve[:q]) / q, sum(curve[-q:]) / q
            ok = last > first
            checks.append(
                Check(
                    "train_acc rises",
                    "pass" if ok else "fail",
                    f"training accuracy {first:.4f} (first {q} point(s)) -> {last:.4f} (last {q})",
                    e.required,
                    f"> {first:.4f}",
                    round(last, 6),
                    group,
                    rule="the last quarter's mean training accuracy above the first quarter's",
                    target="train_acc",
                )
            )
            continue
        if e.metric is None:
            raise MfnError("an expectation needs metric, verified, reference or json")
        op: str = e.op
        value, tol = e.value, e.tolerance
        rule = None
        if e.from_ is not None:
            op, value, tol, rule = seed_rule(_from_expected(e.from_, expected or load_expected()), tol, e.from_)
        cid = f"{e.metric} {e.at}"
        if steps_unknown and e.at.startswith("step:"):
            checks.append(Check(cid, "unmeasured", f"{e.metric} at {e.at}: {steps_unknown}", e.required,
                                _expected_text(op, value, tol), None, group, rule or "", e.metric))  # fmt: skip
            continue
        got, step = _value_at(summary, e.metric, e.at) if summary else (None, None)
        if got is None:
            where = f" at step {step}" if step is not None else ""
            checks.append(
                Check(
                    cid,
                    "unmeasured",
                    f"{e.metric}{where}: not in the log",
                    e.required,
                    _expected_text(op, value, tol),
                    None,
                    group,
                    rule or _rule_text(op, value, tol),
                    e.metric,
                    step,
                )
            )
            continue
        label = f"{e.metric} ({e.at}, step {step})"
        c = _compare(cid, label, got, op, value, tol, e.required, group, e.note)
        c.target, c.step = e.metric, step
        if rule:
            c.rule = rule
        checks.append(c)
    return checks


def _expected_text(op, value, tol) -> str:
    if op == "~":
        return f"{value} ± {tol}"
    if op == "about":
        return f">= {float(value) - (tol or 0):.5g} (about {value} ± {tol})"
    if op == "rises":
        return "rises"
    if op == ">=" and tol:
        return f">= {float(value) - tol:.5g} ({value} − {tol})"
    return f"{op} {value}"


def _rule_text(op, value, tol) -> str:
    if op == "~":
        return f"within {value} ± {tol}"
    if op == "about":
        return f"about {value}: passes from {float(value) - (tol or 0):.5g} up; above the band is a note"
    if op in (">=", "<="):
        return f"{op} {value}" + (f" ({'−' if op == '>=' else '+'} tolerance {tol})" if tol else "")
    return op


def _compare(cid, label, got, op, value, tol, required, group, note="") -> Check:
    v = float(value) if value is not None else float("nan")
    g = float(got)
    extra = ""
    above = False
    if op == ">=":
        ok = g >= v - (tol or 0) - 1e-12
    elif op == "<=":
        ok = g <= v + (tol or 0) + 1e-12
    elif op == "~":
        ok = abs(g - v) <= (tol or 0) + 1e-12
    elif op == "about":
        ok = g >= v - (tol or 0) - 1e-12
        if g > v + (tol or 0) + 1e-12:
            above = True
            extra = f"; above the band ({v:g} ± {tol:g}): better than the seed says, not a failure"
    else:
        raise MfnError(f"expectation op {op!r} does not apply to {label}")
    shown = f"{got:.7g}" if isinstance(got, float) else got
    text = f"{label}: {shown}, expected {_expected_text(op, value, tol)}{extra}"
    return Check(
        cid,
        "pass" if ok else "fail",
        text + (f" — {note}" if note else ""),
        required,
        _expected_text(op, value, tol),
        got,
        group,
        _rule_text(op, value, tol),
        above_band=above,
    )
