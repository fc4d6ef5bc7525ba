"""The log formats the one parser reads, by lineage name (mfnpatch/lineages/): the pinned MXNet code's is the
parser's own; every other lineage's is a ``LogFormat`` registered here, which claims a log by its head (its
first line after the preamble every process prints) and turns its lines into the pinned code's, whole lines in,
the same number out, so the summary, the live events, verify, compare and the sentinels are one for all.

A third lineage's log is a reader module beside ``torchlog.py`` and one ``register_format`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mfnpatch.lineages import get as lineage
from mfnpatch.logs.torchlog import TorchLines, is_torch_log

NATIVE = "insightface_mxnet"  # the parser's own format


class LineReader(Protocol):
    def line(self, raw: str) -> list[str]: ...

    def close(self) -> list[str]: ...


@dataclass(frozen=True)
class LogFormat:
    lineage: str
    claims: Callable[[str], bool]  # the log's head: its text from the first line that is not preamble
    reader: Callable[[], LineReader]
    lr_per_line: bool = False  # its lr is on every Speed line (a decay by step), not in lr-batch-epoch lines


FORMATS: dict[str, LogFormat] = {}


def register_format(fmt: LogFormat) -> LogFormat:
    lineage(fmt.lineage)  # a format belongs to a registered lineage
    FORMATS[fmt.lineage] = fmt
    return fmt


def format_of(head: str) -> LogFormat | None:
    """The registered format that claims a log's head (None: the pinned code's own)."""
    return next((f for f in FORMATS.values() if f.claims(head)), None)


register_format(LogFormat("arcface_torch", lambda head: is_torch_log(head) or head.startswith("Training: "),
                          TorchLines, lr_per_line=True))  # fmt: skip
