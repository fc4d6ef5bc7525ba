"""arcface_torch's ``training.log`` (InsightFace's PyTorch recipe, ``recognition/arcface_torch``), read into the
one parser's events directly.

Its lines (``utils_logging.init_logging``: ``Training: %(asctime)s-%(message)s``)::

    Training: 2022-04-10 23:14:18,205-: network                  mbf            (the config, key by key)
    Training: 2022-04-10 23:15:28,458-Speed 10543.27 samples/sec   Loss 46.0198   LearningRate 0.1000   Epoch: 0
        Global Step: 20   Fp16 Grad Scale: 4096   Required: 37 hours                      (CallBackLogging)
    Training: 2022-04-10 23:18:56,638-[lfw][2000]XNorm: 20.481429                (CallBackVerification)
    Training: 2022-04-10 23:18:56,638-[lfw][2000]Accuracy-Flip: 0.96000+-0.00853
    Training: 2022-04-10 23:18:56,641-[lfw][2000]Accuracy-Highest: 0.96000

``TorchLines`` reads each line into at most one event: the config block one ``Config`` (on its last line: the
block ends at the first other line), a Speed line a ``Speed`` whose step is the global step, with ``loss`` and
``lr`` as its metrics, an Accuracy-Flip line a ``Verification`` (with the XNorm line before it); what carries
nothing (``rank_id``, ``Accuracy-Highest`` per target, DDP's messages) is None. A line without the prefix is
Python's or a library's own output (a traceback, a warning): the parser reads it as it reads any log's.

The ``Config`` speaks the summary's vocabulary: ``batch_size`` is the total batch, ``per_batch_size``
arcface_torch's per-GPU ``batch_size``, ``ctx_num`` the GPUs, ``emb_size`` its ``embedding_size``; every other key
is arcface_torch's own, and ``lineage`` says where it came from.
"""

from __future__ import annotations

import ast
import re

from mfnpatch.logs.events import Config, Event, Speed, Verification
from mfnpatch.logs.speed import NUM

NAME = "arcface_torch"
PREFIX = re.compile(r"^Training: (?P<d>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+-(?P<m>.*)$")
_CFG = re.compile(r"^: (?P<k>[A-Za-z_]\w*?)(?: +(?P<v>.*)|(?P<n>-?\d[\d.e+-]*))$")
_NUM = r"[-+\d.eE]+|nan|inf"
_SPEED = re.compile(
    rf"^Speed (?P<v>{_NUM}) samples/sec\s+Loss (?P<loss>{_NUM})\s+LearningRate (?P<lr>{_NUM})\s+Epoch: (?P<e>\d+)"
    r"\s+Global Step: (?P<s>\d+)"
)
_VER = re.compile(
    rf"^\[(?P<t>[^\]\[]+)\]\[(?P<s>\d+)\](?P<k>XNorm|Accuracy-Flip): (?P<a>{NUM})(?:\+-(?P<d>{NUM}))?\s*$"
)


def is_torch_log(head: str) -> bool:
    """Whether a log's first line is arcface_torch's."""
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    return PREFIX.match(first) is not None


def _value(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text.strip()


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "1.2.3": no number any run prints
        return float("nan")


def config_args(cfg: dict) -> dict:
    """arcface_torch's config in the summary's vocabulary (see the module's doc)."""
    out = dict(cfg)
    per = cfg.get("batch_size")
    total = cfg.get("total_batch_size")
    if isinstance(per, int):
        out["per_batch_size"] = per
        if isinstance(total, int) and total > 0:
            out["batch_size"] = total
            out["ctx_num"] = max(1, total // per) if per else 1
    if "embedding_size" in cfg:
        out["emb_size"] = cfg["embedding_size"]
    out["lineage"] = NAME
    return out


class TorchLines:
    """Whole lines in, one item per line out, in order: an event, None (nothing), or a line that is not
    arcface_torch's own (see the module's doc)."""

    def __init__(self) -> None:
        self.cfg: dict = {}
        self.pending: list[str] = []  # the timestamps of config lines not yet given (the block ends at another)
        self.xnorm: dict[str, float] = {}

    def line(self, raw: str) -> list[Event | str | None]:
        """One line of arcface_torch's log -> its item (after any held back before it)."""
        m = PREFIX.match(raw)
        if m is None:
            return [*self._flush(), raw]
        ts, msg = m.group("d"), m.group("m")
        c = _CFG.match(msg)
        if c is not None:
            self.cfg[c.group("k")] = _value(c.group("v") if c.group("v") is not None else c.group("n"))
            self.pending.append(ts)
            return []
        out = self._flush()
        if (s := _SPEED.match(msg)) is not None:
            step = int(s.group("s"))
            metrics = {"loss": _float(s.group("loss")), "lr": _float(s.group("lr"))}
            out.append(Speed(0, ts, int(s.group("e")), max(0, step - 1), _float(s.group("v")), metrics, step))
        elif (v := _VER.match(msg)) is not None:
            target = v.group("t")
            if v.group("k") == "XNorm":
                self.xnorm[target] = _float(v.group("a"))
                out.append(None)
            else:
                std = _float(v.group("d")) if v.group("d") is not None else float("nan")
                xnorm = self.xnorm.pop(target, None)
                out.append(Verification(0, ts, target, int(v.group("s")), _float(v.group("a")), std, xnorm, None))
        else:
            out.append(None)  # rank_id, Accuracy-Highest per target, DDP's and the loader's messages
        return out

    def _flush(self) -> list[Event | str | None]:
        if not self.pending:
            return []
        items: list[Event | str | None] = [None for _ in self.pending[:-1]]
        items.append(Config(0, self.pending[-1], config_args(self.cfg)))
        self.pending = []
        return items

    def close(self) -> list[Event | str | None]:
        return self._flush()


# What a process prints before its log's first line, whatever the lineage: Python warnings ("file.py:12:
# FutureWarning: ...") and their indented source lines, glog lines (torchrun's "W1206 20:11:59.1 123 run.py:7] ..."),
# rows of asterisks around them, blank lines. The lineage is decided by the first line that is none of these.
_PREAMBLE = re.compile(r"^(?:\s.*|\S+:\d+: \w*Warning: .*|[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ .*|\*+|)$")
PREAMBLE_LINES = 200


def skip_preamble(buf: str) -> str | None:
    """The text from the first complete line that is not preamble (None: every complete line so far is)."""
    pos = 0
    while (nl := buf.find("\n", pos)) >= 0:
        if not _PREAMBLE.match(buf[pos:nl]):
            return buf[pos:]
        pos = nl + 1
    return None
