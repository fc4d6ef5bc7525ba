"""Reports: Markdown and JSON for verifications and log summaries, and the accuracy plot (PNG)."""

from __future__ import annotations

import os
import re
import shlex
import tempfile
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write, check_replaceable, replacing
from mfnpatch.logs.parser import Summary
from mfnpatch.logs.verdicts import Verification

ICON = {"pass": "pass", "fail": "**FAIL**", "unmeasured": "unmeasured", "n/a": "n/a"}


def verification_markdown(v: Verification) -> str:
    verdict = v.verdict.upper()
    m = v.match
    stage = (f"`{m.signature.label}` ({m.how})" if m.signature else f"unknown ({m.how})") if m else "not detected"
    lines = [
        f"# Verification: {verdict}",
        "",
        f"- log: `{v.log}`",
        f"- stage: {stage}",
        f"- reference: `{v.reference}`" if v.reference else "- reference: none",
        f"- rule: {v.rule}",
        f"- checks: {v.count('pass')} pass, {v.count('fail')} fail, {v.count('unmeasured')} unmeasured, "
        f"{v.count('n/a')} n/a",
        "",
    ]
    groups = (("stage", "Against the stage's expected results"), ("reference", "Against the reference"),
              ("patches", "Against the patch sets"))  # fmt: skip
    for group, title in groups:
        rows = [c for c in v.checks if c.group == group and (c.required or c.verdict in ("pass", "fail"))]
        if not rows:
            continue
        lines += [f"## {title}", "", "| check | verdict | expected | actual |", "| --- | --- | --- | --- |"]
        for c in rows:
            lines.append(f"| {c.id} | {ICON[c.verdict]} | {_cell(c.expected)} | {_cell(c.actual)} |")
        lines.append("")
    rules = [f"- {c.id}: {c.rule}" for c in v.checks if c.rule and c.verdict != "n/a"]
    if rules:
        lines += ["## Rules", ""] + rules + [""]
    not_checked = [c for c in v.checks if not c.required and c.verdict in ("unmeasured", "n/a")]
    if not_checked:
        lines += ["## Could not be checked", ""] + [f"- {c.message}" for c in not_checked] + [""]
    failing = v.failures()
    if failing:
        lines += ["## What failed", ""] + [f"- {c.message}" for c in failing] + [""]
    if v.findings:
        lines += ["## Findings", ""] + [f"- {f}" for f in v.findings] + [""]
    return "\n".join(lines)


def _cell(x) -> str:
    if x is None:
        return "–"
    return str(x).replace("|", "\\|")


