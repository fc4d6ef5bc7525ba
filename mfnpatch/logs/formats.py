"""The log formats the one parser reads, by lineage name (mfnpatch/lineages/): the pinned MXNet code's is the
parser's own; every other lineage's is a ``LogFormat`` registered here, which claims a log by its head (its
first line after the preamble every process prints) and reads its lines into the parser's events directly (a
``Config``, ``Speed``, ``Verification``, ``Malformed``, ``RunEnded`` or ``Warn``; the parser folds each into the
summary as it folds its own), whole lines in, one item per line out, so the summary, the live events, verify,
compare and the sentinels are one for all. A line that is not the format's own (a traceback, a library's
warning) comes back as text, read as the parser reads any log.

A third lineage's log is a reader module beside ``torchlog.py`` and one ``register_format`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mfnpatch.lineages import DEFAULT
from mfnpatch.lineages import get as lineage
from mfnpatch.logs.events import Event
from mfnpatch.logs.torchlog import NAME as TORCH
from mfnpatch.logs.torchlog import TorchLines, is_torch_log

NATIVE = DEFAULT  # the parser's own format: the pinned MXNet code's


Item = Event | str | None  # an event; a line read as any log's; None: a line that carries nothing


class LineReader(Protocol):
    def line(self, raw: str) -> list[Item]:
        """One whole line -> its item, after any it held back (a block given on its last line)."""
        ...

    def close(self) -> list[Item]:
        """The items still held back at the log's end."""
        ...


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


register_format(LogFormat(TORCH, lambda head: is_torch_log(head) or head.startswith("Training: "),
                          TorchLines, lr_per_line=True))  # fmt: skip
