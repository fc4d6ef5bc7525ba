"""The check ``recipe run`` makes of each training stage's data before the first stage starts: ``data check``
(its default depth) and the variant the recipe's expected results were measured on.

The runner gets this function from the CLI (``RunOptions.data_checker``) and records what it returns."""

from __future__ import annotations

from pathlib import Path

from mfnpatch.datasets import variants
from mfnpatch.datasets.check import check_dataset


def check_for_run(path: Path, targets: list[str], variant: str | None) -> dict:
    report = check_dataset(path, targets)
    problems = [f.text() for f in report.errors]
    hints = [f.hint for f in report.errors if f.hint]
    found = report.variant
    if not problems and variant and variant != variants.ANY:
        if variant not in variants.known_keys():
            problems.append(f"the recipe expects data variant {variant!r}, which mfnpatch does not know")
            hints.append(f"known variants: {', '.join(variants.known_keys())}")
        elif found is None or found.key != variant:
            holds = found.message if found else "a dataset of unknown counts"
            problems.append(
                f"{path} holds {holds}, not {variants.describe_expected(variant)}, the data the stage's "
                "expected results were measured on"
            )
            hints.append(
                f"train on it anyway with --set data_variant={found.key if found and found.key else 'any'} "
                "(recorded; the seed's numbers may not apply), or point data_dir at the expected dataset"
            )
    summary = report.verdict() if not problems or report.errors else f"FAIL: {problems[0]}"
    return {
        "ok": not problems,
        "summary": summary,
        "problems": problems,
        "warnings": [f.text() for f in report.findings if f.severity == "warning"],
        "hint": hints[0] if hints else f"see: mfnpatch data check {path}",
        "variant": found.name if found else None,
        "fingerprint": report.fingerprint,
        "seconds": round(report.seconds, 3),
    }
