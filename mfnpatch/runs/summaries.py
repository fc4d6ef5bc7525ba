"""A stage read back from its run directory: its log summary with the resumed segments merged in, its metrics
for the record, and the hashes of the checkpoints it saved.

A log is parsed once for each version of it on disk (its size and modification time): the runner, hand-over,
resume, status, the report and compare all ask for the same summaries, and get them from here.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from mfnpatch.checkpoint import Checkpoint
from mfnpatch.fsutil import sha256_file
from mfnpatch.logs.events import Summary
from mfnpatch.logs.parser import summarize
from mfnpatch.runs.record import CheckpointSeen, Metrics, StageRecord, TargetMetrics
from mfnpatch.runs.resume import Segment, merge

_PARSED: dict[tuple[str, int, int], Summary] = {}
_MAX = 64


def log_summary(path: Path) -> Summary:
    """``summarize(path)``, parsed once per version of the file (a copy: callers may change it)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _PARSED:
        if len(_PARSED) >= _MAX:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = summarize(path)
    return copy.deepcopy(_PARSED[key])


def stage_summary(run_dir: Path, srec: StageRecord) -> Summary | None:
    """The stage's log summary, its resumed segments merged in (stage steps and save numbers)."""
    if not srec.log or not (Path(run_dir) / srec.log).is_file():
        return None
    parts = [(log_summary(Path(run_dir) / srec.log), Segment(0, srec.log))]
    for seg in srec.segments:
        p = Path(run_dir) / seg.log
        if p.is_file():
            parts.append(
                (log_summary(p), Segment(seg.index, seg.log, seg.prefix, seg.start_step, seg.start_save, seg.steps))
            )
    return merge(parts)


def stage_metrics(s: Summary) -> Metrics:
    return Metrics(
        targets={t: TargetMetrics(best=x.best_accuracy, best_step=x.best_step, last=x.last_accuracy,
                                  last_step=x.last_step, rounds=x.rounds) for t, x in s.targets().items()},
        median_samples_per_sec=s.median_samples_per_sec,
        checkpoints={str(k): CheckpointSeen(**v) for k, v in sorted(s.checkpoints.items())},
        last_step=s.last_step,
        python=s.python,
        ended=s.how_it_ended(),
        unknown_lines=s.unknown_lines,
    )  # fmt: skip


def checkpoint_hashes(s: Summary, cwd: Path) -> dict[str, str]:
    """sha256 of every checkpoint file the log says was saved (``.params`` and its ``-symbol.json``),
    by absolute path, so two runs can be compared byte for byte (and a file checked later)."""
    out: dict[str, str] = {}
    for c in s.checkpoints.values():
        ck = Checkpoint.from_params(c.get("path") or "")
        if ck is None:
            continue
        for f in ck.files(cwd):
            key = os.path.normpath(f)
            if key not in out and f.is_file():
                out[key] = sha256_file(f)
    return dict(sorted(out.items()))


def state_hashes(argv: list[str], cwd: Path) -> dict[str, str]:
    """sha256 of the saved state a resume of the stage would read beyond the checkpoints its log names
    (arcface_torch's checkpoint_gpu_N.pt), so a resume refuses bytes that changed since the run recorded them."""
    from mfnpatch.lineages import of_argv

    lin = of_argv(argv)
    files = lin.state_files(argv, cwd) if lin is not None else []
    return {os.path.normpath(f): sha256_file(f) for f in files if f.is_file()}
