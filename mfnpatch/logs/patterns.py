"""The patterns of the parser's lines (``parser.py``), on latin-1 text: one char per byte, so any input decodes and
offsets match bytes, and how their values are read. Every regex is linear (no nested quantifiers;
``benchmarks/bench_logs.py`` checks)."""

from __future__ import annotations

import re

from mfnpatch.logs.speed import NUM, TS

# unambiguous (\d+(?:\.\d*)? rather than \d+\.?\d*): a digit run is split one way only, so a long one
# cannot make the regex backtrack over every split
RARE = re.compile(
    TS
    + r"(?:INFO:root:)?(?:"
    + r"(?P<ver>\[(?P<v_t>[^\]\[]+)\](?:\[(?P<v_s>\d+)\])?(?P<v_k>XNorm|Accuracy-Flip|Accuracy): "
    + r"(?P<v_a>"
    + NUM
    + r")(?:\+-(?P<v_d>"
    + NUM
    + r"))?)"
    + r"|(?P<shape>\((?P<shape_v>\d+L?(?:, ?\d+L?)*),?\))"
    + r"|(?P<infer>infer time (?P<infer_v>"
    + NUM
    + r"))"
    + r"|(?P<lbe>lr-batch-epoch: (?P<lbe_lr>"
    + NUM
    + r") (?P<lbe_b>\d+) (?P<lbe_e>\d+))"
    + r"|(?P<high>\[(?P<h_s>\d+)\]Accuracy-Highest(?:\([\w-]{1,20}\))?: (?P<h_v>"
    + NUM
    + r"))"
    + r"|(?P<save>saving (?P<save_n>\d+))"
    + r"|(?P<saved>Saved checkpoint to [\"'](?P<saved_p>[^\"']*)[\"'])"
    + r"|(?P<lrc>lr change to (?P<lrc_v>"
    + NUM
    + r"))"
    + r"|(?P<em>Epoch\[(?P<em_e>\d+)\] (?:Train|Validation)-(?P<em_k>[\w-]+)=(?P<em_v>"
    + NUM
    + r"))"
    + r"|(?P<et>Epoch\[(?P<et_e>\d+)\] Time cost=(?P<et_v>"
    + NUM
    + r"))"
    + r"|(?P<cfg>Called with argument: (?P<cfg_v>Namespace\(.*\)))"
    + r"|(?P<steps>lr_steps \[(?P<steps_v>[\d, L]*)\])"
    + r"|(?P<pre>loading \[(?P<pre_v>[^\]]*)\])"
    + r"|(?P<id2r>id2range (?P<id2r_v>\d+))"
    + r"|(?P<int>(?P<int_v>\d+))"
    + r"|(?P<tb>Traceback \(most recent call last\):)"
    + r"|(?P<end>Task is force ended by user)"
    + r"|(?P<kbd>KeyboardInterrupt)"
    # a (dotted) name ending in Error/Exception/Exit/Interrupt, found by a lazy forward scan: linear
    + r"|(?P<exc>(?P<exc_t>[A-Za-z_][\w.]*?(?:Error|Exception|Exit|Interrupt)): ?(?P<exc_m>.*))"
    + r"|(?P<warn>.*?(?<=\w)Warning: .*)"  # lazy scan + one-char look-behind: linear in line length
    + r"|(?P<dmlc>\[\d\d:\d\d:\d\d\] \S+:\d+: .*)"
    + r"|(?P<known>loading bin \d+|call reset\(\)|ver \S+|gpu num: \d+|use cpu|num_layers \d+|image_size \[.*\]"
    + r"|num_classes \d+|init \w+ \d+|header0 label .*|rand_mirror \S+|loading recordio .*|testing verification\.\."
    + r"|testing verification badcase\.\.|Max of \[.*\] is .*|model loading time .*|loading\.\. .*"
    + r"|  File \".*\", line \d+.*|Running performance tests.*|\s+.*)"
    + r")\s*$"
)
# lines that are known but carry nothing (loading bin N, call reset(), DMLC lines, traceback frames, ...)
STATELESS = frozenset({"known", "dmlc"})
# lines whose handlers note where they are (a malformed value, a step that goes backwards, a run's start)
NOTING = frozenset({"ver", "high", "lbe", "cfg"})
QUOTED = (" ", "\t", ">", "`")  # how a pasted excerpt's lines start
SPEED_VALUE = re.compile(r"\tSpeed: ([\d.]+)")
CKPT_NUMBER = re.compile(r"-(\d{4})\.params$")
PY3_FLOAT = re.compile(r"\d\.\d{15,}")
TESTING = "testing verification.."
INFER = "infer time "


class MalformedValue(Exception):
    """A known line whose values no run prints (an accuracy of nan, 1e308 or -1.5): counted, never evidence."""

    def __init__(self, message: str, value: float | None = None):
        super().__init__(message)
        self.value = value


def shown(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:20]}… ({len(text)} characters)"


def accuracy(text: str, what: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:  # false for nan too
        raise MalformedValue(f"{what} {shown(text)} is not in [0, 1]", v)
    return v


def finite(text: str, what: str) -> float:
    v = float(text)
    if not (v >= 0.0 and v < float("inf")):
        raise MalformedValue(f"{what} {shown(text)} is not a finite number >= 0", v)
    return v


def text_of(x: str | None) -> str | None:
    """A field of latin-1 text back to the UTF-8 the log was written in."""
    if x is None:
        return None
    return x if x.isascii() else x.encode("latin-1").decode("utf-8", "replace")
