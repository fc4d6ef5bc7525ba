"""The run record (``RUN/record.json``, schema 1), typed to its leaves.

What is on disk, and nothing more: every model here is the shape of a piece of ``record.json``. The record
sits at the bottom of ``runs/``; the runner, the Slurm executor, ``recipe status`` and ``compare`` read and
write it through these models. A run's state maps to an exit code in one place (``RunRecord.exit_code``).
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mfnpatch.checkpoint import StopPoint
from mfnpatch.errors import EXIT_INTERRUPTED, EXIT_OK, MfnError
from mfnpatch.fsutil import atomic_write_json
from mfnpatch.logs.verdicts import Check
from mfnpatch.schema import Strict, load_json, validate

RECORD = "record.json"
SCHEMA = 2  # 2: a stage's and a segment's `end` (how its process ended) is typed; 1 said it in words only
# how a stage's process ended; "sentinel": stopped early because a sentinel fired (logs/sentinels.py)
End = Literal["exited", "stopped", "interrupted", "not started", "sentinel"]
StageStatus = Literal["pending", "queued", "running", "done", "failed", "interrupted", "skipped", "cancelled"]
# incomplete: every stage that ran passed, but some were not run (--only, --from)
RunStatus = Literal["queued", "running", "passed", "failed", "interrupted", "incomplete", "cancelled"]


class RunError(MfnError):
    pass


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------------------------
# The leaves


class TargetMetrics(Strict):
    best: float
    best_step: int | None
    last: float
    last_step: int | None
    rounds: int


class CheckpointSeen(Strict):
    """A checkpoint the stage's log saved: at which step, to which file; a resumed segment's save number."""

    step: int | None = None
    path: str | None = None
    segment: int | None = None
    number: int | None = None


class Metrics(Strict):
    targets: dict[str, TargetMetrics] = Field(default_factory=dict)
    median_samples_per_sec: float | None = None
    checkpoints: dict[str, CheckpointSeen] = Field(default_factory=dict)
    last_step: int | None = None
    python: int | None = None
    ended: str | None = None
    unknown_lines: int = 0


class SegmentRecord(Strict):
    """A resumed part of a training stage (mfnpatch.runs.resume): its own log, prefix and command."""

    index: int
    log: str
    prefix: str | None = None
    argv: list[str] = Field(default_factory=list)
    start_step: int = 0
    start_save: int = 0
    pretrained: str | None = None
    lr: float | None = None
    lr_steps: list[int] = Field(default_factory=list)
    started: str | None = None
    notes: list[str] = Field(default_factory=list)
    steps: Literal["segment", "stage"] = "segment"  # how its log counts steps (arcface_torch: from the stage's start)
    finished: str | None = None
    seconds: float | None = None
    exit_code: int | None = None
    end: End | None = None
    ended: str | None = None
    log_sha256: str | None = None


class SentinelTrip(Strict):
    """The sentinel that stopped a training stage (mfnpatch.logs.sentinels): which, why, where, what to look at."""

    sentinel: str
    why: str
    step: int | None = None
    line: int = 0  # in the segment's log
    hint: str = ""


class JobRecord(Strict):
    """The Slurm job that runs a stage."""

    id: str
    script: str
    submitted: str
    after: str | None = None


class AttemptRecord(Strict):
    """One start of a stage's Slurm job (a requeue starts another)."""

    job_id: str | None = None
    restart: int = 0
    host: str = ""
    started: str
    env_check: str | None = None
    finished: str | None = None
    ended: str | None = None


class StageRecord(Strict):
    name: str
    title: str
    kind: str
    status: StageStatus = "pending"
    skipped: str | None = None
    argv: list[str] = Field(default_factory=list)
    cwd: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    seed_command: str | None = None
    stands_in: str | None = None
    inputs: dict[str, str] = Field(default_factory=dict)
    stop: StopPoint | None = None
    end: End | None = None  # how the process ended ("stopped": at its planned stop point)
    ended: str | None = None  # the same, in words
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    exit_code: int | None = None
    log: str | None = None
    log_sha256: str | None = None
    metrics: Metrics = Field(default_factory=Metrics)
    checks: list[Check] = Field(default_factory=list)
    passed: bool | None = None
    provenance: str | None = None
    provenance_parts: dict[str, str] = Field(default_factory=dict)
    # resumed segments (1, 2, ...) of a training stage after an interruption: each continues from the last
    # saved checkpoint with its own log and prefix (mfnpatch.runs.resume); argv and log above are segment 0's
    segments: list[SegmentRecord] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    job: JobRecord | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)
    # sha256 of each checkpoint file the stage's log says it saved (params and symbol), by absolute path
    checkpoints: dict[str, str] = Field(default_factory=dict)
    # sha256 of every other file its outputs name (converted models, result files, data), by absolute path
    files: dict[str, str] = Field(default_factory=dict)
    # the sentinels watched while it ran (name -> settings; empty: none, e.g. --no-sentinels) and the one that
    # stopped it
    sentinels: dict[str, Any] = Field(default_factory=dict)
    sentinel: SentinelTrip | None = None

    @property
    def ok(self) -> bool:
        """Ran (or was skipped) and did not fail a check."""
        return self.status in ("done", "skipped") and self.passed is not False


