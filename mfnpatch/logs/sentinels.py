"""Sentinels: signs, read live from a training stage's log, that a run has gone wrong and will not recover —
so that the runner stops it in minutes instead of at its stop point a day later.

Pure: ``Watch.feed(event)`` returns a ``Trip`` the first time a sentinel fires, and nothing else. The runner
(``runs/execute.py``) feeds it the events it already parses and stops the stage cleanly on a trip. Each
sentinel's default, and the evidence for it, is in ``DEFAULTS`` and docs/sentinels.md; a recipe overrides them
(``sentinels:`` at the top, in a stage, or in a profile) or switches one ``off``.

- ``chance``: every verification target at or below ``at_most`` (0.55) at the ``after_rounds``-th (2nd)
  verification round or later. Chance on a balanced verification set is 0.5; the seed's softmax run was at
  lfw 0.906, cfp_fp 0.711, agedb_30 0.705 at its second round (step 4000), its ArcFace run above 0.82.
- ``train_acc``: training accuracy at or below chance (0, or 1/num_classes) on every one of the first
  ``after_lines`` (100) Speedometer lines. The seed's softmax run left 0 on its 4th line (1/85164 is 1.2e-5;
  0.000195 is two right of 10240), its ArcFace run on its first.
- ``nonfinite``: a training metric, a verification accuracy or a learning rate that is NaN or infinite.
- ``lr``: the learning rate an ``lr-batch-epoch`` line prints is not the one the plan scheduled for that step
  (``--lr`` times 0.1 at each ``--lr-steps`` step the stage has passed; arcface_torch's polynomial decay),
  beyond ``rel_tolerance`` (Python 3 prints 0.0010000000000000002 for 0.001) and half the unit the log prints it
  in (arcface_torch: ``LearningRate %.6f`` at the pin, ``%.4f`` in its published logs: 1e-4).
- ``stall``: throughput below ``below`` (0.5) of its first stable value (the median of Speedometer lines 2 to
  ``1 + baseline_lines``) on ``lines`` (3) Speedometer lines in a row. The window that holds a verification
  round dips once (to 0.22 of the first value in the seed's logs; 101 dips, never two lines in a row).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field

from mfnpatch.lineages.base import LrSchedule, StepSchedule
from mfnpatch.logs.events import (
    Config,
    Dataset,
    Event,
    LrBatchEpoch,
    LrChange,
    LrSteps,
    Malformed,
    Speed,
    Verification,
)
from mfnpatch.schema import Strict

NAMES = ("chance", "train_acc", "nonfinite", "lr", "stall")
Off = Literal["off"]


class Chance(Strict):
    after_rounds: int = Field(default=2, ge=1)
    at_most: float = Field(default=0.55, ge=0, le=1)


class TrainAcc(Strict):
    after_lines: int = Field(default=100, ge=1)


class NonFinite(Strict):
    pass


class Lr(Strict):
    rel_tolerance: float = Field(default=1e-6, gt=0, lt=1)


class Stall(Strict):
    below: float = Field(default=0.5, gt=0, lt=1)
    lines: int = Field(default=3, ge=1)
    baseline_lines: int = Field(default=5, ge=1)


class Sentinels(Strict):
    """Every sentinel's settings, or ``off``. The defaults apply to every training stage."""

    chance: Chance | Off = Field(default_factory=Chance)
    train_acc: TrainAcc | Off = Field(default_factory=TrainAcc)
    nonfinite: NonFinite | Off = Field(default_factory=NonFinite)
    lr: Lr | Off = Field(default_factory=Lr)
    stall: Stall | Off = Field(default_factory=Stall)

    def merged(self, override: dict[str, Any] | None) -> Sentinels:
        """These settings with ``override`` (a recipe's ``sentinels:``: a name -> ``off`` or some of its keys)
        applied on top."""
        if not override:
            return self
        body = self.model_dump()
        for name, v in override.items():
            if v is None or v is False or v == "off":  # YAML reads a bare off as false
                body[name] = "off"
            elif not isinstance(v, dict):
                raise ValueError(f"{name}: {v!r}: write off, or a mapping of its settings")
            else:
                base = body.get(name)
                body[name] = {**(base if isinstance(base, dict) else {}), **dict(v)}
        return Sentinels.model_validate(body)

    def active(self) -> list[str]:
        return [n for n in NAMES if getattr(self, n) != "off"]


def all_off() -> Sentinels:
    return Sentinels.model_validate({n: "off" for n in NAMES})


HINTS = {
    "chance": "verification at chance means the network learns nothing the pairs can tell: check the data and its "
    "labels (mfnpatch data check), that the py3 set is applied (mfnpatch status), and the learning rate",
    "train_acc": "training accuracy that never leaves chance: labels that do not match the images (mfnpatch data "
    "check), a learning rate far too high or too low, or a pretrained model that did not load",
    "nonfinite": "the loss diverged: a learning rate too high for this batch size, or a broken pretrained model",
    "lr": "the trainer's learning rate is not the plan's: another --lr/--lr-steps than the recipe's, or a patched "
    "tree that changes the schedule (mfnpatch status)",
    "stall": "the GPU waits for data: a slow disk or network file system under train.rec, too few CPU cores "
    "decoding images, or another job on the machine",
}


@dataclass
class Trip:
    sentinel: str
    why: str
    step: int | None
    line: int
    hint: str

    def to_dict(self) -> dict:
        return asdict(self)


LrPlan = StepSchedule  # the pinned code's step schedule (lineages/base.py), as sentinels and tests name it


