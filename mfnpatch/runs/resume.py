"""Mid-stage resume: continue a training stage from its last saved checkpoint.

The pinned train_softmax.py cannot resume a step count: ``--pretrained PREFIX,N`` loads the weights but
restarts the step counter, the learning-rate schedule and the save numbering at zero, and the optimizer's
momentum is not in the checkpoint. A resumed *segment* therefore runs the stage's own command with

- ``--pretrained`` = the last saved checkpoint (its real files, whichever segment wrote them);
- ``--prefix`` = a new prefix (``PREFIX-r1``, ``-r2``, ...), so no earlier checkpoint is overwritten;
- ``--lr`` = the learning rate in force at the step the checkpoint was saved, and ``--lr-steps`` shifted
  back by that many steps (a schedule that has no step left gets one beyond any stop point, because an
  empty ``--lr-steps`` makes the pinned code use its default schedule);
- ``--max-steps`` (when set) shifted the same way; ``--verbose`` unchanged, so save k of the segment is
  save N + k of the stage, at step S + k x verbose.

The segment's log is parsed on its own and merged into the stage's: steps and save numbers are mapped
back (``merge``). What stays different from an uninterrupted run: momentum restarts at zero, and the data
iterator starts a new epoch with a new shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.checkpoint import Checkpoint, StopPoint
from mfnpatch.errors import MfnError
from mfnpatch.lineages import get as lineage
from mfnpatch.logs.events import Summary

NEVER = 1_000_000_000  # an lr step no run reaches (the schedule has ended)
DIFFERENCES = (
    "momentum restarts at zero (the pinned code does not save it)",
    "the data iterator starts a new epoch with a new shuffle",
)


class ResumeError(MfnError):
    pass


# --------------------------------------------------------------------------------------------
# Segments


@dataclass
class Segment:
    """Where a segment starts within its stage: its first step is ``start_step + 1``, its save k is the
    stage's save ``start_save + k``."""

    index: int
    log: str
    prefix: str | None = None  # the output prefix (None: the stage's own, for segment 0)
    start_step: int = 0
    start_save: int = 0


def merge(parts: list[tuple[Summary, Segment]]) -> Summary:
    """One stage's summary from its segments' summaries, in stage steps and save numbers."""
    if len(parts) == 1:
        s, seg = parts[0]
        for c in s.checkpoints.values():
            c.setdefault("segment", 0)
        return s
    first = parts[0][0]
    out = Summary(
        path=first.path,
        python=first.python,
        speedometer_format=first.speedometer_format,
        config=first.config,
        pretrained=first.pretrained,
        images=first.images,
        identities=first.identities,
        batches_per_epoch=first.batches_per_epoch,
        lr_steps=first.lr_steps,
    )
    speeds = []
    for s, seg in parts:
        off, soff = seg.start_step, seg.start_save
        out.lines += s.lines
        out.unknown_lines += s.unknown_lines
        out.warnings += s.warnings
        out.malformed_lines += s.malformed_lines
        out.malformed += [f"{seg.log}: {m}" for m in s.malformed]
        out.speed_lines += s.speed_lines
        if s.median_samples_per_sec is not None:
            speeds.append(s.median_samples_per_sec)
        for k, lr in s.lr_changes.items():
            out.lr_changes[k + off] = lr
        for k, lr in s.lr_points.items():
            out.lr_points[k + off] = lr
        for t, steps in s.verifications.items():
            tgt = out.verifications.setdefault(t, {})
            for st, ver in steps.items():
                tgt[st + off] = ver
        out.standalone.update(s.standalone)
        if s.highest is not None:
            h = (s.highest[0] + off, s.highest[1])
            if out.highest is None or h[1] >= out.highest[1]:
                out.highest = h
        out.train_curve += [(st + off if st is not None else None, a) for st, a in s.train_curve]
        for n, c in s.checkpoints.items():
            step = c.get("step")
            out.checkpoints[n + soff] = {
                **c,
                "step": step + off if step is not None else None,
                "segment": seg.index,
                "number": n,
            }
        if s.last_step is not None:
            out.last_step = s.last_step + off
        if s.ending is not None or seg is parts[-1][1]:
            out.ending = s.ending
    out.median_samples_per_sec = sorted(speeds)[len(speeds) // 2] if speeds else None
    return out


# --------------------------------------------------------------------------------------------
# The resumed command


@dataclass(frozen=True)
class Reached:
    """A stage interrupted after it had saved its stop checkpoint: it is done, nothing to resume."""

    checkpoint: int


@dataclass
class ResumePlan:
    segment: int  # 1, 2, ...
    from_save: int  # the stage's save number resumed from
    from_step: int  # the stage step it was saved at
    pretrained: str  # PREFIX,N of the files
    prefix: str  # the segment's output prefix
    lr: float
    lr_steps: list[int]
    argv: list[str]
    stop: StopPoint | None  # in the segment's numbering
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"resumed from checkpoint {self.from_save} (step {self.from_step}) as segment {self.segment}: "
            f"--pretrained {self.pretrained} --prefix {self.prefix} --lr {self.lr:g} "
            f"--lr-steps {','.join(str(x) for x in self.lr_steps)}"
        )


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def lr_at(base_lr: float, lr_steps: list[int], step: int, beta_freeze: int = 0) -> float:
    """The learning rate after ``step`` batches: the pinned code multiplies it by 0.1 at each
    ``beta_freeze + lr_step``."""
    lr = base_lr
    for s in sorted(lr_steps):
        if beta_freeze + s <= step:
            lr *= 0.1
    return lr


