"""Mid-stage resume of the pinned MXNet code: continue a training stage from its last saved checkpoint.

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

The segment's log counts from its own start; the runner maps its steps and saves back (runs/resume.py's
``merge``). What stays different from an uninterrupted run: momentum restarts at zero, and the data iterator
starts a new epoch with a new shuffle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mfnpatch.checkpoint import Checkpoint
from mfnpatch.lineages.base import Resumed, ResumeError, ResumeRequest, StepSchedule

NEVER = 1_000_000_000  # an lr step no run reaches (the schedule has ended)
DIFFERENCES = (
    "momentum restarts at zero (the pinned code does not save it)",
    "the data iterator starts a new epoch with a new shuffle",
)


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def lr_at(base_lr: float, lr_steps: list[int], step: int, beta_freeze: int = 0) -> float:
    """The learning rate after ``step`` batches: the pinned code multiplies it by 0.1 at each
    ``beta_freeze + lr_step``."""
    return StepSchedule(base_lr, lr_steps, beta_freeze).at(step) or base_lr


def checkpoint_ref(c: dict, stage_prefix: str, stage_save: int) -> Checkpoint:
    """The files of a merged checkpoint: where its log says it saved them, else the stage's own prefix."""
    ck = Checkpoint.from_params(c.get("path") or "")
    return ck if ck is not None else Checkpoint(stage_prefix, int(c.get("number", stage_save)))


def usable_checkpoints(saves: dict[int, dict], stage_prefix: str, cwd: Path) -> list[int]:
    """Stage save numbers whose -symbol.json and .params are on disk."""
    out = []
    for n, c in saves.items():
        if not c.get("path"):  # "saving N" without "Saved checkpoint": the write may not have finished
            continue
        if checkpoint_ref(c, stage_prefix, n).exists(cwd):
            out.append(n)
    return sorted(out)


def plan_resume(req: ResumeRequest, get, set_) -> Resumed | None:
    """The command that continues a stage from its last checkpoint on disk (None: none is)."""
    prefix0 = get(req.argv, "prefix")
    if prefix0 is None:
        raise ResumeError("the stage's command has no --prefix")
    usable = usable_checkpoints(req.saves, prefix0, req.cwd)
    if not usable:
        return None
    n = max(usable)
    c = req.saves[n]
    ck = checkpoint_ref(c, prefix0, n)
    files = list(ck.files(req.cwd))
    step = c.get("step")
    if step is None:
        raise ResumeError(f"checkpoint {n}: its log does not say at which step it was saved")
    if req.stop is not None and req.stop.kind == "checkpoint" and n >= req.stop.value:
        return Resumed(req.segment, n, step, f"checkpoint {n}", str(ck), prefix0, None, [], req.argv, req.stop,
                       files, "segment", DIFFERENCES, "", reached=True)  # fmt: skip
    cfg = req.config
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
    steps = list(req.lr_steps or [])
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
    prefix = f"{prefix0}-r{req.segment}"
    new = set_(req.argv, "pretrained", str(ck))
    new = set_(new, "prefix", prefix)
    new = set_(new, "lr", f"{lr:.10g}")
    new = set_(new, "lr_steps", ",".join(str(s) for s in shifted))
    max_steps = get(req.argv, "max_steps")
    if max_steps is not None and max_steps.isdigit() and int(max_steps) > 0:
        new = set_(new, "max_steps", str(max(1, int(max_steps) - step)))
    seg_stop = None
    if req.stop is not None:
        shift = n if req.stop.kind == "checkpoint" else step
        why = f"{req.stop.why} (in segment {req.segment}'s numbering)"
        seg_stop = req.stop.model_copy(update={"value": req.stop.value - shift, "why": why})
    summary = f"--pretrained {ck} --prefix {prefix} --lr {lr:g} --lr-steps {','.join(str(x) for x in shifted)}"
    return Resumed(req.segment, n, step, f"checkpoint {n}", str(ck), prefix, lr, shifted, new, seg_stop, files,
                   "segment", DIFFERENCES, summary, notes=notes)  # fmt: skip
