"""Commands on recipes and runs: recipe list, show, plan, run, status, cancel (and job, for Slurm)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mfnpatch.cli.app import (
    CTX,
    JsonOpt,
    ProfileOpt,
    SetOpt,
    SourceOpt,
    TreeOpt,
    emit_json,
    err,
    out,
    recipe_app,
    write_stdout,
)
from mfnpatch.cli.fit import FitOpt, GpuMemoryOpt, GpusOpt, _pin_tree, fit_request, print_fit
from mfnpatch.errors import (
    EXIT_OK,
    UsageError,
)

# --------------------------------------------------------------------------------------------
# recipe


@recipe_app.command("list")
def recipe_list(as_json: JsonOpt = False):
    """The bundled recipes, one per dated version of the seed's plan."""
    from mfnpatch.recipes.recipe import list_recipes

    CTX.json = as_json
    rows: list[dict[str, Any]] = []
    for path, r, problem in list_recipes():
        rows.append({
            "name": path.stem, "path": str(path), "seed_update": r.seed_update if r else None,
            "title": r.title if r else None, "stages": list(r.stages) if r else [],
            "profiles": list(r.profiles) if r else [], "error": problem,
        })  # fmt: skip
    if as_json:
        emit_json(rows)
        return EXIT_OK
    for row in rows:
        if row["error"]:
            out.print(f"[red]{row['name']}[/]: {escape(row['error'])}")
            continue
        prof = f"  profiles: {', '.join(row['profiles'])}" if row["profiles"] else ""
        out.print(f"[bold]{row['name']}[/]  {row['seed_update']}  {escape(row['title'])}")
        out.print(f"  stages: {' -> '.join(row['stages'])}{prof}")
    return EXIT_OK


@recipe_app.command("show")
def recipe_show(recipe: Annotated[str, typer.Argument(help="A recipe name (may16) or file.")]):
    """Print a recipe file as it is."""
    from mfnpatch.recipes.recipe import find_recipe, load_recipe

    load_recipe(recipe)  # validate first: a bad recipe is an error, not a listing
    write_stdout(find_recipe(recipe).read_text())
    return EXIT_OK


