"""A verification's report in Markdown, rendered from the Verification alone."""

from __future__ import annotations

from mfnpatch.verify.explain import lines as explanation_lines
from mfnpatch.verify.verify import Verification

ICON = {"pass": "pass", "fail": "**FAIL**", "unmeasured": "unmeasured", "n/a": "n/a"}


def verification_markdown(v: Verification) -> str:
    verdict = v.verdict.upper()
    m = v.match
    stage = (f"`{m.signature.label}` ({m.how})" if m.signature else f"unknown ({m.how})") if m else "not detected"
    lines = [
        f"# Verification: {verdict}",
        "",
        f"- log: `{v.log}`",
        f"- stage: {stage}",
        f"- reference: `{v.reference}`" if v.reference else "- reference: none",
        f"- rule: {v.rule}",
        f"- checks: {v.count('pass')} pass, {v.count('fail')} fail, {v.count('unmeasured')} unmeasured, "
        f"{v.count('n/a')} n/a",
        "",
    ]
    groups = (("log", "The log itself"), ("stage", "Against the stage's expected results"),
              ("reference", "Against the reference"), ("patches", "Against the patch sets"))  # fmt: skip
    for group, title in groups:
        rows = [c for c in v.checks if c.group == group and (c.required or c.verdict in ("pass", "fail"))]
        if not rows:
            continue
        lines += [f"## {title}", "", "| check | verdict | expected | actual |", "| --- | --- | --- | --- |"]
        for c in rows:
            lines.append(f"| {c.id} | {ICON[c.verdict]} | {cell(c.expected)} | {cell(c.actual)} |")
        lines.append("")
    rules = [f"- {c.id}: {c.rule}" for c in v.checks if c.rule and c.verdict != "n/a"]
    if rules:
        lines += ["## Rules", ""] + rules + [""]
    not_checked = [c for c in v.checks if not c.required and c.verdict in ("unmeasured", "n/a")]
    if not_checked:
        lines += ["## Could not be checked", ""] + [f"- {c.message}" for c in not_checked] + [""]
    failing = v.failures()
    if failing:
        lines += ["## What failed", ""] + [f"- {c.message}" for c in failing] + [""]
    if v.findings:
        lines += ["## Findings", ""] + [f"- {f}" for f in v.findings] + [""]
    if v.explanation is not None:
        lines += ["## Why (verify --explain)", "", "```", *explanation_lines(v.explanation, not v.passed), "```", ""]
    return "\n".join(lines)


def cell(x) -> str:
    if x is None:
        return "–"
    return str(x).replace("|", "\\|")
