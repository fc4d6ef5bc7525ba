"""Speedometer lines (``Epoch[e] Batch [b]\tSpeed: v samples/sec\tmetric=x``) and their bounded statistics."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

TS = r"(?:\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\][ \t]*)?"
NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
_SPEED_LINE = re.compile(
    TS
    + r"(?:INFO:root:)?(?:Epoch|Iter)\[(?P<e>\d+)\] Batch \[(?:(?P<b0>\d+)-)?(?P<b>\d+)\]\tSpeed: (?P<v>"
    + NUM
    + r") samples/sec(?P<m>.*)$"
)
_METRIC = re.compile(r"\t([\w-]+)=(" + NUM + r")")
NOT_RARE = "\tSpeed: "  # in every Speedometer line, in few others
_PLAIN = re.compile(r"[\d.]+")  # a samples/s the histogram takes (as the parser's bulk findall does)


# --------------------------------------------------------------------------------------------
# Speed statistics (bounded)


def parse_speed(line: str):
    m = _SPEED_LINE.match(line)
    if m is None:
        return None
    metrics = {k: float(v) for k, v in _METRIC.findall(m.group("m"))}
    return int(m.group("e")), int(m.group("b")), float(m.group("v")), metrics, m.group("b0") is not None


@dataclass
class SpeedStats:
    """Speedometer lines: count, a histogram of samples/s, and a decimated (epoch, batch, metrics) curve."""

    count: int = 0
    histogram: Counter = field(default_factory=Counter)
    curve: list[tuple[int, int, float, dict]] = field(default_factory=list)  # (epoch, batch, speed, metrics)
    stride: int = 1
    max_points: int = 1024
    new_format: bool | None = None
    _seen: int = 0

    def median(self) -> float | None:
        if not self.histogram:
            return None
        items = sorted((float(k), n) for k, n in self.histogram.items())
        half = sum(n for _, n in items) / 2
        acc = 0
        for v, n in items:
            acc += n
            if acc >= half:
                return v
        return items[-1][0]

    def add(self, point: tuple[int, int, float, dict], value: str | None) -> None:
        """One Speed a format's reader made (not a line): counted, in the histogram (its samples/s as printed,
        when a number), and on the curve at the same stride as lines."""
        self.count += 1
        if value is not None and _PLAIN.fullmatch(value):
            self.histogram[value] += 1
        if len(self.curve) + 1 > self.max_points:
            self.curve = self.curve[::2]
            self.stride *= 2
        if self._seen % self.stride == 0:
            self.curve.append(point)
        self._seen += 1

    def sample(self, lines: list[str], speed_lines: int) -> None:
        """Parse every ``stride``-th line that is a Speedometer line; first double the stride (and halve
        the curve) while this piece would overfill the curve, so the curve stays bounded."""
        while len(self.curve) + speed_lines // self.stride + 1 > self.max_points:
            self.curve = self.curve[::2]
            self.stride *= 2
        n = len(lines)
        for i in range((-self._seen) % self.stride, n, self.stride):
            if NOT_RARE in lines[i]:
                p = parse_speed(lines[i])
                if p is not None:
                    self.curve.append(p[:4])
        self._seen += n
