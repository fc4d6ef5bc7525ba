"""Fitting a plan to the GPUs at hand (--gpus, --fit, --gpu-memory of recipe plan, run and estimate) and
`recipe estimate`: what a plan costs on this machine, before its first step."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mfnpatch.cli.app import (
    CTX,
    JsonOpt,
    ProfileOpt,
    SetOpt,
    SourceOpt,
    TreeOpt,
    _say,
    emit_json,
    err,
    out,
    recipe_app,
)
from mfnpatch.errors import EXIT_OK, UsageError

GpusOpt = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        help="The GPUs to train on: a count (2) or indices (0,2,3). With --fit total (the default) the seed's total "
        "batch is kept: the per-GPU batch is divided among them.",
    ),
]
FitOpt = Annotated[
    str | None,
    typer.Option(
        "--fit",
        help="total (keep the seed's total batch; default with --gpus), per-gpu (keep the per-GPU batch: steps and "
        "lr scaled to the same samples seen, each change listed), smaller-batch (a smaller total, said so).",
    ),
]
GpuMemoryOpt = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory",
        min=0.5,
        help="GiB per GPU for the memory check (default: nvidia-smi's memory.total of the GPUs named).",
    ),
]


def fit_request(gpus: str | None, fit: str | None, gpu_memory: float | None):
    """--gpus/--fit/--gpu-memory as a FitRequest, the GPUs' memory read from nvidia-smi when not given."""
    from mfnpatch.recipes.expand import FitRequest
    from mfnpatch.recipes.fit import RULES, check_gpu_memory, parse_gpus

    if fit is not None and fit not in RULES:
        raise UsageError(f"--fit {fit}: use total, per-gpu or smaller-batch")
    if gpus is None and fit is None:
        if gpu_memory is not None:
            check_gpu_memory(gpu_memory)
        return None
    ids = parse_gpus(gpus) if gpus is not None else None
    req = FitRequest(rule=fit or "total", gpus=ids)
    if gpu_memory is not None:
        check_gpu_memory(gpu_memory)
        req.memory_mib, req.gpu_name = gpu_memory * 1024, f"the GPU (--gpu-memory {gpu_memory:g})"
        return req
    from mfnpatch.environments.gpu import query_gpus

    report = query_gpus()
    if report.found:
        chosen = [g for g in report.gpus if ids is None or str(g.index) in ids] or report.gpus
        known = [g for g in chosen if g.memory_mib]
        if known:
            small = min(known, key=lambda g: g.memory_mib or 0)
            req.memory_mib, req.gpu_name = float(small.memory_mib or 0), f"GPU {small.index} ({small.name})"
    if req.memory_mib is None:
        why = report.problem or "nvidia-smi gave no memory.total"
        _say(f"the per-GPU batch is not checked against GPU memory ({why}): --gpu-memory GIB checks it")
    return req


def print_fit(f) -> None:
    color = "yellow" if f.differs else "green"
    out.print(f"[{color}]{escape(f.summary())}[/]")
    for c in f.changes:
        mark = "changed from the seed" if f.differs else "set"
        out.print(f"  {mark}: {escape(c.parameter)} {escape(str(c.seed))} -> {escape(str(c.now))} ({escape(c.why)})")
    if f.memory:
        m = f.memory
        out.print(f"  memory: about {m['need_mib'] / 1024:.1f} GiB a GPU of {m['have_mib'] / 1024:.1f} GiB "
                  f"({escape(m['gpu'])})")  # fmt: skip
    if f.differs:
        out.print("  [yellow]the experiment differs from the seed's[/]: its numbers are not the seed's to compare with")


@recipe_app.command("estimate")
def recipe_estimate(
    recipe: Annotated[str, typer.Argument(help="A recipe name (may16) or file.")],
    profile: ProfileOpt = None,
    sets: SetOpt = None,
    gpus: GpusOpt = None,
    fit: FitOpt = None,
    gpu_memory: GpuMemoryOpt = None,
    probe_steps: Annotated[
        int,
        typer.Option("--probe-steps", min=2, help="Steps each training stage is run for (a verification at half)."),
    ] = 100,
    price: Annotated[
        float | None, typer.Option("--price", min=0, help="Price of one GPU hour: the plan's cost beside its hours.")
    ] = None,
    warm: Annotated[
        bool,
        typer.Option("--warm/--no-warm", help="Run each probe again with its data in the page cache (data loading)."),
    ] = True,
    budget: Annotated[
        float,
        typer.Option("--budget", min=5, help="Seconds one probe may run at most (what it measured by then is used)."),
    ] = 120.0,
    tree: TreeOpt = None,
    source: SourceOpt = None,
    env_prefix: Annotated[
        Path | None, typer.Option("--env-prefix", help="The environment the stages run in (as recipe run).")
    ] = None,
    as_json: JsonOpt = False,
):
    """Hours (and cost) of a plan on this machine, before its first step.

    Each training stage runs for --probe-steps steps in a throwaway directory (from scratch, its own prefix):
    samples/s from the Speedometer, the time of a verification round and of the start, and with --warm the same
    probe with its data in the page cache (what reading the data costs). Hours per stage = start + planned steps
    x total batch / samples/s + verification rounds x their time; the seed's P40 speed beside them. recipe run
    shows the last estimate of the same plan on this machine as its ETA.

    How long: a probe runs at most its stage's own steps and at most --budget seconds (default 120), twice
    with --warm (not for a stage shorter than four probes): a few minutes for may16; it says when running the plan
    would cost less than estimating it (the smoke profile's stages are that short).

    Example: mfnpatch recipe estimate may16 --gpus 2 --price 2.5
    """
    from mfnpatch.recipes.expand import parse_sets
    from mfnpatch.recipes.recipe import load_recipe
    from mfnpatch.runs.estimate import Estimator, table
    from mfnpatch.runs.runner import RunOptions

    CTX.json = as_json
    tree = tree if tree is not None else _pin_tree(recipe)
    opts = RunOptions(tree=tree, source=source, env_prefix=env_prefix, fit=fit_request(gpus, fit, gpu_memory),
                      env_check=False, data_check=False)  # fmt: skip
    est = Estimator(load_recipe(recipe), profile, parse_sets(sets or []), opts)
    est.budget = budget
    res = est.estimate(
        probe_steps, warm, price, say=(lambda t: None) if as_json else (lambda t: err.print(f"[dim]{escape(t)}[/]"))
    )
    if as_json:
        emit_json(res.to_dict())
        return EXIT_OK
    for line in table(res):
        out.print(escape(line))
    for s in res.stages:
        if s.note:
            out.print(f"  {escape(s.stage)}: {escape(s.note)}")
    out.print(f"estimating took {res.probe_seconds:.0f} s")
    if res.note:
        out.print(f"[yellow]note[/]: {escape(res.note)}")
    if res.seed_reference:
        ref = res.seed_reference
        out.print(f"seed P40: {escape(ref['device'])} at total batch {ref['total_batch']} ({escape(ref['source'])})")
    out.print(f"saved as this plan's estimate on this machine: recipe run shows it as its ETA (key {res.key})")
    return EXIT_OK


def _pin_tree(recipe: str) -> Path:
    """The tree a recipe's pin uses by default (one per pin: two lineages' recipes never share one)."""
    from mfnpatch.recipes.recipe import load_recipe
    from mfnpatch.source.pin import default_dest

    return default_dest(load_recipe(recipe).recipe.pin)
