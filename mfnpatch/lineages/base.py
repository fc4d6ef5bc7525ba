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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mfnpatch.checkpoint import StopPoint
from mfnpatch.errors import MfnError


class LrSchedule(Protocol):
    resolution: float  # the unit the trainer's log prints the rate in (0: all its digits)

    def at(self, step: int) -> float | None:
        """The learning rate the plan schedules for ``step`` (None: the plan leaves it to the code)."""
        ...


@dataclass
class StepSchedule:
    """The pinned MXNet code's schedule: ``base`` times 0.1 at each of ``steps`` (after ``beta_freeze``)."""

    base: float
    steps: list[int] | None  # None: the code's own default schedule, taken from its 'lr_steps [...]' line
    beta_freeze: int = 0
    resolution: float = 0.0  # lr-batch-epoch lines print repr(lr)

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
    resolution: float = 1e-4  # CallBackLogging prints "LearningRate %.6f" at the pin, %.4f in the published logs

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


class ResumeError(MfnError):
    pass


@dataclass
class ResumeRequest:
    """What the runner knows of an interrupted training stage: its command, where it ran, and what its logs
    (merged over the segments so far) say it saved."""

    argv: list[str]
    cwd: Path
    segment: int  # the index the new segment gets (1, 2, ...)
    stop: StopPoint | None
    saves: dict[int, dict]  # the stage's saves its logs name: number -> {step, path, segment, number}
    config: dict[str, Any]  # the configuration its first log printed
    lr_steps: list[int] | None  # the lr schedule its log printed (the MXNet code's 'lr_steps [...]')


@dataclass
class Resumed:
    """How a stage continues: the command of its next segment and where it starts."""

    segment: int
    from_save: int  # the stage's save resumed from (an MXNet checkpoint number; arcface_torch: epochs done)
    from_step: int  # the stage step that save was made at
    what: str  # the save it resumes from, in words ("checkpoint 3", "the state saved after epoch 1")
    pretrained: str  # the files it starts from (PREFIX,N; a directory of checkpoint_gpu_N.pt)
    prefix: str  # where the segment writes
    lr: float | None  # the rate in force at from_step
    lr_steps: list[int]
    argv: list[str]
    stop: StopPoint | None  # in the numbering of the segment's log
    files: list[Path]  # the saved state the segment reads, checked against the bytes the run recorded
    steps: Literal["segment", "stage"]  # how the segment's log counts steps: from its own start, or the stage's
    differences: tuple[str, ...]  # what stays different from an uninterrupted run
    summary: str  # the resume in the lineage's own terms
    reached: bool = False  # the stop save was made before the interruption: the stage is done
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"resumed from {self.what} (step {self.from_step}) as segment {self.segment}: {self.summary}"


class Lineage(ABC):
    """One line of InsightFace's training code. Names are the registry's keys, the one name used everywhere."""

    name: str
    title: str
    framework: str  # the import name of its framework (mxnet, torch)
    capabilities: Capabilities
    defining: tuple[str, ...]  # the arguments that tell its stages apart (a difference disqualifies)
    compared: tuple[str, ...]  # the arguments compared with a recipe's (each difference is a finding)
    # its log's per_batch_size is per device, the total its product with the devices (the MXNet code's ctx)
    batch_per_device: bool = False
    seeding: str | None = None  # how its own code seeds itself, beside mfnpatch's start-up hook (None: it does not)
    # what its export hands to convert ncnn: "mxnet" (a checkpoint), "onnx" (a graph); None: nothing to convert
    model_format: str | None = None
    cpu_environment: str | None = None  # the bundled environment that runs its recipes on a CPU (None: none)
    column: str = ""  # its column's heading in the GPU table (env gpus --markdown)
    no_gpu_build: str = ""  # what the doctor adds when no build of its framework has kernels for a GPU

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

    def total_batch_of(self, args: dict[str, Any]) -> int | None:
        """The total batch of a stage from its arguments (``args``: in the terms its log prints)."""
        total = args.get("batch_size")
        return total if isinstance(total, int) else None

    def resume(self, req: ResumeRequest) -> Resumed | None:
        """The next segment of an interrupted stage (None: nothing saved yet, run it from its start); a
        ResumeError says why it cannot continue."""
        raise ResumeError(self.capabilities.resume or f"{self.name} does not resume")

    def state_files(self, argv: list[str], cwd: Path) -> list[Path]:
        """Files a resume reads that the log does not name (their bytes are recorded when the stage ends)."""
        return []