class RecipeInfo(Strict):
    name: str
    path: str
    sha256: str
    profile: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    seed_update: str | None = None
    lineage: str | None = None  # the recipe's lineage: (mfnpatch/lineages/; absent in records before it)
    overrides: dict[str, str] = Field(default_factory=dict)
    cpu_free: int | None = None  # ${cpu_free} when the run started (a resumed run keeps it)
    # the plan fitted to the GPUs (recipes/fit.py): rule, GPUs, total batch, what changed from the seed's
    fit: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)  # the plan's hazards (a silent change of the total batch …)
    # the last `recipe estimate` of this plan on this host when the run started: its ETA
    estimate: dict[str, Any] | None = None


class PinInfo(Strict):
    commit: str
    tree: str


class PatchSetInfo(Strict):
    name: str
    version: int
    sha256: str


class InterpreterInfo(Strict):
    python: str = "python"
    path: str | None = None
    version: str | None = None
    mxnet: str | None = None
    mxnet_features: list[str] = Field(default_factory=list)
    mxnet_error: str | None = None
    torch: str | None = None  # the PyTorch lineage's environments
    torch_cuda: str | None = None  # the CUDA PyTorch was built with (None: a CPU build)
    error: str | None = None


class GpuInfo(Strict):
    index: int
    name: str
    cc: list[int] | None = None
    driver: str = ""


class EnvironmentInfo(Strict):
    name: str
    prefix: str | None = None
    lock_sha256: str | None = None
    check: str | None = None
    deferred: bool = False  # the check of the GPUs is left to each Slurm job's node
    gpus: list[GpuInfo] | None = None
    features: dict[str, bool] | None = None  # MXNet runtime features (CUDA, CUDNN, MKLDNN ...)
    interpreter: InterpreterInfo | None = None


class HostInfo(Strict):
    hostname: str
    platform: str
    cpus: int | None
    python: str


class SlurmOptionsInfo(Strict):
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    max_requeues: int = 3
    requeue_grace: int = 120
    sbatch_args: list[str] = Field(default_factory=list)


class ExecutorInfo(Strict):
    """Where a run runs: the local runner (its pid and host) or Slurm (its options and interpreter)."""

    kind: Literal["local", "slurm"] = "local"
    pid: int | None = None
    host: str | None = None
    pid_started: int | None = None  # the local runner's start (clock ticks since boot), to know its pid is still it
    boot_id: str | None = None  # the boot it started in
    options: SlurmOptionsInfo | None = None
    python: str | None = None
    submitted: str | None = None
    env_check: bool | None = None
    data_check: bool | None = None


class DeterminismInfo(Strict):
    seed: int | None = None
    deterministic: bool = False
    how: str = ""
    still_varies: list[str] = Field(default_factory=list)


class FileDigest(Strict):
    """A file of a dataset: its size and sha256, or for train.rec a fast digest (what it covers: datasets/check.py)."""

    size: int
    sha256: str | None = None
    digest: str | None = None
    how: str | None = None
    pairs: int | None = None


class DataFingerprint(Strict):
    """What a dataset is (mfnpatch data check): property, counts, the variant and each file's digest."""

    format: int = 1
    property: dict[str, int] | None = None
    images: int | None = None
    identities: int | None = None
    variant: str | None = None
    files: dict[str, FileDigest] = Field(default_factory=dict)

    def changes(self, new: DataFingerprint) -> list[str]:
        """What differs from ``new``, in words: the first differing value of each file (sha256 or digest)."""
        out = [f"{k}: {getattr(self, k)} -> {getattr(new, k)}" for k in ("property", "images", "identities", "variant")
               if getattr(self, k) != getattr(new, k)]  # fmt: skip
        for name in sorted(set(self.files) | set(new.files)):
            a, b = self.files.get(name), new.files.get(name)
            if a is None or b is None:
                out.append(f"{name}: {'added' if a is None else 'removed'}")
                continue
            for f in ("size", "sha256", "digest"):
                va, vb = getattr(a, f), getattr(b, f)
                if va is not None and vb is not None and va != vb:
                    out.append(f"{name} {f}: {str(va)[:12]} -> {str(vb)[:12]}")
                    break
        return out


