"""Expected results and verdicts: a training log judged by the recipe stage it ran, against a reference
log, and against a patch set.

Every check says ``pass``, ``fail``, ``unmeasured`` (the log does not show it: never a pass) or ``n/a``,
and states its rule. A verification's verdict is ``pass`` only when every *required* check passes, ``fail``
when a required check fails, else ``unmeasured``.

Which stage: read from the log's own arguments and matched against the recipes (mfnpatch.logs.stagematch);
``--stage``/``--recipe`` override. A log that continues its own stage from a checkpoint (a resumed run)
has run-relative steps: they are mapped to stage steps before any step-wise comparison, or reported
unmeasured when the mapping cannot be known.

Rules against the stage's expected results (recipes/expected.yaml, the seed's own words):

* "at least" (以上, 至少) and "best reached": a floor. The run's best must reach the value (minus the
  recipe's tolerance, when it gives one); doing better passes.
* "about" (左右): passes from ``value - tolerance`` upward; a best above ``value + tolerance`` is noted
  ("above the band"), not failed.
* a logged value (``accuracy`` ± ``std``): within the tolerance on both sides.

The rule against a reference log (``--reference REF``), as before:

* every (target, step) the reference verified is a required check: the log must have verified the same
  target at the same (stage) step, with ``|accuracy - reference| <= tolerance``. The tolerance is the
  reference's own ``±`` std at that step, or ``--tolerance`` (absolute) when given. Missing: unmeasured.
* every target's best accuracy is a required check, one-sided: the log's best must reach the reference's
  best minus the same tolerance (a reproduction may do better, not worse).
* configuration keys (the ``Namespace``) that differ are findings, listed but not failing; a reference
  without a configuration (an excerpt) is noted as such.
* with ``--patches``: each set's evidence (in its ``set.yaml``) is checked against the log's
  configuration, its Python version and the checkpoint symbol; what cannot be observed is listed as
  "could not be checked", and does not fail the verification.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mfnpatch.errors import MfnError
from mfnpatch.logs.parser import Summary, summarize
from mfnpatch.logs.stagematch import StageMatch, detect_stage
from mfnpatch.resources import data_dir
from mfnpatch.schema import Strict, load_model
from mfnpatch.source.patchset import Evidence, PatchSet

Verdict = Literal["pass", "fail", "unmeasured", "n/a"]
STEP_RULE = "the reference's (target, step) within ± tolerance (its std, or --tolerance), at the same stage step"
BEST_RULE = "one-sided: the log's best reaches the reference's best − tolerance; better passes"

# Namespace keys that name where things are, not how the run trains: differences are expected.
LOCATION_KEYS = {"data_dir", "prefix", "output_dir", "work_dir", "log_dir", "pretrained", "num_gpus", "ctx_num"}


# --------------------------------------------------------------------------------------------
# expected.yaml


class Metric(Strict):
    accuracy: float | None = None
    std: float | None = None
    at_least: float | None = None
    about: float | None = None
    best: float | None = None


class ReferenceEntry(Strict):
    log: str
    source: str
    stage: str
    step: int
    metrics: dict[str, Metric]


class StageTargets(Strict):
    source: str
    metrics: dict[str, Metric]


class BenchRow(Strict):
    min: float
    max: float
    avg: float


class BenchReference(Strict):
    source: str
    device: str
    model: str
    threads: dict[int, BenchRow]
    folding_gain_estimate: float


class Expected(Strict):
    schema_: Literal[1] = Field(alias="schema")
    references: dict[str, ReferenceEntry]
    targets: dict[str, StageTargets]
    results: dict[str, StageTargets]
    bench: BenchReference


def load_expected(path: Path | None = None) -> Expected:
    return load_model(path or data_dir("recipes") / "expected.yaml", Expected)


def resolve_reference(spec: str) -> tuple[Path, str]:
    """A bundled reference name (see recipes/expected.yaml) or a path -> (log path, display name)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p, str(spec)
    expected = load_expected()
    if spec in expected.references:
        return data_dir("recipes") / expected.references[spec].log, spec
    names = ", ".join(expected.references) or "none"
    raise MfnError(
        f"reference {spec!r} is neither a file nor a bundled reference",
        hint=f"give a log file, or one of: {names}",
    )


