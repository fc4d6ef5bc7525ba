"""Mid-stage resume, the runner's part: a stage's resumed segments merged back into one summary in stage steps
and save numbers. What the next segment runs is its lineage's (``Lineage.resume``: the pinned MXNet code's in
lineages/mxnet_resume.py, arcface_torch's own ``resume=True`` in lineages/arcface_torch.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mfnpatch.lineages.base import Resumed, ResumeError
from mfnpatch.logs.events import Summary

ResumePlan = Resumed
__all__ = ["Reached", "ResumeError", "ResumePlan", "Segment", "merge"]


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
    steps: Literal["segment", "stage"] = "segment"  # "stage": its log already counts from the stage's start


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
        lineage=first.lineage,
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
        off, soff = (seg.start_step, seg.start_save) if seg.steps == "segment" else (0, 0)
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
        out.loss_curve += [(st + off if st is not None else None, x) for st, x in s.loss_curve]
        if seg.steps == "stage" or seg.index == 0:  # an MXNet segment counts its epochs from 0 again
            out.epochs.update(s.epochs)
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


@dataclass(frozen=True)
class Reached:
    """A stage interrupted after it had saved its stop checkpoint: it is done, nothing to resume."""

    checkpoint: int
