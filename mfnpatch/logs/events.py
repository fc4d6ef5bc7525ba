"""What a training log says: typed events (one per kind of line the parser knows) and the running summary
a whole log folds into (configuration, verification per target and step, checkpoints, lr, speed, the end).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mfnpatch.lineages import DEFAULT

# --------------------------------------------------------------------------------------------
# Events


@dataclass(slots=True)
class Event:
    line: int  # 1-based line number in the log
    time: str | None  # the platform's timestamp prefix, when present

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(slots=True)
class Config(Event):
    args: dict


@dataclass(slots=True)
class Pretrained(Event):
    prefix: str
    epoch: int


@dataclass(slots=True)
class Dataset(Event):
    images: int
    identities: int | None


@dataclass(slots=True)
class LrSteps(Event):
    steps: list[int]


@dataclass(slots=True)
class LrChange(Event):
    lr: float
    step: int | None  # the --lr-steps entry that triggered it, when the schedule is known


@dataclass(slots=True)
class LrBatchEpoch(Event):
    lr: float
    batch: int
    epoch: int
    step: int | None


@dataclass(slots=True)
class Speed(Event):
    epoch: int
    batch: int
    samples_per_sec: float
    metrics: dict
    step: int | None


@dataclass(slots=True)
class Verification(Event):
    target: str
    step: int | None  # None for the standalone verification.py format
    accuracy: float
    std: float
    xnorm: float | None
    infer_time: float | None
    flip: bool = True


@dataclass(slots=True)
class Highest(Event):
    step: int
    value: float


@dataclass(slots=True)
class CheckpointSaved(Event):
    number: int
    step: int | None  # the verification step it follows: number x --verbose


@dataclass(slots=True)
class CheckpointWritten(Event):
    path: str
    number: int | None


@dataclass(slots=True)
class EpochMetric(Event):
    epoch: int
    name: str
    value: float


@dataclass(slots=True)
class EpochTime(Event):
    epoch: int
    seconds: float


@dataclass(slots=True)
class Warn(Event):
    text: str


@dataclass(slots=True)
class Malformed(Event):
    """A known line whose values no healthy run prints (an accuracy or a learning rate that is nan, inf or out
    of range): never evidence of a result, but a sign of a run gone wrong."""

    text: str
    value: float | None = None  # the value it printed, when it is a number


@dataclass(slots=True)
class RunEnded(Event):
    reason: str  # force-ended | error | interrupted
    detail: str


# --------------------------------------------------------------------------------------------
# Summary


HIGHLIGHT_KEYS = (
    "network", "loss_type", "lr", "lr_steps", "wd", "fc7_wd_mult", "per_batch_size", "batch_size", "emb_size",
    "margin_s", "margin_m", "ckpt", "verbose", "target", "pretrained", "prefix", "data_dir", "max_steps",
)  # fmt: skip


@dataclass
class TargetSummary:
    target: str
    rounds: int
    best_accuracy: float
    best_std: float
    best_step: int | None
    last_accuracy: float
    last_std: float
    last_step: int | None


@dataclass
class Summary:
    path: str = "-"
    lineage: str = DEFAULT  # whose log, by lineage name (mfnpatch/lineages/)
    lines: int = 0
    unknown_lines: int = 0
    unknown_sample: str | None = None  # the first line not recognised (shown with the count)
    warnings: int = 0
    python: int | None = None
    speedometer_format: str | None = None  # "Batch [N]" (MXNet <= 1.3) or "Batch [a-b]" (>= 1.4)
    config: dict | None = None
    pretrained: tuple[str, int] | None = None
    images: int | None = None
    identities: int | None = None
    batches_per_epoch: int | None = None
    lr_steps: list[int] | None = None
    lr_changes: dict[int, float] = field(default_factory=dict)  # step -> lr, for changes at known steps
    lr_points: dict[int, float] = field(default_factory=dict)  # step -> lr, from lr-batch-epoch lines
    # target -> step -> (accuracy, std, xnorm)
    verifications: dict[str, dict[int, tuple[float, float, float | None]]] = field(default_factory=dict)
    standalone: dict[str, tuple[float, float]] = field(default_factory=dict)
    highest: tuple[int, float] | None = None
    speed_lines: int = 0
    median_samples_per_sec: float | None = None
    train_curve: list[tuple[int | None, float]] = field(default_factory=list)  # (step, training accuracy)
    loss_curve: list[tuple[int | None, float]] = field(default_factory=list)  # (step, loss): arcface_torch's logs
    checkpoints: dict[int, dict] = field(default_factory=dict)  # number -> {step, path}
    epochs: dict[int, dict] = field(default_factory=dict)  # epoch -> {metric: value, time_cost: s}
    last_step: int | None = None
    ending: dict | None = None
    # what makes the log no evidence of one run: lines that cannot be a run's output, and signs of several runs
    malformed_lines: int = 0  # verification lines whose values are not finite or not in [0, 1]
    malformed: list[str] = field(default_factory=list)  # the first few, "line N: why"
    configs: list[int] = field(default_factory=list)  # line numbers of 'Called with argument' lines
    backwards: list[str] = field(default_factory=list)  # the first few steps that go backwards, "line N: why"

    @property
    def several_runs(self) -> str | None:
        """Why the log holds the lines of more than one run (None: one run, as far as its lines tell)."""
        why = []
        if len(self.configs) > 1:
            shown = ", ".join(map(str, self.configs[:5])) + (", …" if len(self.configs) > 5 else "")
            why.append(f"{len(self.configs)} 'Called with argument' lines (lines {shown})")
        if self.backwards:
            why.append(f"steps go backwards ({self.backwards[0]})")
        return "; ".join(why) or None

    @property
    def highlights(self) -> dict:
        if not self.config:
            return {}
        return {k: self.config[k] for k in HIGHLIGHT_KEYS if k in self.config}

    def targets(self) -> dict[str, TargetSummary]:
        out = {}
        for t, steps in self.verifications.items():
            if not steps:
                continue
            ordered = sorted(steps.items())
            best_step, (ba, bs, _) = max(ordered, key=lambda kv: (kv[1][0], -kv[0]))
            last_step, (la, ls, _) = ordered[-1]
            out[t] = TargetSummary(t, len(ordered), ba, bs, best_step, la, ls, last_step)
        return out

    def how_it_ended(self) -> str:
        if self.ending:
            return f"{self.ending['reason']}: {self.ending['detail']}"
        last = f"step {self.last_step}" if self.last_step else f"line {self.lines}"
        return f"no end marker: the log stops at {last} (still running, killed, or stopped at a planned stop point)"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verifications"] = {
            t: [{"step": s, "accuracy": a, "std": sd, "xnorm": x} for s, (a, sd, x) in sorted(v.items())]
            for t, v in self.verifications.items()
        }
        d["checkpoints"] = [{"number": k, **v} for k, v in sorted(self.checkpoints.items())]
        d["epochs"] = [{"epoch": k, **v} for k, v in sorted(self.epochs.items())]
        d["targets"] = {t: asdict(x) for t, x in self.targets().items()}
        d["highlights"] = self.highlights
        d["ended"] = self.how_it_ended()
        d["several_runs"] = self.several_runs
        return d