# --------------------------------------------------------------------------------------------
# Checks


@dataclass
class Check:
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

    def to_dict(self) -> dict:
        return asdict(self) | {"found": self.actual, "at_step": self.step}


@dataclass
class Verification:
    log: str
    reference: str | None
    rule: str
    checks: list[Check] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    match: StageMatch | None = None

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
    def stage(self) -> str | None:
        return self.match.stage if self.match else None

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.checks if c.verdict == verdict)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.required and c.verdict != "pass"]

    def to_dict(self) -> dict:
        return {
            "log": self.log,
            "stage": self.stage,
            "verdict": self.verdict,
            "match": self.match.to_dict() if self.match else None,
            "reference": self.reference,
            "rule": self.rule,
            "passed": self.passed,
            "counts": {v: self.count(v) for v in ("pass", "fail", "unmeasured", "n/a")},
            "checks": [c.to_dict() for c in self.checks],
            "findings": self.findings,
        }


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


# --------------------------------------------------------------------------------------------
# Patch-set evidence


def checkpoint_symbol(log: Summary, checkpoint: str | None) -> tuple[Path | None, str]:
    """The training symbol of the run's checkpoints: --checkpoint PREFIX, else the prefix the log saved to."""
    candidates = []
    if checkpoint:
        c = checkpoint.split(",")[0]
        candidates.append(Path(c if c.endswith("-symbol.json") else c + "-symbol.json"))
    for ck in log.checkpoints.values():
        if ck.get("path"):
            p = str(ck["path"])
            candidates.append(Path(p[: p.rfind("-")] + "-symbol.json"))
            break
    for c in candidates:
        if c.is_file():
            return c, str(c)
    tried = ", ".join(str(c) for c in candidates) or "no checkpoint prefix in the log"
    return None, f"no checkpoint symbol found ({tried})"


def symbol_nodes(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text())
        return {n.get("name", "") for n in data.get("nodes", [])}
    except (OSError, ValueError, AttributeError) as e:
        raise MfnError(f"{path}: not an MXNet symbol file ({e})") from None


def evidence_checks(log: Summary, sets: list[PatchSet], checkpoint: str | None = None) -> list[Check]:
    checks: list[Check] = []
    symbol, symbol_note = checkpoint_symbol(log, checkpoint)
    for s in sets:
        for ev in s.manifest.evidence:
            checks.append(_evidence(log, s, ev, symbol, symbol_note))
        covered = {ev.patch for ev in s.manifest.evidence}
        for p in s.patches:
            if p.name not in covered and None not in covered:
                checks.append(
                    Check(
                        f"{s.label}/{p.name}",
                        "unmeasured",
                        f"{s.label}/{p.name}: the set declares no evidence",
                        False,
                        group="patches",
                    )
                )
    return checks


