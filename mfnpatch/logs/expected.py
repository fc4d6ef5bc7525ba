"""Expected results: the seed's numbers with their sources (recipes/expected.yaml), the bundled reference
logs, a recipe stage's expectations, and each number's rule in the seed's own words (one-sided where the
seed is: "at least", "best reached" and "about" are floors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mfnpatch.errors import MfnError
from mfnpatch.resources import data_dir
from mfnpatch.schema import Strict, load_model

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


class StageThroughput(Strict):
    samples_per_sec: float = Field(gt=0)
    verification_seconds: float = Field(ge=0)
    note: str = ""


class ThroughputReference(Strict):
    """The seed's own training speed, read from its logs (recipe estimate's reference row)."""

    source: str
    device: str
    total_batch: int = Field(ge=1)
    stages: dict[str, StageThroughput]


class Expected(Strict):
    schema_: Literal[1] = Field(alias="schema")
    references: dict[str, ReferenceEntry]
    targets: dict[str, StageTargets]
    results: dict[str, StageTargets]
    bench: BenchReference
    throughput: ThroughputReference | None = None


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
            f"the best {m.best:g} reached ({source}), a floor"
            + (f" with tolerance {t:g}: from {m.best - t:.5g}" if t else "")
            + "; better passes",
        )
    if m.accuracy is not None:
        t = tol if tol is not None else (m.std or 0.0)
        return "~", m.accuracy, t, f"{m.accuracy:g} ± {t:g} ({source}, a logged value): within the band"
    raise MfnError(f"expectation from {source}: the entry has no value")


class Expectation(Strict):
    """One check at the end of a stage (evaluated by mfnpatch.logs.verdicts.evaluate_stage)."""

    metric: str | None = Field(default=None, description="a verification target (lfw ...) or train_acc")
    at: str = Field(default="best", description="best | last | step:N")
    op: Literal[">=", "<=", "~", "rises"] = ">="
    value: float | str | None = None
    from_: str | None = Field(default=None, alias="from", description="expected.yaml entry: targets.arcface.lfw")
    tolerance: float | None = None
    verified: list[str] | None = Field(default=None, description="targets that must be verified")
    rounds_at_least: int = 1
    json_file: str | None = Field(default=None, alias="json", description="a JSON result file the stage writes")
    key: str | None = None
    reference: str | None = Field(default=None, description="a reference log to verify the stage's log against")
    required: bool = True
    note: str = ""