@dataclass
class Watch:
    """The sentinels of one stage, fed its events in the stage's step numbering."""

    settings: Sentinels
    lr_plan: LrSchedule | None = None
    rounds: dict[str, int] = field(default_factory=dict)  # target -> verifications seen
    latest: dict[str, float] = field(default_factory=dict)  # target -> its last accuracy
    acc_lines: int = 0
    acc_above_chance: bool = False
    classes: int | None = None
    speeds: list[float] = field(default_factory=list)
    low_run: int = 0
    tripped: Trip | None = None

    def feed(self, ev: Event) -> Trip | None:
        if self.tripped is not None:
            return None
        trip = self._check(ev)
        if trip is not None:
            self.tripped = trip
        return trip

    def feed_all(self, events: list[Event]) -> Trip | None:
        for ev in events:
            trip = self.feed(ev)
            if trip is not None:
                return trip
        return None

    def _trip(self, name: str, why: str, ev: Event) -> Trip:
        return Trip(name, why, getattr(ev, "step", None), ev.line, HINTS[name])

    def _check(self, ev: Event) -> Trip | None:
        s = self.settings
        if isinstance(ev, Dataset) and ev.identities:
            self.classes = ev.identities
        plan = self.lr_plan
        if isinstance(ev, LrSteps) and isinstance(plan, StepSchedule) and plan.steps is None:
            plan.steps = list(ev.steps)  # the plan left the schedule to the code: its printed default
        if isinstance(ev, Config) and isinstance(plan, StepSchedule):
            bf = ev.args.get("beta_freeze")
            if isinstance(bf, int | float) and not isinstance(bf, bool):
                plan.beta_freeze = int(bf)
        if s.nonfinite != "off":
            bad = _nonfinite(ev)
            if bad:
                return self._trip("nonfinite", bad, ev)
        if isinstance(ev, Verification) and ev.step is not None and s.chance != "off":
            self.rounds[ev.target] = self.rounds.get(ev.target, 0) + 1
            self.latest[ev.target] = ev.accuracy
            n, c = self.rounds[ev.target], s.chance
            # a round is complete when every target has as many verifications as this one (targets print in turn)
            if n >= c.after_rounds and all(k == n for k in self.rounds.values()):
                if all(a <= c.at_most for a in self.latest.values()):
                    vals = ", ".join(f"{t} {a:.5f}" for t, a in self.latest.items())
                    return self._trip("chance", f"verification at chance in round {n} (step {ev.step}): {vals}; "
                                      f"every target <= {c.at_most:g}", ev)  # fmt: skip
        if isinstance(ev, Speed):
            trip = self._speed(ev)
            if trip is not None:
                return trip
        lr_seen = None
        if isinstance(ev, LrBatchEpoch):
            lr_seen = ev.lr
        elif isinstance(ev, Speed) and isinstance(ev.metrics.get("lr"), float):  # arcface_torch prints it per line
            lr_seen = ev.metrics["lr"]
        step_of: int | None = getattr(ev, "step", None)
        if lr_seen is not None and s.lr != "off" and plan is not None and step_of is not None:
            step = int(step_of)
            want = plan.at(step)
            slack = s.lr.rel_tolerance * abs(want or 0) + plan.resolution / 2 + 1e-12  # what printing rounds away
            if want is not None and math.isfinite(lr_seen) and abs(lr_seen - want) > slack:
                how = plan.describe() if hasattr(plan, "describe") else "the plan's schedule"
                return self._trip("lr", f"lr {lr_seen:g} at step {step}, the plan schedules {want:g} ({how})", ev)
        return None

    def _speed(self, ev: Speed) -> Trip | None:
        s = self.settings
        acc = ev.metrics.get("acc")
        if s.train_acc != "off" and isinstance(acc, float) and not self.acc_above_chance:
            self.acc_lines += 1
            chance = 1.0 / self.classes if self.classes else 0.0
            if acc > chance:
                self.acc_above_chance = True
            elif self.acc_lines >= s.train_acc.after_lines:
                what = "0" if not self.classes else f"chance (1/{self.classes} = {chance:.2g})"
                return self._trip("train_acc", f"training accuracy at or below {what} on all of the first "
                                  f"{self.acc_lines} Speedometer lines", ev)  # fmt: skip
        if s.stall != "off" and math.isfinite(ev.samples_per_sec):
            st = s.stall
            self.speeds.append(ev.samples_per_sec)
            if len(self.speeds) > 1 + st.baseline_lines:
                first = statistics.median(self.speeds[1 : 1 + st.baseline_lines])
                self.speeds.pop()  # only the baseline is kept
                self.low_run = self.low_run + 1 if ev.samples_per_sec < st.below * first else 0
                if self.low_run >= st.lines:
                    return self._trip("stall", f"throughput {ev.samples_per_sec:g} samples/s, below {st.below:g} "
                                      f"of its first stable value ({first:g}) on {self.low_run} Speedometer lines "
                                      "in a row", ev)  # fmt: skip
        return None


def _nonfinite(ev: Event) -> str | None:
    if isinstance(ev, Malformed) and ev.value is not None and not math.isfinite(ev.value):
        return f"line {ev.line}: {ev.text}" if ev.line else ev.text
    if isinstance(ev, Speed):
        for k, v in ev.metrics.items():
            if isinstance(v, float) and not math.isfinite(v):
                return f"training {k} is {v} at step {ev.step}"
    if isinstance(ev, Verification) and not math.isfinite(ev.accuracy):
        return f"{ev.target} verification accuracy is {ev.accuracy} at step {ev.step}"
    if isinstance(ev, LrBatchEpoch | LrChange) and not math.isfinite(ev.lr):
        return f"learning rate is {ev.lr} at step {ev.step}"
    return None
