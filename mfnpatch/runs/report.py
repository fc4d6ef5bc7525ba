"""The report of a recipe run in Markdown (``run_markdown``); a verification's is ``mfnpatch.verify.report``.

Rendering is text from values: what a run's report shows of the disk (its accuracy plots, the end of each
tool stage's output) is gathered first (``gather``), by the caller.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.logs.plot import plot_curves
from mfnpatch.runs.record import RunRecord
from mfnpatch.runs.summaries import stage_summary
from mfnpatch.verify.report import ICON, cell

TOOL_OUTPUT_LINES = 40
_ENGINE_CHATTER = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


@dataclass
class ReportInputs:
    """What a run's report shows of the disk: each training stage's plot (its file name, or why there is
    none) and the end of each finished tool stage's output."""

    plots: dict[str, str] = field(default_factory=dict)
    no_plot: dict[str, str] = field(default_factory=dict)
    tails: dict[str, list[str]] = field(default_factory=dict)


def gather(run_dir: Path, rec: RunRecord) -> ReportInputs:
    """Write each training stage's accuracy plot beside the record; read the end of each tool stage's log."""
    got = ReportInputs()
    for s in rec.stages:
        if not s.log or not (run_dir / s.log).is_file():
            continue
        if s.kind == "train" and s.status not in ("pending", "skipped", "queued"):
            png = run_dir / f"curves-{s.name}.png"
            try:
                summ = stage_summary(run_dir, s)
                if summ is not None and (summ.verifications or summ.train_curve):
                    plot_curves(summ, png, title=f"{rec.run_id}: {s.name}")
                    got.plots[s.name] = png.name
            except MfnError as e:
                got.no_plot[s.name] = e.message
        if s.kind == "tool" and s.status == "done":
            got.tails[s.name] = _tail_text(run_dir / s.log, TOOL_OUTPUT_LINES)
    return got


def run_markdown(rec: RunRecord, inputs: ReportInputs) -> str:
    """The Markdown report of a recipe run."""
    r = rec.recipe
    env = rec.environment
    interp = env.interpreter
    lines = [
        f"# Run {rec.run_id}: {rec.status.upper()}",
        "",
        f"- recipe: `{r.name}`"
        + (f", profile `{r.profile}`" if r.profile else "")
        + f" (seed update {r.seed_update}), sha256 `{r.sha256[:12]}`",
        f"- pin: `{rec.pin.commit[:7]}` (tree `{rec.pin.tree[:12]}`), patched tree `{rec.tree}`",
        "- patch sets: " + ", ".join(f"{p.name}@{p.version} (`{p.sha256[:12]}`)" for p in rec.patches),
        f"- environment: `{env.name}`; python {(interp.version if interp else None) or '?'}"
        + (f", PyTorch {interp.torch}" if interp and interp.torch else "")
        + (f", MXNet {interp.mxnet}" if interp and interp.mxnet else "")
        + (f" (lock `{env.lock_sha256[:12]}`)" if env.lock_sha256 else ""),
        f"- host: {rec.host.hostname} ({rec.host.cpus} CPUs); started {rec.started}, finished {rec.finished}",
        "- " + _determinism_line(rec),
        *_data_lines(rec),
        *_fit_lines(rec),
        "",
        "| stage | status | how it ended | seconds | checks |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for s in rec.stages:
        checks = s.checks
        if checks:
            n_ok = sum(1 for c in checks if c.verdict == "pass")
            verdict = f"{n_ok}/{len(checks)} pass" + ("" if s.passed else " — **FAIL**")
        else:
            verdict = "–"
        lines.append(f"| {s.name} | {s.status} | {cell(s.ended or s.skipped)} | {s.seconds or '–'} | {verdict} |")
    lines.append("")
    for s in rec.stages:
        if s.status in ("pending", "skipped", "queued") or (s.status == "cancelled" and not s.log):
            continue
        lines += [f"## {s.name}: {s.title}", ""]
        if s.argv:
            env_prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.env.items())
            lines += ["```", f"cd {s.cwd} && {env_prefix + ' ' if env_prefix else ''}{shlex.join(s.argv)}", "```", ""]
        if s.seed_command:
            lines += [f"The seed's command: `{' '.join(s.seed_command.split())}`", ""]
        if s.stands_in:
            lines += [f"Stands in for the seed's step: {s.stands_in}", ""]
        for seg in s.segments:
            how = (f"resumed from checkpoint {seg.start_save} (step {seg.start_step}) at lr {seg.lr or 0:g}, lr steps "
                   f"shifted by {seg.start_step}; its save k is the stage's {seg.start_save} + k"
                   if seg.steps == "segment" else f"resumed from the state saved after epoch {seg.start_save} (step "
                   f"{seg.start_step}, lr {seg.lr or 0:g}); its log counts steps from the stage's start")  # fmt: skip
            lines += [
                f"Segment {seg.index}: {how}. {seg.ended or 'running'}. Log: [{seg.log}]({seg.log})",
                "",
                "```",
                f"cd {s.cwd} && {shlex.join(seg.argv)}",
                "```",
                "",
            ]
        for note in s.notes:
            lines += [f"Note: {note}.", ""]
        if s.sentinel is not None:
            trip = s.sentinel
            at = f" at step {trip.step}" if trip.step is not None else ""
            lines += [f"**Stopped by the `{trip.sentinel}` sentinel**{at} (log line {trip.line}): {trip.why}. "
                      f"Likeliest causes: {trip.hint}. Its last saved checkpoint is kept; `--no-sentinels` (or "
                      f"`sentinels: {{{trip.sentinel}: off}}` in the recipe) runs on regardless.", ""]  # fmt: skip
        elif s.kind == "train" and s.status != "pending":
            watched = ", ".join(s.sentinels) if s.sentinels else "none (--no-sentinels or all off in the recipe)"
            lines += [f"Sentinels watched: {watched}.", ""]
        if s.inputs:
            lines += ["Inputs: " + ", ".join(f"{k} = `{v}`" for k, v in s.inputs.items()), ""]
        t = s.metrics.targets
        if t:
            lines += ["| target | best | at step | last | at step |", "| --- | ---: | ---: | ---: | ---: |"]
            for name, m in t.items():
                lines.append(f"| {name} | {m.best:.5f} | {m.best_step} | {m.last:.5f} | {m.last_step} |")
            lines.append("")
        if s.checks:
            lines += ["| check | verdict | detail |", "| --- | --- | --- |"]
            for c in s.checks:
                lines.append(f"| {c.id} | {ICON.get(c.verdict, c.verdict)} | {cell(c.message)} |")
            lines.append("")
        if s.name in inputs.plots:
            lines += [f"![{s.name} accuracy]({inputs.plots[s.name]})", ""]
        elif s.name in inputs.no_plot:
            lines += [f"(no plot: {inputs.no_plot[s.name]})", ""]
        if inputs.tails.get(s.name):
            # a tool stage's output is its result (the bench table, the conversion summary): show its end
            lines += ["```", *inputs.tails[s.name], "```", ""]
        if s.checkpoints:
            lines += ["Checkpoints (sha256): " + ", ".join(f"`{k}` `{v[:12]}`" for k, v in s.checkpoints.items()), ""]
        if s.log:
            lines += [f"Log: [{s.log}]({s.log})", ""]
    return "\n".join(lines) + "\n"


