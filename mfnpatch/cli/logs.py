"""Commands on training logs: log summary, log plot, verify, compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mfnpatch.cli.app import (
    CTX,
    JsonOpt,
    ProfileOpt,
    _check_tolerance,
    _show,
    app,
    emit_json,
    err,
    log_app,
    out,
)
from mfnpatch.errors import (
    EXIT_OK,
)

# --------------------------------------------------------------------------------------------
# log / verify


@log_app.command("summary")
def log_summary(
    log: Annotated[Path, typer.Argument(help="A training log (what train_softmax.py printed).")],
    as_json: JsonOpt = False,
):
    """What happened in a run: configuration, best and last accuracy per target, speed, checkpoints, ending."""
    from mfnpatch.logs.parser import summarize

    CTX.json = as_json
    s = summarize(log)
    if as_json:
        emit_json(s.to_dict())
        return EXIT_OK
    out.print(f"[bold]{escape(str(log))}[/]: {s.lines} lines ({s.unknown_lines} not recognised, {s.warnings} warnings)")
    facts = []
    if s.python:
        facts.append(f"Python {s.python}")
    if s.speedometer_format:
        facts.append(f"Speedometer {s.speedometer_format}")
    if s.images:
        facts.append(f"{s.images} images, {s.identities} identities, {s.batches_per_epoch} batches/epoch")
    if facts:
        out.print("  " + escape(", ".join(facts)))
    if s.highlights:
        t = Table(show_edge=False, box=None, pad_edge=False, title="configuration", title_justify="left")
        t.add_column("key")
        t.add_column("value")
        for k, v in s.highlights.items():
            t.add_row(k, escape(repr(v)))
        out.print(t)
    if s.pretrained:
        out.print(f"pretrained: {escape(s.pretrained[0])},{s.pretrained[1]}")
    targets = s.targets()
    if targets:
        t = Table(show_edge=False, box=None, pad_edge=False)
        for col in ("target", "rounds", "best", "at step", "last", "at step"):
            t.add_column(col, justify="left" if col == "target" else "right")
        for x in targets.values():
            t.add_row(
                x.target,
                str(x.rounds),
                f"{x.best_accuracy:.5f} ±{x.best_std:.5f}",
                str(x.best_step),
                f"{x.last_accuracy:.5f}",
                str(x.last_step),
            )
        out.print(t)
    else:
        out.print("no verification results")
    if s.median_samples_per_sec is not None:
        out.print(f"speed: median {s.median_samples_per_sec:g} samples/s over {s.speed_lines} Speedometer lines")
    if s.lr_changes:
        out.print("lr changes: " + ", ".join(f"{lr:g} at {st}" for st, lr in sorted(s.lr_changes.items())))
    if s.checkpoints:
        nums = sorted(s.checkpoints)
        first, last = nums[0], nums[-1]
        out.print(
            f"checkpoints: {len(nums)} saved, #{first} at step {s.checkpoints[first]['step']} … "
            f"#{last} at step {s.checkpoints[last]['step']}"
        )
    out.print(f"ended: {escape(s.how_it_ended())}")
    if s.several_runs:
        out.print(f"[yellow]several runs[/]: {escape(s.several_runs)}")
    if s.malformed_lines:
        shown = "; ".join(s.malformed[:3]) + ("; …" if s.malformed_lines > 3 else "")
        out.print(f"[yellow]malformed[/]: {s.malformed_lines} line(s) hold values no run prints, not evidence: "
                  f"{escape(shown)}")  # fmt: skip
    return EXIT_OK


@log_app.command("plot")
def log_plot(
    log: Annotated[Path, typer.Argument(help="A training log.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path("curves.png"),
    reference: Annotated[
        str | None, typer.Option("--reference", "-r", help="A reference log, or a bundled reference name.")
    ] = None,
):
    """Plot verification accuracy per target against step (reference overlaid), training accuracy and lr."""
    from mfnpatch.logs.expected import resolve_reference
    from mfnpatch.logs.parser import summarize
    from mfnpatch.logs.plot import plot_curves

    s = summarize(log)
    ref = None
    if reference:
        path, _ = resolve_reference(reference)
        ref = summarize(path)
    plot_curves(s, output, ref)
    out.print(f"wrote {escape(str(output))}")
    return EXIT_OK


@app.command()
def verify(
    log: Annotated[Path, typer.Option("--log", "-l", help="The training log to check.")],
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference", "-r", help="A reference log, or a bundled reference name (seed-2018-05-09-arcface-test2)."
        ),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option("--tolerance", help="Absolute accuracy tolerance against --reference; default: its own ± std."),
    ] = None,
    stage: Annotated[
        str | None,
        typer.Option("--stage", help="The stage the log ran (softmax, arcface, finetune); default: detected."),
    ] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", help="Match against this recipe only (may09 … may16, or a file).")
    ] = None,
    profile: ProfileOpt = None,
    start_step: Annotated[
        int | None,
        typer.Option(
            "--start-step",
            help="A resumed run: the stage step its step 0 is (default: checkpoint N x --verbose of --pretrained).",
        ),
    ] = None,
    patches: Annotated[
        str | None, typer.Option("--patches", help="Patch sets the run used (mfn,py3): check what the log reveals.")
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="Checkpoint prefix of the run (for the symbol checks).")
    ] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write a Markdown report here.")] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Say why: what differs from the seed's stage, most important first, and where the curve first "
            "fell behind the reference (--reference, else the stage's bundled one) at equal samples seen.",
        ),
    ] = False,
    as_json: JsonOpt = False,
):
    """Judge a training log the way the seed's author would: by the stage it ran, against the seed's numbers.

    \b
    Which stage: read from the log's own arguments (loss type, lr, lr steps, margin_s,
    pretrained, network, emb size, wd, fc7 wd-mult) and matched against the bundled recipes'
    stages; every argument that differs is a finding. --stage/--recipe/--profile override.
    A run resumed from its own stage's checkpoint (--pretrained ...-arcface,40) counts steps
    from 0: they are mapped to stage steps (checkpoint x --verbose, or --start-step) first.

    \b
    Rules (each check states its own):
      at least (以上) / best reached   a floor: the run's best reaches it; better passes
      about (左右) ± tolerance         passes from value - tolerance up; above the band is a note
      --reference REF                  each (target, step) of REF within ± its std (or --tolerance)
                                       at the same stage step; each target's best >= REF's best - tolerance
      missing                          "unmeasured": never a pass

    \b
    Exit 0 only when the verdict is pass (every required check passes); 1 on fail or unmeasured.
    """
    from mfnpatch.fsutil import atomic_write
    from mfnpatch.resources import data_dir
    from mfnpatch.source.patchset import Catalog, select_sets
    from mfnpatch.verify.report import verification_markdown
    from mfnpatch.verify.verify import verify as do_verify

    CTX.json = as_json
    _check_tolerance(tolerance)
    sets = select_sets(Catalog.scan(data_dir("patches")), patches) if patches else None
    v = do_verify(
        log, reference, tolerance=tolerance, sets=sets, checkpoint=checkpoint, recipe=recipe, profile=profile,
        stage=stage, start_step=start_step, explain=explain,
    )  # fmt: skip
    code = v.exit_code
    if markdown:
        atomic_write(markdown, verification_markdown(v))
    if as_json:
        emit_json(v.to_dict() | {"exit_code": code})
        return code
    color = {"pass": "green", "fail": "red", "unmeasured": "yellow", "n/a": "dim"}
    m = v.match
    if m is not None and m.signature is not None:
        exact = "exact match" if not m.differences else f"{len(m.differences)} argument(s) differ"
        out.print(f"stage: [bold]{escape(m.signature.label)}[/] ({exact}; {escape(m.how)})")
    elif m is not None:
        out.print(f"stage: [yellow]unknown[/] ({escape(m.how)})")
    t = Table(show_edge=False, box=None, pad_edge=False)
    t.add_column("check", no_wrap=True)  # a check's name (a patch's file name) is never cut: the others wrap
    for col in ("verdict", "found", "at step", "expected"):
        t.add_column(col, overflow="fold")
    for c in v.checks:
        if not c.required and c.verdict in ("unmeasured", "n/a"):
            continue
        t.add_row(
            escape(c.id), f"[{color[c.verdict]}]{c.verdict}[/]", escape(_show(c.actual)),
            "" if c.step is None else str(c.step), escape(_show(c.expected)),
        )  # fmt: skip
    out.print(t)
    for c in v.checks:
        if not c.required and c.verdict in ("unmeasured", "n/a"):
            out.print(f"[dim]not checked[/]: {escape(c.message)}")
    rules: dict[str, list[str]] = {}
    for c in v.checks:
        if c.rule and c.verdict != "n/a":
            rules.setdefault(c.rule, []).append(c.id)
    for rule, ids in rules.items():
        out.print(f"[dim]rule[/] ({escape(', '.join(ids))}): {escape(rule)}")
    for c in v.checks:
        if c.above_band:
            out.print(f"[cyan]note[/]: {escape(c.message)}")
    for f in v.findings:
        out.print(f"[dim]finding[/]: {escape(f)}")
    if v.explanation is not None:
        from mfnpatch.verify.explain import lines as explanation_lines

        for line in explanation_lines(v.explanation, not v.passed):
            out.print(escape(line))
    exp = v.experiment
    other = ""
    if exp is not None and not exp["same_as_seed"]:
        keys = [d.split(" ")[0] if not d.startswith("total batch") else "total batch" for d in exp["differs"]]
        other = f" — but not the seed's experiment ({', '.join(dict.fromkeys(keys))} differ)"
    if v.passed:
        out.print(f"[green]PASS[/]: {v.count('pass')} checks passed{escape(other)}")
    else:
        bad = v.failures()
        word = "FAIL" if v.verdict == "fail" else "UNMEASURED"
        err.print(
            (
                f"[red]{word}[/]: {len(bad)} required check(s) did not pass"
                if bad
                else f"[red]{word}[/]: no required check"
            )
            + escape(other)
        )
        for c in bad:
            err.print(f"  {c.verdict}: {escape(c.message)}")
    if markdown:
        out.print(f"report: {escape(str(markdown))}")
    return code


@app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="A run directory (runs/NAME) or a training log.", metavar="A")],
    b: Annotated[Path, typer.Argument(help="Another run directory or training log.", metavar="B")],
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Accuracies within this absolute difference count as equal.")
    ] = 0.0,
    stage: Annotated[
        str | None, typer.Option("--stage", help="The stage a bare log ran (default: detected from its arguments).")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write the overlay of both sides' curves here (PNG).")
    ] = Path("compare.png"),
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Do not write the overlay plot.")] = False,
    as_json: JsonOpt = False,
):
    """Two runs side by side: provenance, every verification step, checkpoint hashes, an overlay plot.

    \b
    A and B are run directories or training logs (a user's own run against a recorded one).
    Exit 0 when they are identical (every value equal, or within --tolerance; every
    checkpoint byte-identical; the same recipe, parameters, pin, patch sets, environment
    lock, seed and commands), 1 otherwise, naming the first difference.
    """
    from mfnpatch.runs.compare import compare, plot_overlay

    CTX.json = as_json
    _check_tolerance(tolerance)
    c, sa, sb = compare(a, b, tolerance, stage)
    png = None if no_plot or plot is None else plot_overlay(sa, sb, plot)
    code = c.exit_code
    if as_json:
        emit_json(c.to_dict() | {"plot": str(png) if png else None, "exit_code": code})
        return code
    out.print(f"A: {escape(c.a)}\nB: {escape(c.b)}")
    t = Table(show_edge=False, box=None, pad_edge=False)
    for col in ("stage", "what", "", "A", "B", "difference"):
        t.add_column(col, overflow="fold")
    for r in c.rows:
        mark = "[green]=[/]" if r.same else ("[dim]~[/]" if r.what == "context" else "[red]≠[/]")
        if r.what == "verification":
            va = "–" if r.a is None else f"{r.a:.5f}"
            vb = "–" if r.b is None else f"{r.b:.5f}"
            diff = "" if r.diff is None else f"{r.diff:+.5f}"
        elif r.what in ("checkpoint", "model"):
            va, vb, diff = str(r.a or "–")[:12], str(r.b or "–")[:12], ""
        elif r.what == "on disk":
            va, vb, diff = str(r.a or "–")[:12], str(r.b or "–")[:12], r.note
        elif r.what == "dataset":
            va, vb, diff = _dataset_cell(r.a), _dataset_cell(r.b), r.note
        else:
            va, vb, diff = _compare_cell(r.a), _compare_cell(r.b), r.note
        t.add_row(escape(r.stage), f"{mark} {r.what}", escape(r.key), escape(va), escape(vb), escape(diff))
    out.print(t)
    for n in c.notes:
        out.print(f"[dim]note[/]: {escape(n)}")
    if png:
        out.print(f"plot: {escape(str(png))}")
    if c.identical:
        values = sum(1 for r in c.rows if r.what == "verification")
        files = sum(1 for r in c.rows if r.what == "checkpoint")
        models = sum(1 for r in c.rows if r.what == "model")
        out.print(f"[green]IDENTICAL[/]: {values} verification values, {files} checkpoint files and {models} model "
                  "files equal, every recorded file as recorded")  # fmt: skip
    else:
        first = c.first_difference() or ""
        err.print(f"[red]DIFFERENT[/]: {len(c.differences)} difference(s); the first: {escape(first)}")
    return code


def _dataset_cell(fp: dict | None) -> str:
    if not fp:
        return "not checked"
    files = fp.get("files") or {}
    idx = (files.get("train.idx") or {}).get("sha256") or ""
    return f"{fp.get('variant') or 'unknown'}, {fp.get('images')} images, train.idx {idx[:8]}"


def _compare_cell(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 48 else text[:45] + "..."