def _evidence(log: Summary, s: PatchSet, ev: Evidence, symbol: Path | None, symbol_note: str) -> Check:
    cid = f"{s.label}/{ev.patch}" if ev.patch else s.label
    cfg = log.config or {}
    if ev.unobservable:
        return Check(cid, "unmeasured", f"{cid}: cannot be checked: {ev.unobservable}", False, group="patches")
    for key, value in ev.when.items():
        if key not in cfg:
            return Check(
                cid,
                "unmeasured",
                f"{cid}: the log shows no {key}, so it is unknown whether it applies",
                False,
                group="patches",
            )
        if cfg[key] != value:
            return Check(
                cid,
                "n/a",
                f"{cid}: does not apply to this run ({key}={cfg[key]!r}, needs {value!r})",
                False,
                value,
                cfg[key],
                group="patches",
            )
    if ev.config is not None:
        if not cfg:
            return Check(cid, "unmeasured", f"{cid}: the log has no configuration line", False, group="patches")
        bad = {k: cfg.get(k, "(absent)") for k, v in ev.config.items() if cfg.get(k) != v}
        if bad:
            shown = ", ".join(f"{k}={v!r}" for k, v in bad.items())
            return Check(
                cid,
                "fail",
                f"{cid}: the log shows {shown}, the set implies "
                + ", ".join(f"{k}={v!r}" for k, v in ev.config.items())
                + f": {ev.explain}",
                True,
                ev.config,
                bad,
                group="patches",
            )
        return Check(
            cid,
            "pass",
            f"{cid}: the log shows " + ", ".join(f"{k}={v!r}" for k, v in ev.config.items()),
            True,
            ev.config,
            ev.config,
            group="patches",
        )
    if ev.python is not None:
        if log.python is None:
            return Check(
                cid, "unmeasured", f"{cid}: the log does not reveal its Python version", False, group="patches"
            )
        ok = log.python == ev.python
        return Check(
            cid,
            "pass" if ok else "fail",
            f"{cid}: the log was written by Python {log.python}" + ("" if ok else f": {ev.explain}"),
            True,
            ev.python,
            log.python,
            group="patches",
        )
    if ev.symbol_lacks is not None:
        if symbol is None:
            return Check(cid, "unmeasured", f"{cid}: {symbol_note}; give --checkpoint PREFIX", False, group="patches")
        present = sorted(set(ev.symbol_lacks) & symbol_nodes(symbol))
        if present:
            return Check(
                cid,
                "fail",
                f"{cid}: {symbol} has {', '.join(present)}: {ev.explain}",
                True,
                f"no {', '.join(ev.symbol_lacks)}",
                present,
                group="patches",
            )
        return Check(
            cid,
            "pass",
            f"{cid}: {symbol} has no {', '.join(ev.symbol_lacks)}",
            True,
            f"no {', '.join(ev.symbol_lacks)}",
            "absent",
            group="patches",
        )
    return Check(cid, "unmeasured", f"{cid}: no check declared", False, group="patches")


def python_finding(log: Summary, sets: list[PatchSet]) -> list[str]:
    names = {s.name for s in sets}
    if log.python == 3 and "py3" not in names:
        return ["the log was written by Python 3, which the pinned code needs the py3 set for; it is not named"]
    return []


RULES = (
    "stage targets: at least / best reached = a floor (better passes); about = passes from value − tolerance "
    "up, above the band is a note; reference: each (target, step) within ± tolerance at the same stage step, "
    "best per target at least reference best − tolerance; missing = unmeasured (never a pass)"
)


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
) -> Verification:
    """Judge a training log: by the recipe stage it ran (detected from its arguments, or ``stage``), against
    a reference log when one is given, and against patch sets."""
    log = summarize(log_path)
    match = detect_stage(log, recipe=recipe, profile=profile, stage=stage, start_step=start_step)
    if reference is None and not sets and match.signature is None:
        raise MfnError(
            f"nothing to verify against: {match.how}",
            hint="name the stage (--stage arcface [--recipe may16]), or give --reference REF and/or --patches SETS",
        )
    v = Verification(log=str(log_path), reference=reference, rule=RULES, match=match)
    if match.signature is not None:
        sig = match.signature
        what = "exactly" if not match.differences else f"with {len(match.differences)} difference(s)"
        v.findings.append(f"stage: {sig.label} ({sig.title}), {what}: {match.how}")
        v.findings += [f"differs from {sig.label}: {d}" for d in match.differences]
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
        v.checks += evaluate_stage(expectations, staged, Path.cwd(), steps_unknown=steps_unknown)
    if reference is not None:
        ref_path, ref_name = resolve_reference(reference)
        ref = summarize(ref_path)
        v.reference = ref_name
        rstage = _reference_stage(reference, ref)
        if rstage and match.stage and rstage != match.stage:
            v.findings.append(
                f"the reference is a {rstage} log, this log ran {match.stage}: their steps are different stages' steps"
            )
        v.checks += compare_to_reference(staged, ref, ref_name, tolerance, steps_unknown)
        v.findings += config_findings(log, ref)
    if sets:
        v.checks += evidence_checks(log, sets, checkpoint)
        v.findings += python_finding(log, sets)
    if log.ending:
        v.findings.append(f"the run ended: {log.how_it_ended()}")
    if log.unknown_lines:
        v.findings.append(f"{log.unknown_lines} line(s) of the log were not recognised (counted, not parsed)")
    return v


