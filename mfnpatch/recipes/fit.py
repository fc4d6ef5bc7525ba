"""Fitting a plan to the GPUs at hand without changing the experiment — or changing it on purpose, and saying so.

``per_batch_size`` is per GPU in the pinned code, so the seed's plan (one P40 at 512) run on two GPUs trains at a
total batch of 1024: another experiment. A recipe's ``fit:`` says which parameters carry the batch, the GPUs,
the step counts and the learning rates; ``fit_parameters`` turns ``--gpus N --fit RULE`` into parameter values:

- ``total`` (the default): keep the seed's total batch — the per-GPU batch is the total / N, nothing else
  changes. Refused when N does not divide the total, or when the per-GPU batch does not fit the GPU's memory.
- ``per-gpu``: keep the per-GPU batch — the total is N times it; every step count (lr steps, ``--verbose``, so
  every checkpoint too) is scaled to the same number of samples seen and every learning rate by the linear
  scaling rule (Goyal et al., 2017: lr proportional to the total batch). Each change is listed.
- ``smaller-batch``: a total below the seed's (a small GPU), with the same scaling; the only rule that allows it.

Pure: the GPU's memory and the parameter values are given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field

from mfnpatch.recipes import RecipeError
from mfnpatch.schema import Strict

Rule = Literal["total", "per-gpu", "smaller-batch"]
RULES: tuple[Rule, ...] = ("total", "per-gpu", "smaller-batch")


class FitSpec(Strict):
    """A recipe's ``fit:``: the seed's total batch and the parameters the fit rules change."""

    total_batch: int = Field(ge=1, description="the seed's total batch")
    source: str = ""
    gpus: str = Field(description="the parameter listing the GPUs (CUDA_VISIBLE_DEVICES)")
    per_gpu_batch: str = Field(description="the parameter holding the per-GPU batch (--per-batch-size)")
    per_gpu_default: int | None = Field(
        default=None,
        ge=1,
        description="the per-GPU batch the code uses when "
        "that parameter is unset (arcface_torch: its config's batch_size)",
    )
    processes: str | None = Field(
        default=None,
        description="the parameter holding the processes a stage starts, "
        "one per GPU (torchrun's --nproc_per_node); set to the GPU count",
    )
    steps: list[str] = Field(default_factory=list, description="parameters counted in steps (lists allowed)")
    verbose: str | None = Field(default=None, description="the --verbose parameter (steps between checkpoints)")
    default_verbose: int = 2000
    lr: dict[str, float] = Field(default_factory=dict, description="each lr parameter and the seed's value")
    slurm_gpus: str | None = None
    # GPU memory a training step needs: per sample (float32 activations of y1 at 112x112, kept for the backward
    # pass, plus a margin) and fixed (CUDA context, weights, fc7, optimizer state)
    memory_per_sample_mib: float = 40.3
    memory_fixed_mib: float = 1024
    memory_source: str = ""


@dataclass
class Change:
    parameter: str
    seed: Any
    now: Any
    why: str


@dataclass
class FitDecision:
    rule: Rule | None  # None: no --gpus/--fit asked; only checked
    gpus: list[str]
    seed_total: int
    total: int
    per_gpu: int
    factor: float  # total / seed_total: samples per step against the seed's
    overrides: dict[str, str] = field(default_factory=dict)  # parameter -> value, applied before expansion
    changes: list[Change] = field(default_factory=list)  # what differs from the seed's plan because of the fit
    differs: bool = False  # the experiment differs from the seed's (another total batch)
    memory: dict | None = None  # {"need_mib", "have_mib", "gpu"}
    warnings: list[str] = field(default_factory=list)
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        n = len(self.gpus) or 1
        what = "the seed's experiment" if not self.differs else "NOT the seed's experiment"
        return (f"fit {self.rule or 'as given'}: {n} GPU(s) x {self.per_gpu} = total batch {self.total} "
                f"(the seed's {self.seed_total}): {what}")  # fmt: skip


MAX_GPUS = 1024  # GPUs one stage runs on (one node: 8 today; the limit only keeps a typo from a huge list)


def parse_gpus(text: str) -> list[str]:
    """``--gpus 2`` (two GPUs: 0,1) or ``--gpus 0,2,3`` (these); checked before any list is made."""
    t = text.strip()
    if t.isascii() and t.isdigit() and "," not in t:
        if len(t) > 4 or int(t) > MAX_GPUS:
            raise RecipeError(
                f"--gpus {t[:20]}{'…' if len(t) > 20 else ''}: more than the {MAX_GPUS} GPUs a stage can run on",
                hint="give the GPUs of one node: a count (8) or indices (0,1,3)",
            )
        n = int(t)
        if n < 1:
            raise RecipeError(f"--gpus {text}: at least 1 (an empty gpus parameter runs on the CPU)")
        return [str(i) for i in range(n)]
    if len(t) > 8 * MAX_GPUS:
        raise RecipeError(f"--gpus: {len(t):,} characters, more than {MAX_GPUS} GPU indices take")
    ids = [x.strip() for x in t.split(",") if x.strip()]
    if not ids or not all(x.isascii() and x.isdigit() and len(x) <= 4 for x in ids) or len(set(ids)) != len(ids):
        raise RecipeError(f"--gpus {text[:80]!r}: write a count (2) or distinct GPU indices (0,1,3)")
    if len(ids) > MAX_GPUS:
        raise RecipeError(f"--gpus: {len(ids):,} GPUs, more than the {MAX_GPUS} a stage can run on")
    return ids


MAX_GPU_MEMORY_GIB = 4096.0


def check_gpu_memory(gib: float) -> float:
    """``--gpu-memory GIB``: a finite, positive size a GPU can have."""
    if not (math.isfinite(gib) and 0 < gib <= MAX_GPU_MEMORY_GIB):
        raise RecipeError(f"--gpu-memory {gib:g}: not a GPU's memory in GiB (a number above 0, at most "
                          f"{MAX_GPU_MEMORY_GIB:g})", hint="e.g. --gpu-memory 80 for an 80 GB GPU")  # fmt: skip
    return gib


def _int(name: str, value: Any, what: str = "a whole number") -> int:
    """A parameter's value as a whole number, or a RecipeError naming the parameter and the value."""
    text = str(value).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise RecipeError(f"fit: parameter {name} is {value!r}, not {what}",
                          hint=f"--set {name}=N with N {what} (e.g. 40000)")  # fmt: skip
    return int(text)


