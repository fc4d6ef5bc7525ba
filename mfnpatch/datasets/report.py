"""What ``data check`` found: findings (one line each, the first place of each kind of problem and how many
more), the table's rows, and the report with its verdict and fingerprint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mfnpatch.datasets import variants
from mfnpatch.errors import MfnError

Progress = Callable[[str, int, int], None]  # (what, done, total)
Severity = Literal["error", "warning"]


class DataError(MfnError):
    pass


@dataclass
class Finding:
    severity: Severity
    check: str
    file: str
    message: str
    where: str = ""
    more: int = 0  # other places with the same problem
    hint: str = ""

    def text(self) -> str:
        more = f" (and {self.more} more like it)" if self.more else ""
        return f"{self.file}: {self.where + ': ' if self.where else ''}{self.message}{more}"

    def to_dict(self) -> dict:
        return {**self.__dict__, "text": self.text()}


@dataclass
class Row:
    check: str
    status: Literal["ok", "FAIL", "warn", "skipped"]
    detail: str


@dataclass
class DataReport:
    dir: str
    targets: list[str]
    full: bool
    rows: list[Row] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    prop: dict[str, int] | None = None  # property: ids, height, width
    images: int | None = None
    identities: int | None = None
    variant: variants.Match | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    decoded: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def verdict(self) -> str:
        if not self.ok:
            n = len(self.errors)
            return f"FAIL: {n} error{'s' * (n != 1)} in {self.dir}"
        name = self.variant.name if self.variant else "a dataset"
        return f"PASS: {self.dir} is a consistent dataset ({name})"

    def to_dict(self) -> dict:
        return {
            "dir": self.dir,
            "ok": self.ok,
            "verdict": self.verdict(),
            "exit_code": self.exit_code,
            "targets": self.targets,
            "full": self.full,
            "property": self.prop,
            "images": self.images,
            "identities": self.identities,
            "variant": self.variant.to_dict() if self.variant else None,
            "rows": [r.__dict__ for r in self.rows],
            "findings": [f.to_dict() for f in self.findings],
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 3),
            "decoded": self.decoded,
        }


class Tally:
    """The first place of each kind of problem, and how many more there are."""

    def __init__(self, report: DataReport):
        self.report = report
        self._first: dict[tuple[str, str], Finding] = {}

    def add(
        self,
        check: str,
        file: Path,
        message: str,
        where: str = "",
        severity: Severity = "error",
        hint: str = "",
        count: int = 1,
        kind: str | None = None,
    ) -> None:
        key = (check, kind or message)
        if key in self._first:
            self._first[key].more += count
            return
        f = Finding(severity, check, str(file), message, where, count - 1, hint)
        self._first[key] = f
        self.report.findings.append(f)

    def failed(self, check: str) -> bool:
        return any(f.check == check and f.severity == "error" for f in self.report.findings)

    def row(self, check: str, ok_detail: str, skipped: str | None = None, at: int | None = None) -> None:
        """The table's row of a check, from its findings: FAIL (the first error and how many), warn, or ok."""
        mine = [f for f in self.report.findings if f.check == check]
        errors = [f for f in mine if f.severity == "error"]
        if skipped is not None:
            row = Row(check, "skipped", skipped)
        elif errors:
            n = sum(1 + f.more for f in errors)
            row = Row(check, "FAIL", f"{n} problem{'s' * (n != 1)}: {errors[0].message}")
        elif mine:
            row = Row(check, "warn", mine[0].message)
        else:
            row = Row(check, "ok", ok_detail)
        self.report.rows.insert(len(self.report.rows) if at is None else at, row)
