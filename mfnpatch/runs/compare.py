"""`mfnpatch compare A B`: two runs (or a run and a training log, or two logs) side by side.

Per stage: every verification (target, step) of either side with both values and their difference, the
sha256 of every checkpoint file both runs saved, and — for two run directories — their provenance: recipe
and its hash, profile, parameters, pin, patch sets and their hashes, environment lock, run seed and each
stage's command and environment (paths inside the run directory and the tree are compared as ``<run>``
and ``<tree>``, so two runs of one plan compare equal). The host, the interpreter and MXNet are shown as
context: they explain a difference, they are not one.

Two sides are *identical* when nothing differs: every value equal (or within ``tolerance``), every
checkpoint byte-identical, the provenance the same. The first difference, in that order of stages, is
named.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfnpatch.errors import EXIT_FAILURE, EXIT_OK, MfnError
from mfnpatch.logs.events import Summary
from mfnpatch.logs.parser import summarize
from mfnpatch.runs.files import FileCheck, check_files, is_model
from mfnpatch.runs.provenance import run_provenance
from mfnpatch.runs.record import DataFingerprint, RunRecord


class CompareError(MfnError):
    pass


@dataclass
class StageSide:
    name: str
    summary: Summary | None
    checkpoints: dict[str, str] = field(default_factory=dict)
    command: dict[str, Any] | None = None
    stop_step: int | None = None  # a planned stop point: what the process printed beyond it is not the plan's
    models: dict[str, str] = field(default_factory=dict)  # the model files its outputs hold, as on disk now
    changed: list[FileCheck] = field(default_factory=list)  # recorded files whose bytes are not the record's


@dataclass
class Side:
    path: str
    kind: str  # "run" or "log"
    stages: dict[str, StageSide]
    provenance: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    datasets: dict[str, DataFingerprint | None] = field(default_factory=dict)  # stages -> what they read


@dataclass
class Row:
    stage: str
    what: str  # "provenance", "verification", "checkpoint", "context"
    key: str
    a: Any
    b: Any
    diff: float | None = None
    same: bool = True
    note: str = ""
    step: int | None = None

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Comparison:
    a: str
    b: str
    tolerance: float
    rows: list[Row]
    notes: list[str]

    @property
    def differences(self) -> list[Row]:
        return [r for r in self.rows if not r.same and r.what != "context"]

    @property
    def identical(self) -> bool:
        return not self.differences

    @property
    def exit_code(self) -> int:
        """0 only when identical."""
        return EXIT_OK if self.identical else EXIT_FAILURE

    def first_difference(self) -> str | None:
        d = self.differences
        return describe(d[0]) if d else None

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "tolerance": self.tolerance,
            "identical": self.identical,
            "first_difference": self.first_difference(),
            "differences": len(self.differences),
            "rows": [r.to_dict() for r in self.rows],
            "notes": self.notes,
        }


def describe(r: Row) -> str:
    where = f"{r.stage}: " if r.stage else ""
    if r.what == "dataset":
        return f"the data of {r.key}: {r.note}"
    if r.what == "on disk":
        return f"{where}{r.key}: {r.note}"
    if r.what == "model":
        if r.a is None or r.b is None:
            return f"{where}model file {r.key}: only in {'B' if r.a is None else 'A'}"
        return f"{where}model file {r.key}: sha256 {str(r.a)[:12]} in A, {str(r.b)[:12]} in B"
    if r.what == "verification":
        if r.a is None or r.b is None:
            return f"{where}{r.key}: only in {'B' if r.a is None else 'A'} ({r.a if r.a is not None else r.b})"
        return f"{where}{r.key}: {r.a:.5f} in A, {r.b:.5f} in B (difference {r.diff:+.5f})"
    if r.what == "checkpoint":
        if r.a is None or r.b is None:
            return f"{where}checkpoint {r.key}: only in {'B' if r.a is None else 'A'}"
        return f"{where}checkpoint {r.key}: sha256 {str(r.a)[:12]} in A, {str(r.b)[:12]} in B"
    return f"{where}{r.what} {r.key}: {_short(r.a)} in A, {_short(r.b)} in B"


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------
# Loading a side


def _normalize(obj: Any, subs: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        for old, new in subs:
            if old:
                obj = obj.replace(old, new)
        return obj
    if isinstance(obj, list):
        return [_normalize(x, subs) for x in obj]
    if isinstance(obj, dict):
        return {k: _normalize(v, subs) for k, v in obj.items()}
    return obj


def load_side(spec: Path, stage: str | None = None) -> Side:
    """A run directory (its record.json) or a training log."""
    from mfnpatch.runs.handover import verbose_of
    from mfnpatch.runs.record import RECORD, load_record
    from mfnpatch.runs.summaries import stage_summary

    p = Path(spec)
    if p.is_dir():
        if not (p / RECORD).is_file():
            raise CompareError(
                f"{p}: a directory without {RECORD} (not a run directory)",
                hint="give a run directory (runs/NAME) or a training log file",
            )
        run_dir = p.absolute()
        rec = load_record(run_dir)
        notes: list[str] = []
        pairs = [(str(run_dir), "<run>"), (rec.tree, "<tree>")]
        moved_from = _recorded_run_dir(rec)
        if moved_from and moved_from != str(run_dir):  # a run directory copied or moved since it ran
            pairs.append((moved_from, "<run>"))
            notes.append(f"recorded at {moved_from}; its files are read where the run is now, {run_dir}")
        subs = sorted(pairs, key=lambda x: -len(x[0]))
        stages = {}
        for s in rec.stages:
            if s.status in ("pending", "skipped") and not s.log:
                continue
            summary = stage_summary(run_dir, s) if s.kind == "train" else None
            cmd = _normalize({"argv": s.argv, "env": s.env, "cwd": s.cwd, "segments": len(s.segments)}, subs)
            stop = None
            if s.stop and s.status == "done" and s.end == "stopped":
                stop = s.stop.value * verbose_of(s.argv) if s.stop.kind == "checkpoint" else s.stop.value
            roots = [run_dir, Path(rec.tree)]
            here = {_relocated(path, moved_from, run_dir): digest for path, digest in s.checkpoints.items()}
            files = {_relocated(path, moved_from, run_dir): digest for path, digest in s.files.items()}
            logs = {str(run_dir / s.log): s.log_sha256} if s.log and s.log_sha256 else {}
            logs |= {str(run_dir / g.log): g.log_sha256 for g in s.segments if g.log_sha256}
            checks = {c.path: c for c in check_files({**here, **files, **logs}, roots)}
            side = StageSide(s.name, summary, _hashes_now(here, checks, subs), cmd, stop)
            for c in checks.values():
                key = _normalize(c.path, subs)
                if c.state == "missing":
                    notes.append(f"{key}: no longer on disk; its recorded sha256 is compared")
                elif c.state != "same":
                    side.changed.append(FileCheck(key, c.recorded, c.now, c.state))
            models = [p for p in files if is_model(p) and checks[p].state != "outside"]
            side.models = _hashes_now(models, checks, subs)
            stages[s.name] = side
        prov = run_provenance(rec, lambda obj: _normalize(obj, subs))
        interp = rec.environment.interpreter
        ctx = {
            "host": f"{rec.host.hostname} ({rec.host.cpus} CPUs, {rec.host.platform})",
            "python / MXNet": f"{interp.version if interp else None} / {interp.mxnet if interp else None}",
            "status": rec.status,
        }
        data = {", ".join(d.stages): d.fingerprint for d in rec.datasets}
        return Side(str(p), "run", stages, prov, ctx, notes, data)
    if p.is_file():
        summary = summarize(p)
        name = stage
        if name is None:
            from mfnpatch.verify.stagematch import detect_stage

            name = detect_stage(summary).stage or "log"
        return Side(str(p), "log", {name: StageSide(name, summary)})
    raise CompareError(f"{p}: no such run directory or log file", hint="give runs/NAME or a training log")


def _recorded_run_dir(rec: RunRecord) -> str | None:
    """Where the run directory was when the run saved its checkpoints (their paths hold its name)."""
    needle = f"/{rec.run_id}/"
    for s in rec.stages:
        for path in s.checkpoints:
            i = path.rfind(needle)
            if i >= 0:
                return path[: i + len(needle) - 1]
    return None


def _relocated(path: str, moved_from: str | None, run_dir: Path) -> str:
    if moved_from and path.startswith(moved_from + "/"):
        return str(run_dir) + path[len(moved_from) :]
    return path


def _hashes_now(paths, checks: dict[str, FileCheck], subs: list[tuple[str, str]]) -> dict[str, str]:
    """The hashes of ``paths`` as they are on disk now — a file gone, or outside the run and its tree (never
    read), keeps its recorded hash; a file changed since the run, or outside it, is a difference of its own
    (``StageSide.changed``)."""
    return {_normalize(p, subs): checks[p].now or checks[p].recorded for p in paths}


# --------------------------------------------------------------------------------------------
# Comparing


ON_DISK = {"changed": "changed since recorded", "outside": "outside the run and its tree: not read",
           "missing": "no longer on disk", "same": "as recorded"}  # fmt: skip


def compare_sides(a: Side, b: Side, tolerance: float = 0.0) -> Comparison:
    rows: list[Row] = []
    notes: list[str] = [f"A: {n}" for n in a.notes] + [f"B: {n}" for n in b.notes]
    if a.kind == "run" and b.kind == "run":
        for k in dict.fromkeys([*a.datasets, *b.datasets]):  # a difference in the data comes first
            rows.append(_dataset_row(k, a.datasets.get(k), b.datasets.get(k), k in a.datasets, k in b.datasets))
        for k in a.provenance:
            va, vb = a.provenance.get(k), b.provenance.get(k)
            rows.append(Row("", "provenance", k, va, vb, same=va == vb))
        for k in a.context:
            va, vb = a.context.get(k), b.context.get(k)
            rows.append(Row("", "context", k, va, vb, same=va == vb))
    else:
        notes.append("a training log has no provenance (recipe, patch sets, seed): only its numbers are compared")
    names = [n for n in a.stages if n in b.stages]
    if (a.kind == "log" or b.kind == "log") and not names:
        raise CompareError(
            f"nothing to compare: A has stage(s) {', '.join(a.stages)}, B has {', '.join(b.stages)}",
            hint="name the stage the log ran: --stage NAME",
        )
    for only, side in ((set(a.stages) - set(b.stages), "A"), (set(b.stages) - set(a.stages), "B")):
        for n in sorted(only):
            if a.kind == "run" and b.kind == "run":
                rows.append(Row(n, "provenance", "stage", n if side == "A" else None, n if side == "B" else None,
                                same=False, note=f"only in {side}"))  # fmt: skip
    for label, one in (("A", a), ("B", b)):
        for n, st in one.stages.items():
            for c in st.changed:
                now = f" (now {c.now[:12]})" if c.now else ""
                rows.append(Row(n, "on disk", c.path, c.recorded, c.now, same=False,
                                note=f"{label}: {ON_DISK[c.state]}{now}"))  # fmt: skip
    for n in names:
        sa, sb = a.stages[n], b.stages[n]
        stops = [x for x in (sa.stop_step, sb.stop_step) if x is not None]
        stop = min(stops) if stops else None
        late = [f for f in sorted(set(sa.models) | set(sb.models)) if _after_stop(f, stop, sa, sb)]
        for f in sorted(set(sa.models) | set(sb.models)):
            if f not in late:
                ha, hb = sa.models.get(f), sb.models.get(f)
                rows.append(Row(n, "model", f, ha, hb, same=ha == hb and ha is not None))
        if late:
            notes.append(f"{n}: {len(late)} model file(s) saved after the planned stop not compared")
        if sa.command is not None and sb.command is not None:
            rows.append(Row(n, "provenance", "command", sa.command, sb.command, same=sa.command == sb.command))
        vrows = _verification_rows(n, sa.summary, _at_a_s_samples(n, sa.summary, sb.summary, notes), tolerance)
        beyond = [r for r in vrows if stop is not None and r.step is not None and r.step > stop]
        rows += [r for r in vrows if r not in beyond]
        if beyond:
            notes.append(f"{n}: {len(beyond)} verification value(s) after the planned stop (step {stop}) not compared: "
                         "the process went on printing until it was stopped")  # fmt: skip
        if sa.checkpoints or sb.checkpoints:
            if not sa.checkpoints or not sb.checkpoints:
                notes.append(f"{n}: checkpoint hashes recorded only in {'A' if sa.checkpoints else 'B'}")
            else:
                skipped = 0
                for f in sorted(set(sa.checkpoints) | set(sb.checkpoints)):
                    if _after_stop(f, stop, sa, sb):
                        skipped += 1
                        continue
                    ha, hb = sa.checkpoints.get(f), sb.checkpoints.get(f)
                    rows.append(Row(n, "checkpoint", f, ha, hb, same=ha == hb and ha is not None))
                if skipped:
                    notes.append(f"{n}: {skipped} checkpoint file(s) after the planned stop not compared")
    return Comparison(a.path, b.path, tolerance, rows, notes)


def _after_stop(f: str, stop: int | None, sa: StageSide, sb: StageSide) -> bool:
    """A checkpoint (``…-NNNN.params``) saved after the planned stop: the process went on until stopped."""
    num = re.search(r"-(\d{4})\.params$", f)
    return stop is not None and num is not None and int(num.group(1)) * _save_every(sa, sb) > stop


def _dataset_row(key: str, fa: DataFingerprint | None, fb: DataFingerprint | None, in_a: bool, in_b: bool) -> Row:
    if not (in_a and in_b):
        return Row("", "dataset", key, fa and fa.model_dump(), fb and fb.model_dump(), same=False,
                   note=f"recorded only in {'A' if in_a else 'B'}")  # fmt: skip
    if fa is None or fb is None:
        same = fa is None and fb is None
        note = "not checked in either run" if same else f"not checked in {'A' if fa is None else 'B'} (--no-data-check)"
        return Row("", "dataset", key, fa and fa.model_dump(), fb and fb.model_dump(), same=same, note=note)
    changes = fa.changes(fb)
    return Row("", "dataset", key, fa.model_dump(), fb.model_dump(), same=not changes,
               note="; ".join(changes) if changes else "the same data")  # fmt: skip


def _save_every(a: StageSide, b: StageSide) -> int:
    """Steps between saves (--verbose) of a stage, from its command."""
    from mfnpatch.runs.handover import verbose_of

    cmd = a.command or b.command or {}
    return verbose_of(cmd.get("argv") or [])


def _at_a_s_samples(stage: str, a: Summary | None, b: Summary | None, notes: list[str]) -> Summary | None:
    """B's summary with its steps counted in A's batches when the two trained at different total batches, so that
    a row's step is the same number of samples seen on both sides (said in the notes)."""
    from mfnpatch.logs.verdicts import scale_summary
    from mfnpatch.verify.explain import total_batch

    if a is None or b is None:
        return b
    ta, tb = total_batch(a.config), total_batch(b.config)
    if not ta or not tb or ta[0] == tb[0]:
        return b
    notes.append(f"{stage}: total batch {ta[0]} in A, {tb[0]} in B: verifications compared at equal samples seen "
                 f"(B's step s is shown as A's step s x {tb[0] / ta[0]:g})")  # fmt: skip
    return scale_summary(b, tb[0] / ta[0])


