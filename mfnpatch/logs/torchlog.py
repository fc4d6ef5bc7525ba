"""arcface_torch's ``training.log`` (InsightFace's PyTorch recipe, ``recognition/arcface_torch``), read by the one
parser as the lines of the pinned code it corresponds to.

Its lines (``utils_logging.init_logging``: ``Training: %(asctime)s-%(message)s``)::

    Training: 2022-04-10 23:14:18,205-: network                  mbf            (the config, key by key)
    Training: 2022-04-10 23:15:28,458-Speed 10543.27 samples/sec   Loss 46.0198   LearningRate 0.1000   Epoch: 0
        Global Step: 20   Fp16 Grad Scale: 4096   Required: 37 hours                      (CallBackLogging)
    Training: 2022-04-10 23:18:56,638-[lfw][2000]XNorm: 20.481429                (CallBackVerification)
    Training: 2022-04-10 23:18:56,638-[lfw][2000]Accuracy-Flip: 0.96000+-0.00853
    Training: 2022-04-10 23:18:56,641-[lfw][2000]Accuracy-Highest: 0.96000

``TorchLines`` turns each into one line of the pinned code's format, so that the parser, the summary, the live
events, verify, compare and the sentinels are the same for both lineages: the config block becomes one
``Called with argument: Namespace(...)`` line (in place of its last line: line numbers are kept), a Speed line a
Speedometer line of "epoch 0, batch = global step - 1" (so its step is the global step) with ``loss`` and ``lr``
as its metrics, the verification lines stay as they are (the format is the same), and what carries nothing
(``rank_id``, ``Accuracy-Highest`` per target, DDP's messages) becomes an empty line.

In the Namespace, ``batch_size`` is the total batch (as the pinned code's ``batch_size`` is), ``per_batch_size``
arcface_torch's per-GPU ``batch_size``, ``ctx_num`` the GPUs, ``emb_size`` its ``embedding_size``; every other key
is arcface_torch's own, and ``lineage='arcface_torch'`` says where it came from.
"""

from __future__ import annotations

import ast
import re

PREFIX = re.compile(r"^Training: (?P<d>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+-(?P<m>.*)$")
_CFG = re.compile(r"^: (?P<k>[A-Za-z_]\w*?)(?: +(?P<v>.*)|(?P<n>-?\d[\d.e+-]*))$")
_SPEED = re.compile(
    r"^Speed (?P<v>[-+\d.eE]+|nan|inf) samples/sec\s+Loss (?P<loss>[-+\d.eE]+|nan|inf)\s+LearningRate "
    r"(?P<lr>[-+\d.eE]+|nan|inf)\s+Epoch: (?P<e>\d+)\s+Global Step: (?P<s>\d+)"
)
_HIGHEST = re.compile(r"^\[[^\]\[]+\]\[\d+\]Accuracy-Highest: ")


def is_torch_log(head: str) -> bool:
    """Whether a log's first line is arcface_torch's."""
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    return PREFIX.match(first) is not None


def _value(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text.strip()


def namespace(cfg: dict) -> str:
    """The pinned code's configuration line for arcface_torch's config."""
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
    out["lineage"] = "arcface_torch"
    return "Called with argument: Namespace(" + ", ".join(f"{k}={v!r}" for k, v in out.items()) + ")"


class TorchLines:
    """Whole lines in, the same number of lines out, in the pinned code's format (see the module's doc)."""

    def __init__(self) -> None:
        self.cfg: dict = {}
        self.pending: list[str] = []  # config lines not yet written (the block ends at the first other line)

    def line(self, raw: str) -> list[str]:
        """One line of arcface_torch's log -> the lines to parse in its place (and any held back before it)."""
        m = PREFIX.match(raw)
        if m is None:
            return [*self._flush(), raw]
        ts, msg = f"[{m.group('d')}] ", m.group("m")
        c = _CFG.match(msg)
        if c is not None:
            self.cfg[c.group("k")] = _value(c.group("v") if c.group("v") is not None else c.group("n"))
            self.pending.append(ts)
            return []
        out = self._flush()
        s = _SPEED.match(msg)
        if s is not None:
            step = int(s.group("s"))
            out.append(f"{ts}Epoch[0] Batch [{max(0, step - 1)}]\tSpeed: {s.group('v')} samples/sec"
                       f"\tloss={s.group('loss')}\tlr={s.group('lr')}")  # fmt: skip
        elif msg.startswith("[") and not _HIGHEST.match(msg):
            out.append(ts + msg)  # verification: the pinned code's own format
        else:
            out.append("")  # rank_id, Accuracy-Highest per target, DDP's and the loader's messages
        return out

    def _flush(self) -> list[str]:
        if not self.pending:
            return []
        lines = ["" for _ in self.pending[:-1]] + [self.pending[-1] + namespace(self.cfg)]
        self.pending = []
        return lines

    def close(self) -> list[str]:
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