def _fit_lines(rec: RunRecord) -> list[str]:
    """The GPUs and the batch, how the plan was fitted to them, and what that changed from the seed's plan."""
    out = []
    f = rec.recipe.fit
    if f:
        n = len(f["gpus"]) or 1
        same = "the seed's experiment" if not f["differs"] else "**not the seed's experiment**"
        out.append(f"- fit: `{f['rule'] or 'as given'}`: {n} GPU(s) x {f['per_gpu']} = total batch {f['total']} "
                   f"(the seed's {f['seed_total']}): {same}")  # fmt: skip
        for c in f["changes"]:
            word = "changed from the seed" if f["differs"] else "set"
            out.append(f"  - {word}: `{c['parameter']}` {c['seed']} -> {c['now']} ({c['why']})")
    out += [f"- **warning**: {w}" for w in rec.recipe.warnings]
    est = rec.recipe.estimate
    if est:
        actual = sum(s.seconds or 0 for s in rec.stages if s.kind == "train") / 3600
        out.append(f"- estimate (recipe estimate of {est.get('made')}): {est['hours']:.2f} h of training; it took "
                   f"{actual:.2f} h")  # fmt: skip
    return out


def _data_lines(rec: RunRecord) -> list[str]:
    """Each training dataset: its check and fingerprint (mfnpatch data check)."""
    out = []
    for d in rec.datasets:
        fp = d.fingerprint
        rec_file = fp.files.get("train.rec") if fp else None
        what = f"{d.check}: {d.summary}" if d.summary else d.check
        if d.check == "skipped" and d.summary == "--no-data-check":
            what = "**not checked** (--no-data-check)"
        digest = f"; train.rec {rec_file.how} `{(rec_file.digest or '')[:12]}`" if rec_file else ""
        idx = fp.files.get("train.idx") if fp else None
        out.append(f"- data of {', '.join(d.stages)}: `{d.dir}`: {what}"
                   + (f" (train.idx `{idx.sha256[:12]}`" + digest + ")" if idx and idx.sha256 else ""))  # fmt: skip
        out += [f"  - warning: {w}" for w in d.warnings[:5]]
    return out


def _determinism_line(rec: RunRecord) -> str:
    d = rec.determinism
    if d is None:
        return "determinism: not recorded (a run from before mfnpatch seeded runs)"
    if not d.deterministic:
        return f"determinism: **not deterministic**: {d.how}"
    return f"determinism: **deterministic**, seed {d.seed}: {d.how}. Still varies: {'; '.join(d.still_varies)}"


def _tail_text(path: Path, n: int) -> list[str]:
    """The last n lines of a log, without MXNet's timestamped engine messages."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    keep = [ln.rstrip() for ln in text.splitlines() if not _ENGINE_CHATTER.match(ln)]
    while keep and not keep[-1]:
        keep.pop()
    return [ln.replace("`" * 3, "` ` `") for ln in keep[-n:]]