@recipe_app.command("plan")
def recipe_plan(
    recipe: Annotated[str, typer.Argument(help="A recipe name (may16) or file.")],
    profile: ProfileOpt = None,
    sets: SetOpt = None,
    gpus: GpusOpt = None,
    fit: FitOpt = None,
    gpu_memory: GpuMemoryOpt = None,
    as_json: JsonOpt = False,
):
    """Print each stage's exact command, cwd, env, inputs and stop point, without running anything.

    With --gpus N (and --fit), the plan is fitted to those GPUs and says how it differs from the seed's.
    """
    from mfnpatch.recipes.expand import expand, parse_sets
    from mfnpatch.recipes.recipe import load_recipe, seed_tokens

    CTX.json = as_json
    plan = expand(load_recipe(recipe), profile, parse_sets(sets or []), fit=fit_request(gpus, fit, gpu_memory))
    if as_json:
        emit_json(plan.to_dict())
        return EXIT_OK
    r = plan.recipe
    out.print(
        f"[bold]{r.name}[/] ({escape(r.title)}), seed update {r.seed_update}"
        + (f", profile [bold]{profile}[/]" if profile else "")
    )
    out.print(f"pin {r.pin}, patch sets {plan.patches}, environment {plan.environment}"
              + (f", lineage {r.lineage}" if r.lineage else ""))  # fmt: skip
    if plan.fit is not None:
        print_fit(plan.fit)
    from mfnpatch.runs.determinism import describe

    out.print(f"determinism: {escape(describe(plan.seed, r.lineage)['how'])}")
    for s in plan.stages:
        out.print()
        out.print(
            f"[bold]{s.name}[/]: {escape(s.title)}" + (f"  [dim](skipped: {escape(s.skipped)})[/]" if s.skipped else "")
        )
        if s.skipped:
            continue
        out.print(f"  cwd   <tree>/{escape(s.cwd)}")
        for k, v in s.env.items():
            out.print(f"  env   {k}={escape(repr(v))}")
        for k, i in s.inputs.items():
            out.print(f"  input {k} = {escape(i.value or '(at run time)')}: {escape(i.describe)}")
        for a, b in s.copies:
            out.print(f"  copy  {escape(a)} -> {escape(b)}")
        out.print(f"  run   {escape(s.shell())}")
        if s.kind == "train":
            _print_trainer(s)
        if s.data:
            expects = f"the {s.data.variant} variant" if s.data.variant and s.data.variant != "any" else "any dataset"
            out.print(f"  data  {escape(s.data.dir)} ({escape(expects)}; {', '.join(s.data.targets)}): checked "
                      "before the run (mfnpatch data check)")  # fmt: skip
        if s.seed_command:
            same = s.tokens() == seed_tokens(s.seed_command)
            if same:
                out.print("  [green]= the seed's command, token for token[/]")
            else:
                out.print(f"  seed  {escape(' '.join(s.seed_command.split()))}")
        if s.stands_in:
            out.print(f"  [yellow]stands in[/]: {escape(s.stands_in)}")
        if s.note:
            out.print(f"  note  {escape(s.note)}")
        if s.stop:
            from mfnpatch.runs.handover import total_steps

            steps = total_steps(s)
            out.print(
                f"  stop  at {s.stop}"
                + (f" (step {steps})" if s.stop.kind == "checkpoint" else "")
                + f": {escape(s.stop.why)}"
            )
        if s.resources:
            res = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in s.resources.items())
            out.print(f"  slurm {escape(res)} (with --executor slurm; flags override)")
        for e in s.expect:
            out.print(f"  check {escape(_expectation_text(e))}")
    for h in plan.hazards:
        out.print(f"[yellow]hazard[/]: {escape(h)}")
    sources = plan.sources()
    if sources:
        out.print()
        out.print("[bold]sources[/] (where each number comes from)")
        for k, src in sources.items():
            out.print(f"  {k} = {escape(str(plan.parameters.get(k)))}: {escape(src)}")
    return EXIT_OK


def _print_trainer(s) -> None:
    """What the stage's lineage reads from its command, and what mfnpatch cannot do with it (said, never silent)."""
    from mfnpatch.lineages import of_argv

    lin = of_argv(s.argv)
    if lin is None:
        out.print("  [yellow]trainer[/] runs no trainer of a known lineage: no resume, lr sentinel or fit")
        return
    f = lin.facts(s.argv)
    batch = f"total batch {f.total_batch} ({f.processes} x {f.per_gpu_batch})" if f.total_batch else "batch unknown"
    lr = f.lr.describe() if f.lr is not None and hasattr(f.lr, "describe") else "lr schedule unknown"
    out.print(f"  trainer {lin.name}: {batch}, verification every {f.verbose} steps, {escape(lr)}")
    for line in lin.capabilities.said():
        out.print(f"  [yellow]trainer[/] {escape(line)}")


def _expectation_text(e) -> str:
    if e.verified:
        return f"{', '.join(e.verified)} verified at least {e.rounds_at_least} time(s)"
    if e.reference:
        return f"matches reference {e.reference}"
    if e.json_file:
        return f"{e.key} in {e.json_file} {e.op} {e.value}"
    if e.metric == "train_acc":
        return "training accuracy rises"
    if e.from_:
        from mfnpatch.logs.expected import _from_expected, load_expected, seed_rule

        rule = seed_rule(_from_expected(e.from_, load_expected()), e.tolerance, e.from_)[3]
        return f"{e.metric} {e.at}: {rule}"
    tol_text = f" ± {e.tolerance}" if e.tolerance is not None else ""
    return f"{e.metric} {e.at} {e.op} {e.value}{tol_text}"