class DatasetRecord(Strict):
    """The data of one or more training stages, as checked before they ran (or once the stage that made it ended)."""

    dir: str
    stages: list[str]
    check: Literal["passed", "failed", "skipped", "deferred"]
    checked: str | None = None
    summary: str = ""
    made_by: str | None = None  # the stage of this run that writes it
    expected_variant: str | None = None
    variant: str | None = None  # the variant's name as data check says it
    fingerprint: DataFingerprint | None = None
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    seconds: float | None = None


# --------------------------------------------------------------------------------------------
# The record


class RunRecord(Strict):
    schema_: Literal[2] = Field(alias="schema", default=2)
    run_id: str
    tool: str
    status: RunStatus = "running"
    started: str
    finished: str | None = None
    recipe: RecipeInfo
    pin: PinInfo
    tree: str
    patches: list[PatchSetInfo]
    environment: EnvironmentInfo
    host: HostInfo
    stages: list[StageRecord]
    executor: ExecutorInfo = Field(default_factory=ExecutorInfo)
    seed: int | None = None  # the run seed every stage's generators start from (None: unseeded)
    determinism: DeterminismInfo | None = None  # mfnpatch.runs.determinism.describe(seed)
    datasets: list[DatasetRecord] = Field(default_factory=list)  # the training stages' data, checked

    def stage(self, name: str) -> StageRecord:
        for s in self.stages:
            if s.name == name:
                return s
        raise RunError(f"the run has no stage {name}")

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "incomplete")

    @property
    def exit_code(self) -> int:
        """The one mapping of a run's state to an exit code (recipe run, recipe status, recipe job): 0 when it
        passed (or is incomplete: --only, --from) or is still queued or running, 130 when it was interrupted,
        1 when it failed or was cancelled."""
        if self.ok or self.status in ("queued", "running"):
            return EXIT_OK
        return EXIT_INTERRUPTED if self.status == "interrupted" else 1

    def verdict(self) -> RunStatus:
        """A run's end from its stages: failed if a stage that ran did not pass, incomplete if stages were left
        out (--only, --from, a stop), else passed."""
        ran = [s for s in self.stages if s.status != "pending"]
        if not all(s.ok for s in ran):
            return "failed"
        return "passed" if len(ran) == len(self.stages) else "incomplete"

    def to_dict(self) -> dict:
        return self.model_dump(by_alias=True)


def load_record(run_dir: Path) -> RunRecord:
    p = Path(run_dir) / RECORD
    if not p.is_file():
        raise RunError(f"{run_dir}: no {RECORD} (not a run directory)", hint="runs live under runs/; see ls runs/")
    try:
        data = load_json(p)
    except MfnError as e:
        raise RunError(e.message, hint="a run record is written by mfnpatch recipe run; this one is damaged") from None
    return parse_record(data, p)


def parse_record(data: Any, path: Path) -> RunRecord:
    """A record of any schema as the current model: each older schema is converted forward, then validated
    (conda-lock's pattern: versioned models, one parse function choosing by version)."""
    version = data.get("schema") if isinstance(data, dict) else None
    if version == 1:
        data = upgrade_v1(data)
    elif version != SCHEMA:
        raise RunError(
            f"{path}: record schema {version!r}, which this mfnpatch does not read (it reads 1 and {SCHEMA})",
            hint="read it with the mfnpatch that wrote it (the record's 'tool' says which)",
        )
    return validate(RunRecord, data, path)


def end_in_words_v1(status: str | None, ended: str | None) -> End | None:
    """How a schema-1 record's process ended, from its words (schema 2 records it typed)."""
    text = ended or ""
    if status == "interrupted" or text.startswith("interrupted"):
        return "interrupted"
    if text.startswith(("stopped at", "reached checkpoint")):
        return "stopped"
    if text.startswith("exited"):
        return "exited"
    if text.startswith("could not start"):
        return "not started"
    return None


def upgrade_v1(data: dict) -> dict:
    """Schema 1 -> 2: each stage's and segment's ``end``, read once from the words it was recorded in."""
    out = {**data, "schema": 2}
    stages = []
    for s in data.get("stages") or []:
        if isinstance(s, dict):
            s = {**s, "end": end_in_words_v1(s.get("status"), s.get("ended"))}
            s["segments"] = [
                {**g, "end": end_in_words_v1(None, g.get("ended"))} if isinstance(g, dict) else g
                for g in s.get("segments") or []
            ]
        stages.append(s)
    out["stages"] = stages
    return out


def write_record(run_dir: Path, rec: RunRecord) -> None:
    atomic_write_json(Path(run_dir) / RECORD, rec.to_dict())


@contextmanager
def record_lock(run_dir: Path) -> Iterator[None]:
    """The run's record, held by one writer at a time (Slurm jobs, recipe cancel): a POSIX lock, which also
    works across NFS clients."""
    p = Path(run_dir) / ".record.lock"
    with open(p, "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)
