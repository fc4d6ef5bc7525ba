"""What a lineage of InsightFace's training code is, to mfnpatch: the protocol every lineage implements, the
typed facts it reads from a stage's command, and the capabilities it has or says it lacks.

A *lineage* is a line of InsightFace's code with its own trainer, command grammar and log format: the pinned MXNet
code (``insightface_mxnet``: ``train_softmax.py --flag value``) and arcface_torch (``arcface_torch``: ``train_v2.py
configs/X.py key=value``). Everything that differs between them is a method here, so that the runner, the
estimate, the sentinels and verify ask the lineage instead of testing strings; a third line of code is a new
module in ``lineages/`` registered by name (``register``), nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol


class LrSchedule(Protocol):
    def at(self, step: int) -> float | None:
        """The learning rate the plan schedules for ``step`` (None: the plan leaves it to the code)."""
        ...


@dataclass
class StepSchedule:
    """The pinned MXNet code's schedule: ``base`` times 0.1 at each of ``steps`` (after ``beta_freeze``)."""

    base: float
    steps: list[int] | None  # None: the code's own default schedule, taken from its 'lr_steps [...]' line
    beta_freeze: int = 0

    def at(self, step: int) -> float | None:
        if self.steps is None:
            return None
        lr = self.base
        for s in sorted(self.steps):
            if self.beta_freeze + s <= step:
                lr *= 0.1
        return lr

    def describe(self) -> str:
        steps = ",".join(str(x) for x in self.steps) if self.steps else "(the code's default)"
        return f"--lr {self.base:g} --lr-steps {steps}"


@dataclass
class PolySchedule:
    """arcface_torch's PolynomialLRWarmup (lr_scheduler.py at the pin): linear warm-up over ``warmup`` steps, then
    ``base x (1 - (step - warmup) / (total - warmup)) ** power``; the rate logged at global step s is the one
    after s scheduler steps."""

    base: float
    warmup: int
    total: int
    power: float = 1.0

    def at(self, step: int) -> float | None:
        if self.total <= self.warmup or step <= 0:
            return None
        if step <= self.warmup:
            return self.base * step / self.warmup
        return self.base * (1.0 - (min(self.total, step) - self.warmup) / (self.total - self.warmup)) ** self.power

    def describe(self) -> str:
        return f"lr {self.base:g}, polynomial decay to 0 over {self.total:,} steps (warm-up {self.warmup})"


@dataclass(frozen=True)
class TrainerFacts:
    """What a training stage's command trains with, read once from the command by its lineage."""

    lineage: str
    per_gpu_batch: int | None
    processes: int  # the trainer processes the command starts (torchrun's --nproc_per_node; 1 for MXNet's)
    verbose: int  # steps between verifications (and, for the MXNet code, saves)
    steps: int | None  # the steps the command trains for by itself (None: until it is stopped)
    lr: LrSchedule | None
    prefix: str | None  # where its checkpoints go (--prefix, output=)
    pretrained: str | None  # what it starts from (--pretrained PREFIX,N), None for scratch

    @property
    def total_batch(self) -> int | None:
        return self.per_gpu_batch * self.processes if self.per_gpu_batch else None


@dataclass(frozen=True)
class Capabilities:
    """What mfnpatch can do with a lineage's stages: None where it can, else why not (said by plan, run, verify
    and the docs: nothing is silently off)."""

    resume: str | None
    lr_sentinel: str | None
    fit: str | None

    def said(self) -> list[str]:
        out = []
        for what, why in (("resume", self.resume), ("lr sentinel", self.lr_sentinel), ("fit", self.fit)):
            if why:
                out.append(f"no {what}: {why}")
        return out


class Lineage(ABC):
    """One line of InsightFace's training code. Names are the registry's keys, the one name used everywhere."""

    name: str
    title: str
    framework: str  # the import name of its framework (mxnet, torch)
    capabilities: Capabilities
    defining: tuple[str, ...]  # the arguments that tell its stages apart (a difference disqualifies)
    compared: tuple[str, ...]  # the arguments compared with a recipe's (each difference is a finding)

    @abstractmethod
    def claims(self, argv: list[str]) -> bool:
        """Whether ``argv`` runs this lineage's trainer."""

    @abstractmethod
    def args(self, argv: list[str]) -> dict[str, Any]:
        """The arguments the command trains with, in the terms its log prints (defaults filled in)."""

    @abstractmethod
    def facts(self, argv: list[str]) -> TrainerFacts:
        """The typed facts of a command of this lineage."""

    @abstractmethod
    def probe_argv(self, argv: list[str], prefix: str, steps: int) -> list[str]:
        """The command for a probe of ``steps`` steps into ``prefix`` (from scratch; a verification at half)."""

    @abstractmethod
    def get(self, argv: list[str], key: str) -> str | None:
        """One argument of a command, as written (None when the command leaves it to the default)."""

    @abstractmethod
    def set(self, argv: list[str], key: str, value: str) -> list[str]:
        """The command with one argument set (added when absent)."""