def summary_markdown(s: Summary) -> str:
    lines = [f"# Log summary: `{s.path}`", ""]
    if s.highlights:
        lines += ["| setting | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in s.highlights.items()] + [""]
    t = s.targets()
    if t:
        lines += ["| target | rounds | best | at step | last | at step |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for x in t.values():
            lines.append(
                f"| {x.target} | {x.rounds} | {x.best_accuracy:.5f} ± {x.best_std:.5f} | {x.best_step} "
                f"| {x.last_accuracy:.5f} | {x.last_step} |"
            )
        lines.append("")
    lines.append(f"- samples/s (median of {s.speed_lines} Speedometer lines): {s.median_samples_per_sec}")
    lines.append(f"- checkpoints: {len(s.checkpoints)}; ended: {s.how_it_ended()}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Plot


def lr_schedule(s: Summary) -> list[tuple[int, float]]:
    """Learning rate against step: the configured lr, then each change at its --lr-steps entry."""
    pts: list[tuple[int, float]] = []
    lr0 = (s.config or {}).get("lr")
    if isinstance(lr0, int | float):
        pts.append((0, float(lr0)))
    pts += list(s.lr_changes.items()) + list(s.lr_points.items())
    pts.sort()
    return pts


def plot_curves(s: Summary, out: Path, reference: Summary | None = None, title: str | None = None) -> Path:
    """Accuracy per target against step (reference overlaid); training accuracy and lr below."""
    os.environ.setdefault("MPLCONFIGDIR", tempfile.gettempdir())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MfnError(
            "plotting needs matplotlib", hint="pip install matplotlib (it is in the cpu environment)"
        ) from None
    check_replaceable(Path(out))  # before the work, not after
    if not s.verifications and not s.train_curve:
        raise MfnError(f"{s.path}: nothing to plot (no verification or Speedometer lines)")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    targets = list(dict.fromkeys([*s.verifications, *(reference.verifications if reference else {})]))
    for i, t in enumerate(targets):
        c = colors[i % len(colors)]
        pts = sorted((s.verifications.get(t) or {}).items())
        if pts:
            ax1.plot([p for p, _ in pts], [v[0] for _, v in pts], "-o", ms=3, color=c, label=t)
        if reference is not None and t in reference.verifications:
            rp = sorted(reference.verifications[t].items())
            ax1.errorbar(
                [p for p, _ in rp], [v[0] for _, v in rp], yerr=[v[1] for _, v in rp], fmt="s", ms=6,
                mfc="none", color=c, capsize=3, linestyle="--" if len(rp) > 1 else "none",
                label=f"{t} (reference)",
            )  # fmt: skip
    ax1.set_ylabel("verification accuracy")
    ax1.grid(alpha=0.3)
    if targets:
        ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title(title or Path(s.path).name)
    curve = [(st, a) for st, a in s.train_curve if st is not None]
    if curve:
        ax2.plot([p for p, _ in curve], [a for _, a in curve], ".", ms=2, color="tab:gray", label="training accuracy")
    ax2.set_ylabel("training accuracy")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    sched = lr_schedule(s)
    if sched:
        last = max([sched[-1][0]] + [p for p, _ in curve] + [s.last_step or 0])
        xs = [p for p, _ in sched] + [last]
        ys = [v for _, v in sched] + [sched[-1][1]]
        ax3 = ax2.twinx()
        ax3.step(xs, ys, where="post", color="tab:red", label="learning rate")
        if all(v > 0 for v in ys) and max(ys) / min(ys) > 5:
            ax3.set_yscale("log")
        ax3.set_ylabel("learning rate", color="tab:red")
    fig.tight_layout()
    out = Path(out)
    try:
        with replacing(out, ".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return out


def write_markdown(path: Path, text: str) -> None:
    atomic_write(Path(path), text)


# --------------------------------------------------------------------------------------------
# Run report


def run_markdown(run_dir: Path, rec) -> str:
    """The Markdown report of a recipe run, with one accuracy plot per training stage (written beside it)."""
    from mfnpatch.logs.parser import summarize

    r = rec.recipe
    env = rec.environment
    interp = env.get("interpreter", {})
    lines = [
        f"# Run {rec.run_id}: {rec.status.upper()}",
        "",
        f"- recipe: `{r['name']}`"
        + (f", profile `{r['profile']}`" if r.get("profile") else "")
        + f" (seed update {r.get('seed_update')}), sha256 `{r['sha256'][:12]}`",
        f"- pin: `{rec.pin['commit'][:7]}` (tree `{rec.pin['tree'][:12]}`), patched tree `{rec.tree}`",
        "- patch sets: " + ", ".join(f"{p['name']}@{p['version']} (`{p['sha256'][:12]}`)" for p in rec.patches),
        f"- environment: `{env.get('name')}`; python {interp.get('version', '?')}"
        + (f", MXNet {interp['mxnet']}" if interp.get("mxnet") else "")
        + (f" (lock `{env['lock_sha256'][:12]}`)" if env.get("lock_sha256") else ""),
        f"- host: {rec.host.get('hostname')} ({rec.host.get('cpus')} CPUs); "
        f"started {rec.started}, finished {rec.finished}",
        "- " + _determinism_line(rec),
        "",
        "| stage | status | how it ended | seconds | checks |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for s in rec.stages:
        checks = s.checks
        if checks:
            n_ok = sum(1 for c in checks if c["verdict"] == "pass")
            verdict = f"{n_ok}/{len(checks)} pass" + ("" if s.passed else " — **FAIL**")
        else:
            verdict = "–"
        lines.append(f"| {s.name} | {s.status} | {_cell(s.ended or s.skipped)} | {s.seconds or '–'} | {verdict} |")
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
            lines += [
                f"Segment {seg['index']}: resumed from checkpoint {seg['start_save']} (step {seg['start_step']}) "
                f"at lr {seg['lr']:g}, lr steps shifted by {seg['start_step']}; its save k is the stage's "
                f"{seg['start_save']} + k. {seg.get('ended') or 'running'}. Log: [{seg['log']}]({seg['log']})",
                "",
                "```",
                f"cd {s.cwd} && {shlex.join(seg['argv'])}",
                "```",
                "",
            ]
        for note in s.notes:
            lines += [f"Note: {note}.", ""]
        if s.inputs:
            lines += ["Inputs: " + ", ".join(f"{k} = `{v}`" for k, v in s.inputs.items()), ""]
        t = (s.metrics or {}).get("targets") or {}
        if t:
            lines += ["| target | best | at step | last | at step |", "| --- | ---: | ---: | ---: | ---: |"]
            for name, m in t.items():
                lines.append(f"| {name} | {m['best']:.5f} | {m['best_step']} | {m['last']:.5f} | {m['last_step']} |")
            lines.append("")
        if s.checks:
            lines += ["| check | verdict | detail |", "| --- | --- | --- |"]
            for c in s.checks:
                lines.append(f"| {c['id']} | {ICON.get(c['verdict'], c['verdict'])} | {_cell(c['message'])} |")
            lines.append("")
        if s.kind == "train" and s.log and (run_dir / s.log).is_file():
            png = run_dir / f"curves-{s.name}.png"
            try:
                from mfnpatch.runs.runner import stage_summary

                summ = stage_summary(run_dir, s) or summarize(run_dir / s.log)
                if summ.verifications or summ.train_curve:
                    plot_curves(summ, png, title=f"{rec.run_id}: {s.name}")
                    lines += [f"![{s.name} accuracy]({png.name})", ""]
            except MfnError as e:
                lines += [f"(no plot: {e.message})", ""]
        if s.kind == "tool" and s.status == "done" and s.log and (run_dir / s.log).is_file():
            # a tool stage's output is its result (the bench table, the conversion summary): show its end
            out = _tail_text(run_dir / s.log, TOOL_OUTPUT_LINES)
            if out:
                lines += ["```", *out, "```", ""]
        if s.checkpoints:
            lines += ["Checkpoints (sha256): " + ", ".join(f"`{k}` `{v[:12]}`" for k, v in s.checkpoints.items()), ""]
        if s.log:
            lines += [f"Log: [{s.log}]({s.log})", ""]
    return "\n".join(lines) + "\n"


def _determinism_line(rec) -> str:
    d = rec.determinism or {}
    if not d:
        return "determinism: not recorded (a run from before mfnpatch seeded runs)"
    if not d.get("deterministic"):
        return f"determinism: **not deterministic**: {d.get('how')}"
    varies = "; ".join(d.get("still_varies") or [])
    return f"determinism: **deterministic**, seed {d['seed']}: {d.get('how')}. Still varies: {varies}"


TOOL_OUTPUT_LINES = 30
_ENGINE_CHATTER = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


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