def checkpoint_ref(c: dict, stage_prefix: str, stage_save: int) -> Checkpoint:
    """The files of a merged checkpoint: where its log says it saved them, else the stage's own prefix."""
    ck = Checkpoint.from_params(c.get("path") or "")
    return ck if ck is not None else Checkpoint(stage_prefix, int(c.get("number", stage_save)))


def plan_resume(
    argv: list[str],
    merged: Summary,
    segments_so_far: int,
    stop: StopPoint | None,
    usable: list[int],
) -> ResumePlan:
    """The command that continues a stage from its last usable checkpoint (``usable``: stage save
    numbers whose files are on disk)."""
    if not usable:
        raise ResumeError("no saved checkpoint to resume from")
    n = max(usable)
    c = merged.checkpoints[n]
    step = c.get("step")
    if step is None:
        raise ResumeError(f"checkpoint {n}: its log does not say at which step it was saved")
    cfg = merged.config or {}
    if not cfg:
        raise ResumeError("the stage's log has no 'Called with argument' line: its learning rate is unknown")
    if int(_num(cfg.get("loss_type")) or 0) == 1:
        raise ResumeError(
            "loss type 1 (SphereFace) anneals its margin by step count from --beta-freeze; a resumed segment "
            "cannot continue that schedule",
            hint="rerun the stage from its start",
        )
    base = _num(cfg.get("lr"))
    if base is None:
        raise ResumeError("the stage's configuration line has no lr")
    beta_freeze = int(_num(cfg.get("beta_freeze")) or 0)
    steps = list(merged.lr_steps or [])
    if not steps:
        raw = str(cfg.get("lr_steps") or "")
        steps = [int(x) for x in raw.split(",") if x.strip().isdigit()]
    if not steps:
        raise ResumeError("the stage's lr schedule is not in its log (no 'lr_steps [...]' line)")
    lr = lr_at(base, steps, step, beta_freeze)
    shifted = [s - step for s in steps if beta_freeze + s > step]
    notes = []
    if not shifted:
        shifted = [NEVER]
        notes.append(f"every lr step was passed by step {step}: --lr-steps {NEVER} keeps the rate at {lr:g}")
    mx = lineage("insightface_mxnet")  # the pinned code's resume: its flags, through its lineage
    prefix0 = mx.get(argv, "prefix")
    if prefix0 is None:
        raise ResumeError("the stage's command has no --prefix")
    seg = segments_so_far + 1
    prefix = f"{prefix0}-r{seg}"
    ck = checkpoint_ref(c, prefix0, n)
    new = mx.set(argv, "pretrained", str(ck))
    new = mx.set(new, "prefix", prefix)
    new = mx.set(new, "lr", f"{lr:.10g}")
    new = mx.set(new, "lr_steps", ",".join(str(s) for s in shifted))
    max_steps = mx.get(argv, "max_steps")
    if max_steps is not None and max_steps.isdigit() and int(max_steps) > 0:
        new = mx.set(new, "max_steps", str(max(1, int(max_steps) - step)))
    seg_stop = None
    if stop is not None:
        shift = n if stop.kind == "checkpoint" else step
        seg_stop = stop.model_copy(
            update={"value": stop.value - shift, "why": f"{stop.why} (in segment {seg}'s numbering)"}
        )
    return ResumePlan(seg, n, step, str(ck), prefix, lr, shifted, new, seg_stop, notes)


def usable_checkpoints(merged: Summary, stage_prefix: str, cwd: Path) -> list[int]:
    """Stage save numbers whose -symbol.json and .params are on disk."""
    out = []
    for n, c in merged.checkpoints.items():
        if not c.get("path"):  # "saving N" without "Saved checkpoint": the write may not have finished
            continue
        if checkpoint_ref(c, stage_prefix, n).exists(cwd):
            out.append(n)
    return sorted(out)
