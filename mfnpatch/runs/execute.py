"""One stage, run: its command (or a resumed segment of it) through ``run_process``, its log, its end decided
(``outcome.stage_outcome``), its checks, and what it saved (metrics, checkpoint hashes) into its record.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfnpatch.checkpoint import Checkpoint
from mfnpatch.errors import MfnError
from mfnpatch.fsutil import UnsafePath, atomic_write, inside, sha256_file
from mfnpatch.lineages import facts_of
from mfnpatch.logs.events import (
    CheckpointSaved,
    CheckpointWritten,
    Event,
    Speed,
    Summary,
    Verification,
)
from mfnpatch.logs.sentinels import Watch
from mfnpatch.recipes.expand import PlannedStage
from mfnpatch.runs.files import output_files
from mfnpatch.runs.outcome import stage_checks, stage_outcome
from mfnpatch.runs.process import ProcessResult, run_process
from mfnpatch.runs.record import RunError, SegmentRecord, SentinelTrip, StageRecord, now
from mfnpatch.runs.resume import ResumePlan
from mfnpatch.runs.summaries import checkpoint_hashes, stage_metrics, stage_summary, state_hashes
from mfnpatch.verify.facts import gather_facts

# --------------------------------------------------------------------------------------------
# Progress (the CLI renders it; tests record it)


@dataclass
class LiveState:
    step: int | None = None
    total: int | None = None
    lr: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    samples_per_sec: float | None = None
    checkpoint: int | None = None

    def update(self, ev: Event) -> None:
        step = getattr(ev, "step", None)
        if isinstance(step, int):
            self.step = max(self.step or 0, step)
        if isinstance(ev, Speed):
            self.samples_per_sec = ev.samples_per_sec
        elif isinstance(ev, Verification):
            self.accuracy[ev.target] = ev.accuracy
        elif isinstance(ev, CheckpointWritten):
            self.checkpoint = ev.number
        lr = getattr(ev, "lr", None)
        if isinstance(lr, float):
            self.lr = lr


class Observer:
    def run_started(self, run_dir: Path, plan: Any) -> None: ...
    def stage_started(self, ps: PlannedStage, total_steps: int | None) -> None: ...
    def stage_event(self, ps: PlannedStage, ev: Event, live: LiveState) -> None: ...
    def stage_output(self, ps: PlannedStage, text: str) -> None: ...
    def stage_finished(self, ps: PlannedStage, rec: StageRecord) -> None: ...
    def stage_reused(self, ps: PlannedStage, rec: StageRecord) -> None: ...
    def note(self, text: str) -> None: ...


def shift(ev: Event, step_off: int, save_off: int) -> Event:
    """An event of a resumed segment in its stage's steps and save numbers."""
    changes: dict[str, Any] = {}
    if isinstance(getattr(ev, "step", None), int):
        changes["step"] = ev.step + step_off  # type: ignore[attr-defined]
    if isinstance(ev, CheckpointWritten | CheckpointSaved) and isinstance(ev.number, int):
        changes["number"] = ev.number + save_off
    return dataclasses.replace(ev, **changes) if changes else ev


def copy_checkpoint(src: str, dst: str, cwd: Path, roots: tuple[Path, ...] = ()) -> None:
    """A stage's ``copy``: the symbol and params of ``src`` (PREFIX,N) under the prefix ``dst``, which must lie
    (symlinks resolved) inside one of ``roots`` (the tree, the run directory): mfnpatch writes there itself."""
    ck = Checkpoint.parse(src, "copy:")
    target = Checkpoint(dst, ck.number)
    for a, b in zip(ck.files(cwd), target.files(cwd), strict=True):
        where = b.resolve()
        if roots and not any(where == r.resolve() or r.resolve() in where.parents for r in roots):
            raise RunError(
                f"copy: {b} resolves to {where}, outside the tree and the run directory: refused",
                hint="copy to a prefix inside the patched tree or the run directory",
            )
        if not a.is_file():
            raise RunError(f"copy: {a} does not exist", hint="the stage that writes it did not complete")
        atomic_write(b, a.read_bytes())


# --------------------------------------------------------------------------------------------
# Running one stage