@recipe_app.command("run")
def recipe_run(
    recipe: Annotated[str, typer.Argument(help="A recipe name (may16) or file.")],
    profile: ProfileOpt = None,
    sets: SetOpt = None,
    tree: TreeOpt = None,
    source: SourceOpt = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default runs/NAME-TIME).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue this run directory.")] = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="Start at this stage.")] = None,
    only: Annotated[str | None, typer.Option("--only", help="Run only this stage, or these (data,train).")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Continue after a failed stage.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --resume: redo stages whose provenance changed.")
    ] = False,
    no_env_check: Annotated[bool, typer.Option("--no-env-check", help="Skip the environment check.")] = False,
    no_data_check: Annotated[
        bool,
        typer.Option("--no-data-check", help="Skip the check of the training stages' data (recorded)."),
    ] = False,
    gpus: GpusOpt = None,
    fit: FitOpt = None,
    gpu_memory: GpuMemoryOpt = None,
    no_sentinels: Annotated[
        bool,
        typer.Option(
            "--no-sentinels",
            help="Do not stop a training stage early when a sentinel fires (verification at chance, training "
            "accuracy stuck at 0, NaN, an lr off the plan, a data stall); recorded. One sentinel: "
            "'sentinels: {NAME: off}' in the recipe.",
        ),
    ] = False,
    env_prefix: Annotated[
        Path | None,
        typer.Option(
            "--env-prefix",
            help="The environment the stages run in (default: this mfnpatch's own); "
            "e.g. a conda env with mxnet-cu101 for the GPU recipes.",
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            metavar="local|slurm",
            help="local: run the stages here, one after another; slurm: submit each stage as a Slurm job "
            "(an afterok chain) and return.",
        ),
    ] = "local",
    partition: Annotated[
        str | None, typer.Option("--partition", help="Slurm partition.", rich_help_panel="Slurm")
    ] = None,
    account: Annotated[str | None, typer.Option("--account", help="Slurm account.", rich_help_panel="Slurm")] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            "--time", help="Time limit per job, e.g. 2-00:00:00 (overrides the recipe's).", rich_help_panel="Slurm"
        ),
    ] = None,
    gpus_per_node: Annotated[
        int | None,
        typer.Option(
            "--gpus-per-node",
            help="GPUs per job of each stage whose recipe asks for GPUs (the training stages); overrides the recipe's.",
            rich_help_panel="Slurm",
        ),
    ] = None,
    cpus_per_task: Annotated[
        int | None, typer.Option("--cpus-per-task", help="CPUs per job.", rich_help_panel="Slurm")
    ] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory per job, e.g. 64G.", rich_help_panel="Slurm")] = None,
    max_requeues: Annotated[
        int,
        typer.Option(
            "--max-requeues",
            min=0,
            help="How often a preempted or timed-out stage is requeued and resumed from its last checkpoint.",
            rich_help_panel="Slurm",
        ),
    ] = 3,
    requeue_grace: Annotated[
        int,
        typer.Option(
            "--requeue-grace",
            min=10,
            help="Seconds before the time limit at which a job stops its stage and requeues itself.",
            rich_help_panel="Slurm",
        ),
    ] = 120,
    sbatch_args: Annotated[
        list[str] | None,
        typer.Option(
            "--sbatch-arg",
            help="Another #SBATCH line for every job, e.g. --sbatch-arg=--qos=long (repeatable).",
            rich_help_panel="Slurm",
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """Run a recipe: patch the tree, run each stage with live progress, check it, record everything.

    Each stage's output goes to RUN/stages/NAME.log; RUN/record.json holds commands, provenance, metrics and
    verdicts; RUN/report.md the report with accuracy plots. Exit 0 when every stage passes its checks.

    Before the first stage starts, the data each training stage reads is checked (mfnpatch data check):
    a broken dataset, or another MS1M variant than the stage's expected results were measured on, is
    refused with the finding, nothing started. Its fingerprint goes into the record; --resume on changed
    data is refused.

    With --executor slurm each stage becomes a Slurm job in an afterok chain, running the same runner on the
    compute node; a preempted or timed-out stage is requeued and resumes from its last checkpoint. Follow
    it with `mfnpatch recipe status RUN --follow`, stop it with `mfnpatch recipe cancel RUN`.
    """
    from mfnpatch.cluster.executor import SlurmRunner
    from mfnpatch.cluster.slurm import SlurmOptions
    from mfnpatch.recipes.expand import parse_sets
    from mfnpatch.recipes.recipe import load_recipe
    from mfnpatch.runs.execute import Observer
    from mfnpatch.runs.runner import Runner, RunOptions

    CTX.json = as_json
    if executor not in ("local", "slurm"):
        raise UsageError(f"--executor {executor}: use local or slurm")
    if resume is not None and run_dir is not None:
        raise UsageError(
            f"--resume {resume} and --run-dir {run_dir}: --resume continues a run in its own directory",
            hint="give one: --resume RUN to continue a run, --run-dir DIR to start a new one there",
        )
    if executor == "local" and (partition or account or time_limit or gpus_per_node is not None or sbatch_args):
        raise UsageError("--partition, --account, --time, --gpus-per-node and --sbatch-arg need --executor slurm")
    tree = tree if tree is not None else _pin_tree(recipe)
    opts = RunOptions(
        tree=tree, run_dir=run_dir, source=source, resume=resume, from_stage=from_stage, only=only,
        keep_going=keep_going, force=force, env_check=not no_env_check, env_checker=_env_checker(),
        env_prefix=env_prefix, data_check=not no_data_check, data_checker=_data_checker(),
        sentinels=not no_sentinels, fit=fit_request(gpus, fit, gpu_memory),
    )  # fmt: skip
    from mfnpatch.cli.progress import RichObserver

    obs = Observer() if as_json else RichObserver()
    loaded, overrides = load_recipe(recipe), parse_sets(sets or [])
    runner: Runner
    if executor == "slurm":
        sopts = SlurmOptions(
            partition=partition, account=account, time=time_limit, gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task, mem=mem, max_requeues=max_requeues, requeue_grace=requeue_grace,
            sbatch_args=list(sbatch_args or []),
        )  # fmt: skip
        runner = SlurmRunner(loaded, profile, overrides, opts, sopts, obs)
    else:
        runner = Runner(loaded, profile, overrides, opts, obs)
    try:
        run_path, rec = runner.run()
    finally:
        if isinstance(obs, RichObserver):
            obs.close()
    code = rec.exit_code
    if as_json:
        emit_json({"run_dir": str(run_path), "exit_code": code, **rec.to_dict()})
        return code
    if rec.status == "queued":
        jobs = ", ".join(f"{s.name} {s.job.id}" for s in rec.stages if s.job and s.status == "queued")
        out.print(f"[green]QUEUED[/]: {escape(str(run_path))}: {escape(jobs)}")
        out.print(f"follow: mfnpatch recipe status {escape(str(run_path))} --follow")
        out.print(f"cancel: mfnpatch recipe cancel {escape(str(run_path))}")
        return code
    color = "green" if code == 0 else "red"
    out.print(f"[{color}]{rec.status.upper()}[/]: {escape(str(run_path))}")
    out.print(f"report: {escape(str(run_path / 'report.md'))}")
    return code


def _data_checker():
    from mfnpatch.datasets.preflight import check_for_run

    return check_for_run


def _env_checker():
    try:
        from mfnpatch.environments.doctor import recipe_env_check
    except ImportError:
        return None
    return recipe_env_check


@recipe_app.command("status")
def recipe_status(
    run: Annotated[Path, typer.Argument(help="A run directory (runs/...).")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep watching until the run ends (jobs' logs as they grow).")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between looks with --follow.")] = 5.0,
    as_json: JsonOpt = False,
):
    """Show a run: stages, how each ended, checks, metrics — and for a Slurm run each job's state and the
    progress its stage's log shows. Exit 0 while a run is queued, running, passed or incomplete; 130 when it
    was interrupted; 1 when it failed or was cancelled, or its record is stale (it says running, but Slurm
    runs no job of it: see docs/slurm.md)."""
    from mfnpatch.cluster.watch import watch

    CTX.json = as_json
    last = None
    for view in watch(run, follow, interval):
        for n in view.notes:
            err.print(f"[yellow]note[/]: {escape(n)}")
        if as_json:
            continue
        text = _status_text(view.rec, view.rows, view.status)
        if text != last:
            if last is not None:
                out.print(f"[dim]— {time.strftime('%H:%M:%S')}[/]")
            out.print(text, highlight=False)
            last = text
    rec, lost = view.rec, view.lost
    if lost is not None and follow:
        err.print(
            f"[red]stale[/]: no job of this run is queued or running, but the record says {rec.status}"
            + (f"; ended without recording: {', '.join(lost)}" if lost else "")
        )
        err.print(f"[yellow]hint[/]: see RUN/slurm/*.out; continue with: mfnpatch recipe run "
                  f"{rec.recipe.path} --executor slurm --resume {run}")  # fmt: skip
    if view.gone:
        err.print(f"[yellow]hint[/]: continue it with: mfnpatch recipe run {escape(rec.recipe.path)} --resume "
                  f"{escape(str(run))}")  # fmt: skip
    if as_json:
        runner = view.runner.__dict__ if view.runner else None
        emit_json({**rec.to_dict(), "live": view.rows, "seen_status": view.status, "runner": runner})
    return view.exit_code(follow)


def _status_text(rec, rows, status: str | None = None) -> str:
    head = (
        f"[bold]{escape(rec.run_id)}[/]: {escape(status or rec.status)} — {escape(rec.recipe.name)}"
        + (f" profile {escape(rec.recipe.profile)}" if rec.recipe.profile else "")
        + (f", executor {rec.executor.kind}" if rec.executor.kind == "slurm" else "")
        + f", started {rec.started}"
        + (f", finished {rec.finished}" if rec.finished else "")
    )
    lines = [head]
    for r in rows:
        bits = [f"{r['stage']:<9}", f"{r['status']:<11}"]
        live = r["status"] in ("running", "interrupted")
        if r.get("job"):
            bits.append(f"job {r['job']}" + (f" {r['job_state']}" if r.get("job_state") else ""))
        if r.get("requeued"):
            bits.append(f"requeued {r['requeued']}x")
        if r.get("step") is not None and live:
            bits.append(f"step {r['step']}" + (f"/{r['total']}" if r.get("total") else ""))
            if r.get("accuracy"):
                bits.append(" ".join(f"{t} {a:.4f}" for t, a in r["accuracy"].items()))
        if r.get("checks"):
            bits.append(f"checks {r['checks']}")
        if r.get("ended") and r["status"] not in ("running", "queued"):
            bits.append(escape(r["ended"]))
        lines.append("  " + "  ".join(bits))
        for c in r.get("changed", []):
            lines.append(f"    [red]on disk[/]: {escape(c)}")
    for s in rec.stages:
        for name, m in s.metrics.targets.items():
            if s.status == "done":
                lines.append(
                    f"  {s.name} {name}: best {m.best:.5f} at {m.best_step}, last {m.last:.5f} at {m.last_step}"
                )
    return "\n".join(lines)


@recipe_app.command("cancel")
def recipe_cancel(
    run: Annotated[Path, typer.Argument(help="A run directory (runs/...).")],
    as_json: JsonOpt = False,
):
    """Cancel what a run has queued or running: its Slurm jobs (scancel), or the local runner (SIGTERM).
    A running stage is stopped and recorded; exit 2 when nothing was queued or running."""
    from mfnpatch.cluster.executor import cancel_run

    CTX.json = as_json
    r = cancel_run(run)
    if as_json:
        emit_json(r.to_dict())
    else:
        out.print(f"{escape(str(run))}: {escape(r.message)}" + (f" ({', '.join(r.stages)})" if r.stages else ""))
    return r.exit_code


@recipe_app.command("job", hidden=True)
def recipe_job(
    run: Annotated[Path, typer.Argument(help="The run directory.")],
    stage: Annotated[str, typer.Argument(help="The stage this job runs.")],
):
    """What each Slurm job of `recipe run --executor slurm` runs: one stage, with the local runner."""
    from mfnpatch.cli.progress import RichObserver
    from mfnpatch.cluster.executor import run_job

    obs = RichObserver()
    try:
        return run_job(run, stage, obs, _env_checker(), _data_checker())
    finally:
        obs.close()
