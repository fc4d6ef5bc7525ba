"""An MXNet checkpoint as the pinned code names it: ``PREFIX,N`` on its command line, and the files
``PREFIX-symbol.json`` and ``PREFIX-NNNN.params`` on disk (``mx.model.save_checkpoint``). One value for
every place that turns one into the other."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mfnpatch.errors import MfnError
from mfnpatch.schema import Strict

_PARAMS = re.compile(r"^(?P<prefix>.*)-(?P<n>\d{4})\.params$")


class CheckpointError(MfnError):
    pass


class StopPoint(Strict):
    """Where a training stage is stopped: at checkpoint N (saved at step N x --verbose) or at step N, and why
    (the recipe says so, or a later stage needs that checkpoint). The plan, the process and the record hold it."""

    kind: Literal["checkpoint", "step"]
    value: int
    why: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


@dataclass(frozen=True)
class Checkpoint:
    prefix: str
    number: int

    @classmethod
    def parse(cls, spec: str, what: str = "checkpoint") -> Checkpoint:
        """``PREFIX,N`` (as --pretrained and --model take it)."""
        prefix, sep, n = str(spec).rpartition(",")
        if not sep or not prefix or not n.strip().isdigit():
            raise CheckpointError(
                f"{what} {spec!r} is not PREFIX,EPOCH",
                hint="write the checkpoint as the pinned code does, e.g. ../models/MobileFaceNet/model-y1-arcface,40",
            )
        return cls(prefix, int(n))

    @classmethod
    def from_params(cls, path: str | Path) -> Checkpoint | None:
        """The checkpoint a ``PREFIX-NNNN.params`` path belongs to (None for any other name)."""
        m = _PARAMS.match(str(path))
        return cls(m.group("prefix"), int(m.group("n"))) if m else None

    def __str__(self) -> str:
        return f"{self.prefix},{self.number}"

    def at(self, cwd: Path | None) -> Checkpoint:
        """The same checkpoint with its prefix resolved against ``cwd`` (an absolute prefix stays)."""
        if cwd is None or Path(self.prefix).is_absolute():
            return self
        return Checkpoint(str(Path(cwd) / self.prefix), self.number)

    @property
    def symbol(self) -> Path:
        return Path(f"{self.prefix}-symbol.json")

    @property
    def params(self) -> Path:
        return Path(f"{self.prefix}-{self.number:04d}.params")

    def files(self, cwd: Path | None = None) -> tuple[Path, Path]:
        c = self.at(cwd)
        return c.symbol, c.params

    def missing(self, cwd: Path | None = None) -> list[Path]:
        return [p for p in self.files(cwd) if not p.is_file()]

    def exists(self, cwd: Path | None = None) -> bool:
        return not self.missing(cwd)