def _gpu_list(value: Any) -> list[str]:
    return [x.strip() for x in str(value or "").split(",") if x.strip()]


def _float(name: str, value: Any) -> float:
    try:
        x = float(str(value))
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise RecipeError(f"fit: parameter {name} is {value!r}, not a learning rate (a finite number above 0)",
                          hint=f"--set {name}=0.1")  # fmt: skip
    return x


def memory_need_mib(spec: FitSpec, per_gpu: int) -> float:
    return per_gpu * spec.memory_per_sample_mib + spec.memory_fixed_mib


def _scale_steps(name: str, value: Any, k: float) -> tuple[str, bool]:
    """A step count or a comma list of them at 1/k: (new value, whether any was rounded)."""
    out, rounded = [], False
    for part in str(value).split(","):
        n = _int(name, part, "a step count or a comma list of them (40000,60000)") if part.strip() else \
            _int(name, value, "a step count or a comma list of them, without an empty item")  # fmt: skip
        x = n / k
        r = max(1, round(x))
        rounded = rounded or abs(r - x) > 1e-9
        out.append(str(r))
    return ",".join(out), rounded


def fit_parameters(
    spec: FitSpec,
    values: dict[str, Any],
    rule: Rule | None,
    gpus: list[str] | None,
    gpu_memory_mib: float | None = None,
    gpu_name: str | None = None,
    set_by_user: frozenset[str] = frozenset(),
) -> FitDecision:
    """The parameter values that fit ``gpus`` by ``rule`` (``values``: the recipe's, after the profile and --set;
    ``set_by_user``: the parameters --set gave, whose change of the total batch is warned about)."""
    if rule is not None and rule not in RULES:
        raise RecipeError(f"--fit {rule}: use total, per-gpu or smaller-batch")
    given = values.get(spec.per_gpu_batch)
    per0 = _int(spec.per_gpu_batch, given if given not in (None, "") else spec.per_gpu_default or 0, "a batch size")
    if per0 < 1:
        shown = values.get(spec.per_gpu_batch)
        raise RecipeError(f"fit: parameter {spec.per_gpu_batch} is {shown!r}, not a batch size")
    T = spec.total_batch  # noqa: N806 (the seed's total, as the docs write it)
    ids = gpus if gpus is not None else _gpu_list(values.get(spec.gpus))
    n = max(1, len(ids))
    d = FitDecision(rule, ids, T, per0 * n, per0, per0 * n / T, source=spec.source)
    if gpus is not None:
        d.overrides[spec.gpus] = ",".join(ids)
        if spec.slurm_gpus:
            d.overrides[spec.slurm_gpus] = str(n)
        if spec.processes:
            d.overrides[spec.processes] = str(n)
    if rule is None:
        if gpus is None and d.total != T and set_by_user & {spec.gpus, spec.per_gpu_batch}:
            d.differs = True
            d.warnings.append(
                f"total batch {d.total} ({n} GPU(s) x {spec.per_gpu_batch} {per0}) is not the seed's {T}: a different "
                f"experiment, with the seed's steps and learning rates. --gpus {n} keeps the seed's total"
                + (f" ({T // n} per GPU)" if T % n == 0 else "")
                + "; --fit per-gpu scales the schedule to it"
            )
        rule_for_rest = None
    else:
        rule_for_rest = rule
    if rule_for_rest == "total":
        if T % n:
            raise RecipeError(
                f"--fit total: {n} GPUs do not divide the seed's total batch {T}",
                hint=f"use a GPU count that divides {T} (1, 2, 4, 8 …), or --fit per-gpu to change the experiment",
            )
        per = T // n
        if per != per0:
            d.overrides[spec.per_gpu_batch] = str(per)
            d.changes.append(Change(spec.per_gpu_batch, per0, per, f"the seed's total {T} over {n} GPU(s)"))
        d.per_gpu, d.total, d.factor = per, T, 1.0
    elif rule_for_rest in ("per-gpu", "smaller-batch"):
        total = per0 * n
        k = total / T
        if k < 1 and rule_for_rest != "smaller-batch":
            raise RecipeError(
                f"--fit per-gpu: {n} GPU(s) x {per0} = total batch {total}, smaller than the seed's {T}",
                hint="a smaller total batch changes the experiment: say so with --fit smaller-batch",
            )
        if k > 1 and rule_for_rest == "smaller-batch":
            raise RecipeError(
                f"--fit smaller-batch: {n} GPU(s) x {per0} = total batch {total}, not smaller than the seed's {T}",
                hint="--fit per-gpu for a larger total batch, --fit total for the seed's",
            )
        d.total, d.factor, d.differs = total, k, total != T
        if k != 1:
            why = f"total batch {total} = {k:g} x the seed's: the same samples seen"
            for p in spec.steps:
                v = values.get(p)
                if v in (None, ""):
                    continue
                new, rounded = _scale_steps(p, v, k)
                d.overrides[p] = new
                d.changes.append(Change(p, v, new, why + (" (rounded to whole steps)" if rounded else "")))
            if spec.verbose:
                v = values.get(spec.verbose)
                every = _int(spec.verbose, v) if v not in (None, "") else spec.default_verbose
                new, rounded = _scale_steps(spec.verbose, every, k)
                d.overrides[spec.verbose] = new
                kept = ": the N-th checkpoint or verification stays at the seed's samples"
                d.changes.append(Change(spec.verbose, every, new, why + kept + (" (rounded)" if rounded else "")))
            for p, seed_lr in spec.lr.items():
                v = values.get(p)
                base = _float(p, v) if v not in (None, "") else seed_lr
                new_lr = base * k
                d.overrides[p] = f"{new_lr:.10g}"
                d.changes.append(Change(p, base, float(f"{new_lr:.10g}"), f"linear scaling: lr x {k:g}"))
    if gpu_memory_mib is not None and (rule is not None or gpus is not None):
        need = memory_need_mib(spec, d.per_gpu)
        d.memory = {"need_mib": round(need), "have_mib": round(gpu_memory_mib), "gpu": gpu_name or "the GPU"}
        if need > gpu_memory_mib:
            fewer = max(1, int((gpu_memory_mib - spec.memory_fixed_mib) // spec.memory_per_sample_mib))
            more = next(m for m in range(-(-T // fewer), T + 1) if T % m == 0)  # a count that divides the total
            raise RecipeError(
                f"a per-GPU batch of {d.per_gpu} needs about {need / 1024:.1f} GiB ({spec.memory_per_sample_mib:g} MiB "
                f"a sample + {spec.memory_fixed_mib / 1024:g} GiB, the recipe's fit: memory figures); "
                f"{gpu_name or 'the GPU'} has {gpu_memory_mib / 1024:.1f} GiB",
                hint=f"at most {fewer} a GPU fits: --gpus {more} --fit total keeps the seed's total, or "
                f"--set {spec.per_gpu_batch}={fewer} --fit smaller-batch changes the experiment",
            )
    return d
