"""Training logs of the pinned code: a pure, streaming parser into typed events and a summary.

It reads what ``train_softmax.py`` and MXNet print, in any mix: the training platform's
``[YYYY-MM-DD HH:MM:SS]  `` prefix, DMLC ``[HH:MM:SS] file:line:`` lines, Python 2 and 3 output
(``0.01`` vs ``0.010000000000000002``, ``(12000L, 3L, 112L, 112L)``), both Speedometer formats
(``Batch [N]`` up to MXNet 1.3, ``Batch [a-b]`` from 1.4), ``INFO:root:`` lines, warnings and
tracebacks, ``\\r``, a truncated last line, and "Task is force ended by user".

How it stays fast (target: >= 100 MB/s on one core, see benchmarks/bench_logs.py): the parser works on
bytes; Speedometer lines, most of any log, are aggregated in bulk per chunk (a C-level ``findall`` into a
histogram of samples/s, plus a bounded, decimated training-accuracy curve); with events asked for, each is
also a ``Speed`` event, in line order, so a watcher's verdict depends on the lines alone, never on how the
output was cut into pieces. Every other known line is matched by one
regex and folded straight into the running ``Summary``; event objects are built only when the caller
asks for them (``LogParser(events=True)``, the default). Unknown lines are counted, never fatal, and no
exception escapes ``feed``.

Memory: besides the bounded speed statistics, the parser keeps one entry per (target, step) verified
and per checkpoint, which is what a reference check needs; it does not keep lines.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import kind_of
from mfnpatch.logs.events import (
    CheckpointSaved,
    CheckpointWritten,
    Config,
    Dataset,
    EpochMetric,
    EpochTime,
    Event,
    Highest,
    LrBatchEpoch,
    LrChange,
    LrSteps,
    Malformed,
    Pretrained,
    RunEnded,
    Speed,
    Summary,
    Verification,
    Warn,
)
from mfnpatch.logs.formats import NATIVE, Item, LineReader, LogFormat, format_of
from mfnpatch.logs.namespace import parse_namespace
from mfnpatch.logs.patterns import (
    CKPT_NUMBER as _CKPT_NUMBER,
)
from mfnpatch.logs.patterns import (
    INFER as _INFER,
)
from mfnpatch.logs.patterns import (
    NOTING as _NOTING,
)
from mfnpatch.logs.patterns import (
    PY3_FLOAT as _PY3_FLOAT,
)
from mfnpatch.logs.patterns import (
    QUOTED as _QUOTED,
)
from mfnpatch.logs.patterns import (
    RARE as _RARE,
)
from mfnpatch.logs.patterns import (
    SPEED_VALUE as _SPEED_VALUE,
)
from mfnpatch.logs.patterns import (
    STATELESS as _STATELESS,
)
from mfnpatch.logs.patterns import (
    TESTING as _TESTING,
)
from mfnpatch.logs.patterns import (
    MalformedValue as _Malformed,
)
from mfnpatch.logs.patterns import (
    accuracy as _accuracy,
)
from mfnpatch.logs.patterns import (
    finite as _finite,
)
from mfnpatch.logs.patterns import (
    text_of as _s,
)
from mfnpatch.logs.speed import NOT_RARE, SpeedStats, parse_speed
from mfnpatch.logs.torchlog import PREAMBLE_LINES, skip_preamble

MAX_NOTED = 10  # malformed lines and backward steps noted by line number; the rest are counted


# --------------------------------------------------------------------------------------------
# The parser


class LogParser:
    """Feed bytes or text in pieces of any size; get events (if ``events``) and a running summary.

    ``close()`` flushes a last line that has no newline. ``summary()`` may be called at any time.
    """

    def __init__(self, events: bool = True, path: str = "-"):
        self.emit = events
        self.s = Summary(path=path)
        self.speed = SpeedStats()
        self.batch_size: int | None = None
        self.batches_per_epoch: int | None = None
        self._images: int | None = None
        self._carry = ""
        self._cr = False
        self._infer: float | None = None  # verification in progress: infer time, then XNorm, then accuracy
        self._xnorm: dict[str, float] = {}
        self._last_ver_step: int | None = None
        self._images_pending = False
        self._in_traceback = False
        self._lr_steps: list[int] = []
        self._lr_changes = 0
        self._targets: dict[str, str] = {}
        self._last_lbe_step = 0  # the last step an lr-batch-epoch line gave: a step before it is another run's
        self._line = 0  # the line being handled (known to handlers that note where)
        self._reader: LineReader | None = None  # another lineage's log, read by its format into events
        self._format: LogFormat | None = None
        self._mode: str | None = None  # None until the first text: "native" or "read" (by a registered format)
        self._tcarry = ""
        self._handlers = {
            "ver": self._ver, "infer": self._infer_time, "high": self._high, "lbe": self._lbe, "lrc": self._lrc,
            "save": self._save, "saved": self._saved, "em": self._em, "et": self._et, "cfg": self._cfg,
            "shape": self._shape, "steps": self._steps, "pre": self._pre, "id2r": self._id2r, "int": self._int,
            "tb": self._tb, "end": self._end, "kbd": self._kbd, "exc": self._exc, "warn": self._warn,
        }  # fmt: skip

    # -- input

    def feed(self, text: str) -> list[Event]:
        return self.feed_bytes(text.encode("utf-8", "surrogateescape"))

    def feed_bytes(self, data: bytes) -> list[Event]:
        if not data:
            return []
        text = data.decode("latin-1")  # never fails, one char per byte; fields are re-decoded as UTF-8
        if self._cr and text.startswith("\n"):
            text = text[1:]  # the \n of a \r\n split across pieces
        self._cr = text.endswith("\r")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self._mode != "native":
            return self._lineage(text)
        return self._native(text)

    def _native(self, text: str) -> list[Event]:
        try:
            return self._process(text)
        except Exception:  # a parser must never take a run down: count what it could not read
            n = text.count("\n")
            self.s.lines += n
            self.s.unknown_lines += n
            return []

    def _lineage(self, text: str) -> list[Event]:
        """Until the first line is known: hold; then the pinned code's text, or a registered format's items."""
        if self._mode is None:
            buf = self._tcarry + text
            head = skip_preamble(buf)
            if head is None:
                self._tcarry = buf
                if buf.count("\n") <= PREAMBLE_LINES:
                    return []
                head = buf  # a long preamble of nothing but warnings: the pinned code's log
            self._tcarry, text = buf[: len(buf) - len(head)], head
            if not self._claim(head):
                text, self._tcarry = self._tcarry + text, ""
                return self._native(text)
        assert self._reader is not None
        lines = (self._tcarry + text).split("\n")
        self._tcarry = lines.pop()
        return self._items([y for x in lines for y in self._reader.line(x)])

    def _items(self, items: list[Item]) -> list[Event]:
        """A format's items, in order: text read as any log's, an event folded into the summary, None a line."""
        out: list[Event] = []
        text: list[str] = []
        for it in items:
            if isinstance(it, str):
                text.append(it)
                continue
            if text:
                out += self._native("\n".join(text) + "\n")
                text = []
            self.s.lines += 1
            if it is None:
                continue
            try:
                ev = self._fold(it, self.s.lines)
            except Exception:  # as for lines: never fatal, counted
                self.s.unknown_lines += 1
                continue
            if ev is not None and self.emit:
                out.append(ev)
        if text:
            out += self._native("\n".join(text) + "\n")
        return out

    def _fold(self, ev: Event, line: int) -> Event | None:
        """An event a format's reader made, folded into the summary as the line it stands for would be."""
        ev.line = self._line = line
        s = self.s
        if isinstance(ev, Config):
            self._config(ev.args)
        elif isinstance(ev, Speed):
            step = ev.step if ev.step else self.step_of(ev.epoch, ev.batch)
            at = (0, step - 1) if step else (ev.epoch, ev.batch)  # the curve's (epoch, batch): its step_of is step
            self.speed.add((*at, ev.samples_per_sec, ev.metrics), str(ev.samples_per_sec))
            if step:
                s.last_step = max(s.last_step or 0, step)
        elif isinstance(ev, Verification):
            if not 0.0 <= ev.accuracy <= 1.0:  # false for nan too
                ev = Malformed(line, ev.time, f"[{ev.target}] accuracy {ev.accuracy!r} is not in [0, 1]", ev.accuracy)
                return self._fold(ev, line)
            self._verified(ev.target, ev.step, ev.accuracy, ev.std, ev.xnorm)
        elif isinstance(ev, Malformed):
            s.malformed_lines += 1
            if len(s.malformed) < MAX_NOTED:
                s.malformed.append(f"line {line}: {ev.text}")
        elif isinstance(ev, RunEnded):
            s.ending = {"reason": ev.reason, "detail": ev.detail}
        elif isinstance(ev, Warn):
            s.warnings += 1
        return ev

    def _claim(self, head: str) -> bool:
        """Decide the log's format from its head: a registered lineage's (True) or the parser's own."""
        fmt = format_of(head)
        self._mode, self._format = ("read", fmt) if fmt else ("native", None)
        self._reader = fmt.reader() if fmt else None
        self.s.lineage = fmt.lineage if fmt else NATIVE
        return fmt is not None

    def close(self) -> list[Event]:
        held: list[Event] = []
        if self._mode is None and self._tcarry:  # a log that ended before its lineage was clear
            text, self._tcarry = self._tcarry, ""
            head = skip_preamble(text if text.endswith("\n") else text + "\n")
            self._claim(head or "")
            held = self.feed_bytes(text.encode("latin-1"))
        if self._reader is not None:
            rest = self._reader.line(self._tcarry) if self._tcarry else []
            self._tcarry = ""
            held += self._items(rest + self._reader.close())
        tail, self._carry = self._carry, ""
        if not tail:
            return held
        try:
            return held + self._process(tail + "\n")
        except Exception:
            self.s.lines += 1
            self.s.unknown_lines += 1
            return held

    def summary(self) -> Summary:
        s = self.s
        s.batches_per_epoch = self.batches_per_epoch
        if self.speed.new_format is not None:
            s.speedometer_format = "Batch [a-b]" if self.speed.new_format else "Batch [N]"
        s.speed_lines = self.speed.count
        s.median_samples_per_sec = self.speed.median()
        s.train_curve = [(self.step_of(e, b), m["acc"]) for e, b, _, m in self.speed.curve if "acc" in m]
        s.loss_curve = [(self.step_of(e, b), m["loss"]) for e, b, _, m in self.speed.curve if "loss" in m]
        if self._format is not None and self._format.lr_per_line:  # a decay by step, not lr steps
            s.lr_points = {k: m["lr"] for e, b, _, m in self.speed.curve if "lr" in m and (k := self.step_of(e, b))}
        return s

    # -- chunk processing

    def _process(self, data: str) -> list[Event]:
        lines = data.split("\n")
        tail = lines.pop()
        if not lines:
            self._carry += tail
            return []
        carried = self._carry
        if carried:
            lines[0] = carried + lines[0]
        self._carry = tail
        first = self.s.lines + 1
        self.s.lines += len(lines)
        # Speedometer lines, in bulk: the first line separately (it may continue a carried piece)
        end = len(data) - len(tail)
        if carried:
            nl = data.find("\n")
            values = _SPEED_VALUE.findall(lines[0]) + _SPEED_VALUE.findall(data, nl + 1, end)
        else:
            values = _SPEED_VALUE.findall(data, 0, end)
        events: list[Event] = []
        if values:
            self.speed.count += len(values)
            self.speed.histogram.update(values)
            self.speed.sample(lines, len(values))
        # everything else, one line at a time, in order
        match = _RARE.match
        handlers = self._handlers
        emit = self.emit
        pos = 0  # line numbers are found only for lines that make events (list.index scans in C)
        if emit:  # every Speedometer line an event too, in line order: what a watcher decides never depends on
            # how the output was cut into pieces (one line at a time or one burst)
            rare = [x for x in lines if not x.endswith(_TESTING)]
        else:  # "infer time" only feeds Verification.infer_time, an event field
            rare = [x for x in lines if NOT_RARE not in x and not x.endswith(_TESTING) and _INFER not in x]
        for ln in rare:
            if emit and NOT_RARE in ln:
                at = lines.index(ln, pos)
                sp = self._speed_line(ln, first + at)
                if sp is not None:
                    pos = at + 1
                    events.append(sp)
                    continue
            m = match(ln)
            if ln[:1] in _QUOTED and (m is None or m.lastgroup in _STATELESS):  # pasted: "> ", indented, fenced
                bare = ln.lstrip(" \t>").rstrip()
                if bare.startswith("```"):
                    continue
                m = (m2 if (m2 := match(bare)) and m2.lastgroup not in _STATELESS else None) or m
            if m is None:
                if ln.strip():
                    self.s.unknown_lines += 1
                    self.s.unknown_sample = self.s.unknown_sample or ln.strip()[:160]
                    self._images_pending = False
                continue
            kind = m.lastgroup or ""
            if kind in _STATELESS:
                self._images_pending = False
                continue
            if kind in _NOTING:  # handlers that note a line number: found here, as for events
                pos = lines.index(ln, pos)
                self._line = first + pos
                pos += 1
            try:
                ev = handlers[kind](m)
            except _Malformed as bad:
                self.s.malformed_lines += 1
                if len(self.s.malformed) < MAX_NOTED:
                    self.s.malformed.append(f"line {self._line}: {bad}")
                if emit:
                    line = self._line if kind in _NOTING else 0
                    events.append(Malformed(line, _s(m.group("ts")), str(bad), bad.value))
                continue
            if ev is not None and emit:
                if kind not in _NOTING:
                    pos = lines.index(ln, pos)
                    self._line = first + pos
                    pos += 1
                ev.line = self._line
                events.append(ev)
        if values and not emit:  # the summary needs the last step only, once the piece's other lines are read
            # (its head may say the batches of an epoch); events took every Speedometer line above, in order
            i = len(lines) - 1
            while i > 0 and NOT_RARE not in lines[i]:
                i -= 1
            self._speed_line(lines[i], first + i)
        return events

    def _speed_line(self, line: str, number: int) -> Speed | None:
        """A Speedometer line: its step noted as the log's last; its event when events are asked for."""
        p = parse_speed(line) or (parse_speed(line.lstrip(" \t>")) if line[:1] in _QUOTED else None)
        if p is None:
            return None
        e, b, v, metrics, new_format = p
        if self.speed.new_format is None:
            self.speed.new_format = new_format
        step = self.step_of(e, b)
        if step:
            self.s.last_step = max(self.s.last_step or 0, step)
        return Speed(number, None, e, b, v, metrics, step) if self.emit else None

    def step_of(self, epoch: int, batch: int) -> int | None:
        if epoch == 0:
            return batch + 1
        return epoch * self.batches_per_epoch + batch + 1 if self.batches_per_epoch else None

    def _update_bpe(self) -> None:
        if self._images and self.batch_size:
            self.batches_per_epoch = self._images // self.batch_size

    # -- one handler per kind of line; each folds into the summary and returns an event (or None)

    def _ver(self, m: re.Match) -> Event | None:
        self._images_pending = False
        tb, sb, kb, ab, db = m.group("v_t", "v_s", "v_k", "v_a", "v_d")
        target = self._targets.get(tb)
        if target is None:
            target = self._targets.setdefault(tb, _s(tb) or "")
        if kb == "XNorm":
            self._xnorm[target] = float(ab)  # nan when a run diverged: reported, not a malformed line
            return None
        acc = _accuracy(ab, f"[{target}] {kb}")
        std = _accuracy(db, f"[{target}] std") if db is not None else float("nan")
        xnorm = self._xnorm.pop(target, None)
        step = None if sb is None else int(sb)
        self._verified(target, step, acc, std, xnorm)
        infer, self._infer = self._infer, None
        if not self.emit:
            return None
        return Verification(0, _s(m.group("ts")), target, step, acc, std, xnorm, infer, kb == "Accuracy-Flip")

    def _verified(self, target: str, step: int | None, acc: float, std: float, xnorm: float | None) -> None:
        s = self.s
        if step is None:
            s.standalone[target] = (acc, std)
            return
        seen = s.verifications.get(target)
        if seen:
            last = next(reversed(seen))
            if step <= last:
                self._backwards(f"[{target}][{step}] verified after [{target}][{last}]")
        self._last_ver_step = step
        s.verifications.setdefault(target, {})[step] = (acc, std, xnorm)
        if s.last_step is None or step > s.last_step:
            s.last_step = step

    def _infer_time(self, m: re.Match) -> None:
        self._infer = float(m.group("infer_v"))

    def _shape(self, m: re.Match) -> None:
        self._images_pending = False
        dims = m.group("shape_v")
        if dims.count(",") == 3:  # the (N, 3, 112, 112) of a verification set: L says Python 2
            self.s.python = 2 if "L" in dims else 3

    def _backwards(self, why: str) -> None:
        if len(self.s.backwards) < MAX_NOTED:
            self.s.backwards.append(f"line {self._line}: {why}")

    def _high(self, m: re.Match) -> Event | None:
        self.s.highest = (int(m.group("h_s")), _accuracy(m.group("h_v"), "Accuracy-Highest"))
        return Highest(0, _s(m.group("ts")), *self.s.highest) if self.emit else None

    def _lbe(self, m: re.Match) -> Event | None:
        e, b = int(m.group("lbe_e")), int(m.group("lbe_b"))
        lr_text = m.group("lbe_lr")
        if self.s.python is None and _PY3_FLOAT.search(lr_text):
            self.s.python = 3
        step = self.step_of(e, b)
        lr = _finite(lr_text, "lr")
        if step is not None:
            if step < self._last_lbe_step:
                self._backwards(f"lr-batch-epoch at step {step} after step {self._last_lbe_step}")
            self._last_lbe_step = step
            self.s.lr_points[step] = lr
        if step and (self.s.last_step is None or step > self.s.last_step):
            self.s.last_step = step
        return LrBatchEpoch(0, _s(m.group("ts")), lr, b, e, step) if self.emit else None

    def _lrc(self, m: re.Match) -> Event | None:
        step = self._lr_steps[self._lr_changes] if self._lr_changes < len(self._lr_steps) else None
        self._lr_changes += 1
        lr = float(m.group("lrc_v"))
        if step is not None:
            self.s.lr_changes[step] = lr
        return LrChange(0, _s(m.group("ts")), lr, step) if self.emit else None

    def _save(self, m: re.Match) -> Event | None:
        n = int(m.group("save_n"))
        self.s.checkpoints.setdefault(n, {"step": None, "path": None})["step"] = self._last_ver_step
        return CheckpointSaved(0, _s(m.group("ts")), n, self._last_ver_step) if self.emit else None

    def _saved(self, m: re.Match) -> Event | None:
        path = _s(m.group("saved_p")) or ""
        num = _CKPT_NUMBER.search(path)
        n = int(num.group(1)) if num else None
        if n is not None:
            self.s.checkpoints.setdefault(n, {"step": None, "path": None})["path"] = path
        return CheckpointWritten(0, _s(m.group("ts")), path, n) if self.emit else None

    def _em(self, m: re.Match) -> Event | None:
        e, name, v = int(m.group("em_e")), _s(m.group("em_k")) or "", float(m.group("em_v"))
        self.s.epochs.setdefault(e, {})[name] = v
        return EpochMetric(0, _s(m.group("ts")), e, name, v) if self.emit else None

    def _et(self, m: re.Match) -> Event | None:
        e, v = int(m.group("et_e")), float(m.group("et_v"))
        self.s.epochs.setdefault(e, {})["time_cost"] = v
        return EpochTime(0, _s(m.group("ts")), e, v) if self.emit else None

    def _cfg(self, m: re.Match) -> Event | None:
        args = parse_namespace(_s(m.group("cfg_v")) or "")
        self._config(args)
        return Config(0, _s(m.group("ts")), args) if self.emit else None

    def _config(self, args: dict) -> None:
        bs = args.get("batch_size")
        if isinstance(bs, int) and bs > 0:
            self.batch_size = bs
            self._update_bpe()
        self._lr_changes = 0
        self.s.config = args
        self.s.configs.append(self._line)

    def _steps(self, m: re.Match) -> Event | None:
        self._lr_steps = [int(x.rstrip("L")) for x in re.findall(r"\d+L?", m.group("steps_v"))]
        self._lr_changes = 0
        self.s.lr_steps = list(self._lr_steps)
        return LrSteps(0, _s(m.group("ts")), list(self._lr_steps)) if self.emit else None

    def _pre(self, m: re.Match) -> Event | None:
        parts = [p.strip().strip("'\"") for p in (_s(m.group("pre_v")) or "").split(",")]
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            prefix = parts[0].lstrip("u").strip("'\"")
            self.s.pretrained = (prefix, int(parts[1]))
            return Pretrained(0, _s(m.group("ts")), prefix, int(parts[1])) if self.emit else None
        return None

    def _id2r(self, m: re.Match) -> None:
        self.s.identities = int(m.group("id2r_v"))
        self._images_pending = True

    def _int(self, m: re.Match) -> Event | None:
        if not self._images_pending:
            return None
        self._images_pending = False  # FaceImageIter prints len(seq) right after id2range
        self._images = self.s.images = int(m.group("int_v"))
        self._update_bpe()
        return Dataset(0, _s(m.group("ts")), self._images, self.s.identities) if self.emit else None

    def _tb(self, m: re.Match) -> None:
        self._in_traceback = True

    def _ending(self, m: re.Match, reason: str, detail: str) -> Event | None:
        self.s.ending = {"reason": reason, "detail": detail}
        return RunEnded(0, _s(m.group("ts")), reason, detail) if self.emit else None

    def _end(self, m: re.Match) -> Event | None:
        return self._ending(m, "force-ended", "Task is force ended by user")

    def _kbd(self, m: re.Match) -> Event | None:
        self._in_traceback = False
        return self._ending(m, "interrupted", "KeyboardInterrupt")

    def _exc(self, m: re.Match) -> Event | None:
        if not self._in_traceback:
            return None  # a message that mentions an error, not the end of a traceback
        self._in_traceback = False
        kind = _s(m.group("exc_t")) or ""
        detail = f"{kind}: {_s(m.group('exc_m'))}".strip()
        return self._ending(m, "interrupted" if kind.endswith("KeyboardInterrupt") else "error", detail)

    def _warn(self, m: re.Match) -> Event | None:
        self.s.warnings += 1
        return Warn(0, _s(m.group("ts")), (_s(m.group("warn")) or "").strip()) if self.emit else None


def parse_text(text: str) -> tuple[list[Event], LogParser]:
    p = LogParser()
    return p.feed(text) + p.close(), p


def summarize(path: Path, chunk_size: int = 1 << 20) -> Summary:
    path, hint = Path(path), "give the path of a training log (stdout of train_softmax.py)"
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise MfnError(f"{path} is {kind_of(mode)}, not a log file: a log is read from a regular file",
                           hint=hint + "; to read a stream, save it first: ... > run.log")  # fmt: skip
        parser = LogParser(events=False, path=str(path))
        with open(path, "rb") as f:
            while data := f.read(chunk_size):
                parser.feed_bytes(data)
    except FileNotFoundError:
        raise MfnError(f"{path}: no such log file", hint=hint) from None
    except OSError as e:
        raise MfnError(f"{path}: cannot read the log: {e.strerror}", hint=hint) from None
    parser.close()
    return parser.summary()


def summarize_text(text: str, path: str = "-") -> Summary:
    parser = LogParser(events=False, path=path)
    parser.feed(text)
    parser.close()
    return parser.summary()