@dataclass
class StageRun:
    """What running a stage needs from its runner."""

    observer: Observer
    env: Callable[[PlannedStage], dict[str, str]]  # the stage process's whole environment
    interrupted: Callable[[], str | None]  # the signal the runner got, if any
    write: Callable[[], None]  # write the record now
    adjust: Callable[[PlannedStage, StageRecord], PlannedStage] = lambda ps, srec: ps  # e.g. Slurm's GPUs
    # checks beyond the stage's own expectations, once it has ended well (e.g. of the data it made)
    more_checks: Callable[[PlannedStage, StageRecord, Path], None] = lambda ps, srec, tree_root: None
    parse_cpu: float = 0.0

    def execute(self, ps: PlannedStage, srec: StageRecord, run_dir: Path, tree_root: Path, inputs: dict[str, str],
                resume: ResumePlan | None, provenance: tuple[str, dict[str, str]]) -> StageRecord:  # fmt: skip
        try:
            cwd = inside(tree_root, tree_root / ps.cwd, f"stage {ps.name}'s cwd")  # a link planted in the tree
        except UnsafePath as e:
            raise RunError(e.message, hint="remove the link from the tree (mfnpatch status shows what else "
                           "differs), or use a fresh tree") from None  # fmt: skip
        srec.provenance, srec.provenance_parts = provenance
        if resume is None:
            log_rel = f"stages/{ps.name}.log"
            srec.status, srec.argv, srec.cwd, srec.env = "running", ps.argv, ps.cwd, ps.env
            srec.seed_command, srec.stands_in, srec.inputs = ps.seed_command, ps.stands_in, inputs
            srec.stop = ps.stop
            srec.started, srec.log, srec.exit_code, srec.ended, srec.checks, srec.passed = (
                now(), log_rel, None, None, [], None,
            )  # fmt: skip
            srec.seconds, srec.segments, srec.notes = None, [], []
            run_ps, offsets = ps, (0, 0)
        else:
            log_rel = f"stages/{ps.name}.r{resume.segment}.log"
            srec.status, srec.exit_code, srec.ended, srec.checks, srec.passed = "running", None, None, [], None
            srec.segments.append(SegmentRecord(
                index=resume.segment, log=log_rel, prefix=resume.prefix, argv=resume.argv,
                start_step=resume.from_step, start_save=resume.from_save, pretrained=resume.pretrained,
                lr=resume.lr, lr_steps=resume.lr_steps, started=now(), notes=resume.notes, steps=resume.steps,
            ))  # fmt: skip
            if not srec.notes:
                srec.notes = [f"a resumed segment differs from an uninterrupted run: {d}" for d in resume.differences]
            run_ps = ps.with_argv(resume.argv, resume.stop)
            offsets = (resume.from_step, resume.from_save) if resume.steps == "segment" else (0, 0)
            self.observer.note(f"{ps.name}: {resume.describe()}")
        run_ps = self.adjust(run_ps, srec)
        log_path = run_dir / log_rel
        self.write()
        from mfnpatch.runs.handover import total_steps

        total = total_steps(ps)
        self.observer.stage_started(ps, total)
        t0 = time.monotonic()
        if log_path.exists():  # a rerun of the stage (--resume): keep the old log beside the new one
            log_path.rename(log_path.with_name(f"{log_path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.log"))
        watch = watch_for(ps)
        srec.sentinels = {n: getattr(ps.sentinels, n).model_dump() for n in ps.sentinels.active()}
        srec.sentinel = None
        result = self._run(ps, run_ps, cwd, log_path, total, offsets, (tree_root, run_dir), watch)
        if watch is not None and watch.tripped is not None and result.end == "sentinel":
            srec.sentinel = SentinelTrip(**watch.tripped.to_dict())
        seconds = round(time.monotonic() - t0, 3)
        srec.seconds = round((srec.seconds or 0.0) + seconds, 3) if resume else seconds
        srec.finished = now()
        srec.exit_code = result.code
        ended = result.ended
        if resume is None and log_path.exists():
            srec.log_sha256 = sha256_file(log_path)
        if resume is not None:
            seg = srec.segments[-1]
            seg.finished, seg.seconds, seg.exit_code, seg.end, seg.ended = (
                srec.finished, seconds, result.code, result.end, ended
            )  # fmt: skip
            if log_path.exists():
                seg.log_sha256 = sha256_file(log_path)
            ended = f"{ended} (segment {resume.segment}, resumed from {resume.what})"
        summary = stage_summary(run_dir, srec) if ps.kind == "train" else None
        if summary is not None:
            srec.metrics = stage_metrics(summary)
            srec.checkpoints = checkpoint_hashes(summary, cwd) | state_hashes(ps.argv, cwd)
        o = stage_outcome(ps.kind, result.code, result.end, ended, self.interrupted() is not None, ps.stop,
                          set(summary.checkpoints) if summary else set())  # fmt: skip
        srec.status, srec.end, srec.ended = o.status, result.end, o.ended
        if srec.status == "done":
            srec.files = output_files(ps.outputs, cwd, skip=set(srec.checkpoints))
            self.judge(ps, srec, summary, cwd)
            self.more_checks(ps, srec, tree_root)
        self.observer.stage_finished(ps, srec)
        return srec

    def judge(self, ps: PlannedStage, srec: StageRecord, summary: Summary | None, cwd: Path) -> None:
        checks = stage_checks(ps.name, srec.ended or "", ps.expect, gather_facts(ps.expect, summary, cwd))
        srec.checks = checks
        srec.passed = all(c.verdict == "pass" for c in checks if c.required)

    def _run(self, ps: PlannedStage, run_ps: PlannedStage, cwd: Path, log_path: Path, total: int | None,
             offsets: tuple[int, int], roots: tuple[Path, ...] = (),
             watch: Watch | None = None) -> ProcessResult | _NotStarted:  # fmt: skip
        live = LiveState(total=total)

        def on_events(events: list[Event]) -> None:
            for ev in events:
                if offsets != (0, 0):
                    ev = shift(ev, *offsets)
                live.update(ev)
                self.observer.stage_event(ps, ev, live)
                trip = watch.feed(ev) if watch is not None else None
                if trip is not None:
                    self.observer.note(f"{ps.name}: the {trip.sentinel} sentinel fired: {trip.why}; stopping the stage")

        def tripped() -> str | None:
            t = watch.tripped if watch is not None else None
            return f"the {t.sentinel} sentinel fired: {t.why}" if t is not None else None

        def on_output(data: bytes) -> None:
            if ps.kind != "train":
                self.observer.stage_output(ps, data.decode("utf-8", "replace"))

        try:
            cwd.mkdir(parents=True, exist_ok=True)
            for src, dst in run_ps.copies:
                copy_checkpoint(src, dst, cwd, roots)
        except MfnError as e:  # the stage fails, recorded as such; the run goes on to its end and its report
            return _NotStarted(f"could not start: {e.message}")
        except OSError as e:
            return _NotStarted(f"could not start: {e}")
        try:
            result = run_process(run_ps.argv, cwd, self.env(run_ps), log_path, run_ps.stop, on_events,
                                 interrupted=self.interrupted, on_output=on_output, tripped=tripped)  # fmt: skip
        except OSError as e:
            return _NotStarted(f"could not start: {e}")
        self.parse_cpu += result.parse_cpu
        if result.stopped_at and run_ps.stop:
            kind, n = run_ps.stop.kind, run_ps.stop.value
            off = offsets[1] if kind == "checkpoint" else offsets[0]  # in the stage's numbering
            result.ended = f"stopped at {kind} {n + off} (planned), by mfnpatch"
            s = result.summary
            beyond = max(s.checkpoints, default=0) if kind == "checkpoint" else (s.last_step or 0)
            if beyond > n:
                result.ended += f"; it had written up to {kind} {beyond + off} when it ended"
        return result


def watch_for(ps: PlannedStage) -> Watch | None:
    """The sentinels of a training stage, with the learning rate its command plans, as its lineage reads it (the
    pinned code: --lr, default 0.1, and --lr-steps or the code's default; arcface_torch: its polynomial decay)."""
    if ps.kind != "train" or not ps.sentinels.active():
        return None
    f = facts_of(ps.argv)
    return Watch(ps.sentinels, f.lr if f else None)


class _NotStarted(ProcessResult):
    def __init__(self, why: str):
        super().__init__(None, "not started", why, Summary())
