"""Checkpoint hand-over between stages, decided from logs: pure functions of what the logs say.

A stage's input names a checkpoint of an earlier stage by save number, by step, as the best for a target (the
earliest or the latest of equal bests) or as the last; which files that is comes from the earlier stage's
log (merged over its resumed segments), never from guessing on disk.
"""

from __future__ import annotations

from pathlib import Path

from mfnpatch.checkpoint import Checkpoint
from mfnpatch.lineages import facts_of
from mfnpatch.logs.events import Summary
from mfnpatch.recipes.expand import PlannedStage
from mfnpatch.recipes.recipe import InputRef
from mfnpatch.runs.record import RunError

DEFAULT_VERBOSE = 2000  # the pinned code's --verbose, for a command of no known lineage


def verbose_of(argv: list[str]) -> int:
    """Steps between a stage's verifications and saves, as its lineage reads its command."""
    f = facts_of(argv)
    return f.verbose if f else DEFAULT_VERBOSE


def total_steps(ps: PlannedStage) -> int | None:
    """The step a stage stops at (checkpoint N = step N x verbose), the last step of a command that ends by
    itself (what its lineage reads: arcface_torch's num_image // total batch x num_epoch), or None when it has no
    stop point."""
    if ps.stop is None:
        f = facts_of(ps.argv)
        return f.steps if f and ps.template is not None and ps.template.ends_by_itself else None
    return ps.stop.value * verbose_of(ps.argv) if ps.stop.kind == "checkpoint" else ps.stop.value


def ranges(nums: list[int]) -> str:
    """[1, 2, 3, 5] -> '1..3, 5'."""
    if not nums:
        return "none"
    out, start, prev = [], nums[0], nums[0]
    for n in nums[1:]:
        if n != prev + 1:
            out.append(f"{start}" if start == prev else f"{start}..{prev}")
            start = n
        prev = n
    out.append(f"{start}" if start == prev else f"{start}..{prev}")
    return ", ".join(out)


def pick_checkpoint(ref: InputRef, s: Summary | None, user: str) -> int:
    """The save number (in the source stage's numbering) that ``ref`` names, from the source stage's log."""
    if s is None:
        raise RunError(f"stage {user} needs a checkpoint of {ref.stage}, whose log is missing")
    saved = {n: c for n, c in s.checkpoints.items() if c.get("path") or c.get("step") is not None}
    have = f"it saved {ranges(sorted(saved))}" if saved else "it saved none"
    if ref.checkpoint is not None:
        if ref.checkpoint not in saved:
            raise RunError(
                f"stage {user} needs checkpoint {ref.checkpoint} of {ref.stage}, which its log never saved ({have})",
                hint=f"see: mfnpatch log summary of the {ref.stage} log",
            )
        return int(ref.checkpoint)
    if ref.step is not None:
        for n, c in saved.items():
            if c.get("step") == ref.step:
                return n
        raise RunError(
            f"stage {user} needs the {ref.stage} checkpoint saved at step {ref.step}; its log has "
            f"none there ({have}, every --verbose steps)"
        )
    if ref.last:
        if not saved:
            raise RunError(f"stage {user} needs the last checkpoint of {ref.stage}; {have}")
        return max(saved)
    target = ref.best or ""
    accs = s.verifications.get(target, {})
    best: tuple[int, int] | None = None
    for n, c in sorted(saved.items()):
        st = c.get("step")
        if st in accs and (
            best is None or accs[st][0] > accs[best[1]][0] or (ref.tie == "latest" and accs[st][0] == accs[best[1]][0])
        ):
            best = (n, st)
    if best is None:
        raise RunError(
            f"stage {user} needs the {ref.stage} checkpoint with the best {target}; the log has no "
            f"{target} result at a saved checkpoint ({have})"
        )
    return best[0]


def input_checkpoint(number: int, summary: Summary, stage_prefix: str, segments: dict[int, str]) -> Checkpoint:
    """The files of the source stage's save ``number``: its own prefix, or a resumed segment's prefix and save
    number (``segments``: segment index -> its prefix)."""
    c = summary.checkpoints.get(number, {})
    if c.get("segment"):
        return Checkpoint(segments[c["segment"]], c["number"])
    return Checkpoint(stage_prefix, number)


def as_seen_from(ck: Checkpoint, src_cwd: Path, user_cwd: Path) -> Checkpoint:
    """A checkpoint named relative to the stage that wrote it, as the stage that reads it names it: the same
    text when both run in one directory, else an absolute prefix."""
    if Path(src_cwd) == Path(user_cwd) or Path(ck.prefix).is_absolute():
        return ck
    return Checkpoint(str((Path(src_cwd) / ck.prefix).resolve()), ck.number)