# --------------------------------------------------------------------------------------------
# Stage expectations (recipes)


def _from_expected(ref: str, expected: Expected) -> Metric:
    """'targets.arcface.lfw' or 'results.paper.agedb_30' -> the Metric in expected.yaml."""
    parts = ref.split(".")
    table = {"targets": expected.targets, "results": expected.results}.get(parts[0])
    if table is None or len(parts) != 3 or parts[1] not in table or parts[2] not in table[parts[1]].metrics:
        raise MfnError(
            f"expectation from: {ref!r} is not in recipes/expected.yaml",
            hint="write targets.STAGE.TARGET or results.NAME.TARGET (see recipes/expected.yaml)",
        )
    return table[parts[1]].metrics[parts[2]]


def seed_rule(m: Metric, tol: float | None, source: str) -> tuple[str, float, float | None, str]:
    """An expected.yaml metric as (op, value, tolerance, rule in words): one-sided where the seed is."""
    t = tol or 0.0
    if m.at_least is not None:
        floor = m.at_least - t
        return (
            ">=",
            m.at_least,
            tol,
            f"at least {m.at_least:g} ({source}: 以上 / +, a floor; better passes)"
            + (f", with tolerance {t:g}: from {floor:.5g}" if t else ""),
        )
    if m.about is not None:
        if tol is None:
            raise MfnError(f"expectation from {source} is 'about' a value: give a tolerance")
        return (
            "about",
            m.about,
            tol,
            (
                f"about {m.about:g} ± {t:g} ({source}: 左右): passes from {m.about - t:.5g} up; "
                f"above {m.about + t:.5g} is noted, not failed"
            ),
        )
    if m.best is not None:
        return (
            ">=",
            m.best,
            tol,
            f"the seed's best {m.best:g} ({source}), a floor"
            + (f" with tolerance {t:g}: from {m.best - t:.5g}" if t else "")
            + "; better passes",
        )
    if m.accuracy is not None:
        t = tol if tol is not None else (m.std or 0.0)
        return "~", m.accuracy, t, f"{m.accuracy:g} ± {t:g} ({source}, a logged value): within the band"
    raise MfnError(f"expectation from {source}: the entry has no value")


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


def _json_value(path: Path, key: str | None):
    data = json.loads(path.read_text())
    for part in (key or "").split(".") if key else []:
        data = data[int(part)] if isinstance(data, list) else data[part]
    return len(data) if isinstance(data, list | dict) else data


def evaluate_stage(
    expectations,
    summary: Summary | None,
    cwd: Path,
    expected: Expected | None = None,
    steps_unknown: str | None = None,
) -> list[Check]:
    """Each recipe expectation of a stage -> a Check (pass/fail/unmeasured) that states its rule."""
    checks: list[Check] = []
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
            path, name = resolve_reference(e.reference)
            for c in compare_to_reference(summary, summarize(path), name, e.tolerance, steps_unknown):
                c.required, c.group = e.required, group
                checks.append(c)
            continue
        if e.json_file is not None:
            p = Path(e.json_file)
            p = p if p.is_absolute() else cwd / p
            cid = f"{Path(e.json_file).name}:{e.key}"
            try:
                v = _json_value(p, e.key)
            except FileNotFoundError:
                checks.append(Check(cid, "unmeasured", f"{e.json_file}: not written", e.required, group=group))
                continue
            except (KeyError, IndexError, ValueError, TypeError) as err:
                checks.append(Check(cid, "fail", f"{e.json_file}: no {e.key} ({err})", e.required, group=group))
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
        op, value, tol = e.op, e.value, e.tolerance
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
    if op == ">=":
        ok = g >= v - (tol or 0) - 1e-12
    elif op == "<=":
        ok = g <= v + (tol or 0) + 1e-12
    elif op == "~":
        ok = abs(g - v) <= (tol or 0) + 1e-12
    elif op == "about":
        ok = g >= v - (tol or 0) - 1e-12
        if g > v + (tol or 0) + 1e-12:
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
    )