def _verification_rows(stage: str, a: Summary | None, b: Summary | None, tol: float) -> list[Row]:
    rows = []
    va = a.verifications if a else {}
    vb = b.verifications if b else {}
    for target in list(dict.fromkeys([*va, *vb])):
        steps = sorted(set(va.get(target, {})) | set(vb.get(target, {})))
        for step in steps:
            x = va.get(target, {}).get(step)
            y = vb.get(target, {}).get(step)
            ax, by = (x[0] if x else None), (y[0] if y else None)
            if ax is None or by is None:
                rows.append(Row(stage, "verification", f"{target} at step {step}", ax, by, None, False, step=step))
                continue
            d = by - ax
            rows.append(Row(stage, "verification", f"{target} at step {step}", ax, by, round(d, 6),
                            abs(d) <= tol + 1e-12, step=step))  # fmt: skip
    return rows


def compare(a: Path, b: Path, tolerance: float = 0.0, stage: str | None = None) -> tuple[Comparison, Side, Side]:
    sa, sb = load_side(a, stage), load_side(b, stage)
    return compare_sides(sa, sb, tolerance), sa, sb


def plot_overlay(a: Side, b: Side, out: Path) -> Path | None:
    """Each stage's verification curves, A solid and B dashed, one panel per stage."""
    from mfnpatch.fsutil import check_replaceable
    from mfnpatch.logs.plot import save_png

    check_replaceable(Path(out), "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def has_curves(side: Side, n: str) -> bool:
        s = side.stages[n].summary
        return bool(s and s.verifications)

    names = [n for n in a.stages if n in b.stages and (has_curves(a, n) or has_curves(b, n))]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, n in zip(axes[0], names, strict=True):
        for side, style, label in ((a, "-", "A"), (b, "--", "B")):
            s = side.stages[n].summary
            for i, (t, steps) in enumerate((s.verifications if s else {}).items()):
                xs = sorted(steps)
                ax.plot(xs, [steps[x][0] for x in xs], style, color=f"C{i}", marker="o", ms=3,
                        label=f"{label} {t}")  # fmt: skip
        ax.set_title(n)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"A: {a.path}\nB: {b.path}", fontsize=8)
    fig.tight_layout()
    return save_png(fig, out, dpi=100)
