"""The command line: parses arguments, calls the core, renders with rich or --json, maps errors to exit codes.

No logic lives here beyond choosing what to show.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mfnpatch import __version__
from mfnpatch.errors import (
    EXIT_INTERRUPTED,
    EXIT_NOTHING_TO_DO,
    EXIT_OK,
    EXIT_USAGE,
    MfnError,
    UsageError,
    from_os_error,
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _Ctx:
    debug = False
    json = False


CTX = _Ctx()

HELP = """\
Reproduce MobileFaceNet on a pinned, patched InsightFace — each step one checked command.

\b
Start here:
  mfnpatch apply --commit 4bc8132                 fetch the pin, apply the recipe's patch set
  mfnpatch apply --commit 4bc8132 --series mfn,py3 --source ~/src/insightface
  mfnpatch status                                 what is applied, and what drifted
  mfnpatch recipe run may16 --profile smoke       the whole plan on the CPU, in minutes
  mfnpatch recipe plan may16                      the exact commands of the seed's final plan
  mfnpatch log summary train.log                  what a training log says
  mfnpatch verify --log train.log --reference seed-2018-05-09-arcface-test2
  mfnpatch env check cu101                        the doctor: can this machine run that environment
  mfnpatch convert ncnn PREFIX,EPOCH -o out --verify   a checkpoint to ncnn, checked against MXNet

\b
Exit codes: 0 done, 1 failed, 2 nothing to do (already so), 64 bad usage, 130 interrupted.
"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
patches_app = typer.Typer(help="List, show and lock the versioned patch sets.", no_args_is_help=True)
pin_app = typer.Typer(help="The pinned upstream commits (list; record a new pin).", no_args_is_help=True)
log_app = typer.Typer(help="Read training logs: summary and plots.", no_args_is_help=True)
recipe_app = typer.Typer(
    help="Dated training plans from the seed: list, show, plan (print exact commands), run, status.",
    no_args_is_help=True,
)
app.add_typer(recipe_app, name="recipe")
env_app = typer.Typer(
    help="Locked environments (cpu, cu101, cu112) and a doctor for this machine.", no_args_is_help=True
)
app.add_typer(env_app, name="env")
convert_app = typer.Typer(
    help="Slim a checkpoint, convert it to ncnn (BatchNorm folded and unfolded), verify the conversion.",
    no_args_is_help=True,
)
app.add_typer(convert_app, name="convert")
data_app = typer.Typer(help="Datasets in the format the pinned code reads.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(patches_app, name="patches")
app.add_typer(pin_app, name="pin")
app.add_typer(log_app, name="log")


def _version(value: bool):
    if value:
        out.print(f"mfnpatch {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and git's own output on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    CTX.debug = debug or bool(os.environ.get("MFNPATCH_DEBUG"))


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]
DestOpt = Annotated[
    Path,
    typer.Option("--dest", "-d", help="The InsightFace tree (created if absent).", show_default=True),
]
DEFAULT_DEST = Path("insightface")
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="A profile of the recipe (seed, smoke ...).")]
DEFAULT_SERIES = "mfn"


# --------------------------------------------------------------------------------------------
# apply / unapply / status / diff


@app.command()
def apply(
    commit: Annotated[str, typer.Option("--commit", "-c", help="A pinned commit, or an unambiguous prefix of one.")],
    series: Annotated[
        str | None,
        typer.Option(
            "--series",
            "-s",
            help="Patch sets to apply, comma separated, each optionally @version: mfn,py3 or mfn@1. "
            "Default: the sets the tree already has, else mfn.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Where to fetch the commit: a local clone, a bare mirror or a git URL. "
            "Default: $MFNPATCH_UPSTREAM, else the pin's GitHub URL.",
        ),
    ] = None,
    dest: DestOpt = DEFAULT_DEST,
    fuzz: Annotated[
        int, typer.Option("--fuzz", min=0, max=3, help="Accept hunks whose outer N context lines differ (recorded).")
    ] = 0,
    force: Annotated[
        bool,
        typer.Option("--force", help="Reset files changed outside mfnpatch (saved under .mfnpatch/saved/) and apply."),
    ] = False,
    check: Annotated[bool, typer.Option("--check", help="Check that the series applies; write nothing.")] = False,
    as_json: JsonOpt = False,
):
    """Fetch a pinned InsightFace commit (verified by hash) and apply patch sets, all or nothing.

    Only that one commit is fetched (depth 1) into a cache, so a second apply needs no network.
    Applying again is a no-op (exit 2); a tree changed outside mfnpatch is refused unless --force.
    """
    from mfnpatch.resources import data_dir
    from mfnpatch.source.patchset import Catalog, select_sets
    from mfnpatch.source.pin import resolve_pin
    from mfnpatch.source.tree import prepare_tree, tree_lock
    from mfnpatch.source.worktree import apply as do_apply

    CTX.json = as_json
    resolve_pin(commit)  # a wrong --commit is reported before anything else
    catalog = Catalog.scan(data_dir("patches"))
    sets = select_sets(catalog, series) if series else None  # bad --series fails before any fetch
    if check and not Path(dest).exists():
        return _check_without_tree(commit, dest, source, catalog, sets, fuzz, as_json)
    with tree_lock(dest, on_wait=_say):
        if as_json:
            prepared = prepare_tree(commit, dest, source)
        else:
            with err.status(f"fetching {commit} …") as st:
                prepared = prepare_tree(
                    commit, dest, source, on_progress=lambda line: st.update(f"fetching {commit}: {line}")
                )
        tree = prepared.tree
        _said_recovered(tree)
        if sets is None:
            state = tree.load_state()
            sets = select_sets(catalog, ",".join(state.labels()) if state else DEFAULT_SERIES)
        outcome = do_apply(tree, sets, fuzz=fuzz, force=force, check=check, source=prepared.source)
    code = EXIT_NOTHING_TO_DO if outcome.action in ("nothing", "adopted") else EXIT_OK
    if as_json:
        emit_json(
            {
                "action": outcome.action,
                "tree": str(tree.root),
                "created": prepared.created,
                "fetch": None
                if prepared.fetch is None
                else {
                    "url": prepared.fetch.url,
                    "from_cache": prepared.fetch.from_cache,
                    "seconds": round(prepared.fetch.seconds, 3),
                    "note": prepared.fetch.note,
                },
                "pin": {"commit": tree.pin.commit, "tree": tree.pin.manifest.tree},
                "sets": outcome.sets,
                "previous": outcome.previous,
                "changed": outcome.changed,
                "fuzz": outcome.fuzz,
                "moved_hunks": [h.__dict__ for h in outcome.moved],
                "saved": str(outcome.saved) if outcome.saved else None,
                "exit_code": code,
            }
        )
        return code
    pin = tree.pin
    if prepared.fetch is not None:
        f = prepared.fetch
        if f.note:
            _say(f.note)
        how = "from the cache" if f.from_cache else f"from {f.url} in {f.seconds:.1f} s"
        out.print(f"fetched {pin.short} {escape(how)}; verified commit and tree {pin.manifest.tree[:12]}")
    if prepared.created:
        out.print(f"created {escape(str(tree.root))} at {escape(pin.describe())}")
    for h in outcome.moved:
        how = ", ".join(([f"offset {h.offset:+d}"] if h.offset else []) + ([f"fuzz {h.fuzz}"] if h.fuzz else []))
        out.print(
            f"[yellow]note[/]: {escape(h.patch)}: {escape(h.path)} hunk #{h.hunk} applied at line {h.applied_line} "
            f"({how})"
        )
    for n in outcome.notes:
        out.print(f"[yellow]note[/]: {escape(n)}")
    labels = ", ".join(outcome.sets)
    if outcome.action == "nothing":
        out.print(f"already applied: {labels} at {pin.short} in {escape(str(tree.root))} (nothing to do)")
    elif outcome.action == "adopted":
        out.print(f"already applied: {labels} at {pin.short}; recorded in {escape(str(tree.root))}/.mfnpatch")
    elif outcome.action == "checked":
        out.print(f"check: {labels} apply cleanly to {pin.short}; {len(outcome.changed)} file(s) would change")
    else:
        if outcome.saved:
            out.print(f"[yellow]saved[/] files changed outside mfnpatch to {escape(str(outcome.saved))}")
        verb = "switched to" if outcome.action == "switched" else "applied"
        was = f" (was {', '.join(outcome.previous)})" if outcome.previous else ""
        out.print(
            f"[green]{verb}[/] {labels}{escape(was)} at {pin.short}: {len(outcome.changed)} file(s) changed"
            f"{'' if not fuzz else f', fuzz {fuzz}'}"
        )
        for p in outcome.changed:
            out.print(f"  {escape(p)}")
        out.print(f"next: mfnpatch status --dest {escape(str(dest))}")
    return code


def _say(text: str) -> None:
    err.print(f"[yellow]note[/]: {escape(text)}")


def _said_recovered(tree) -> None:
    if tree.recovered:
        _say(f"{tree.root}: {tree.recovered}")


@contextmanager
def _open(dest: Path):
    """An existing tree, under its lock, rolled back first if a write phase was interrupted (and said)."""
    from mfnpatch.source.tree import open_existing, tree_lock

    if not Path(dest).exists():
        raise MfnError(
            f"{dest}: no such tree", hint="create one with: mfnpatch apply --commit 4bc8132 --dest " + str(dest)
        )
    with tree_lock(dest, on_wait=_say):
        tree = open_existing(dest)
        _said_recovered(tree)
        yield tree


def _check_without_tree(commit, dest, source, catalog, sets, fuzz, as_json) -> int:
    """apply --check where no tree exists yet: the series is applied in memory to the pinned files (from the
    cache, fetched into it if needed); no tree is created and nothing is written outside the cache."""
    from mfnpatch.source.patchset import apply_series, select_sets, series_paths
    from mfnpatch.source.pin import Cache, pristine_blob, resolve_pin, resolve_source

    pin = resolve_pin(commit)
    sets = sets or select_sets(catalog, DEFAULT_SERIES)
    cache = Cache()
    url, _ = resolve_source(source, pin)
    fetched = cache.fetch(pin, url)
    repo = cache.repo()
    paths = series_paths(sets)
    result = apply_series(sets, {p: pristine_blob(repo, pin, p) for p in paths}, fuzz=fuzz)
    changed = sorted(p for p in paths if result.files.get(p) is not None)
    labels = [s.label for s in sets]
    if as_json:
        emit_json({"action": "checked", "tree": str(Path(dest).absolute()), "created": False, "sets": labels,
                   "changed": changed, "from_cache": fetched.from_cache, "exit_code": EXIT_OK})  # fmt: skip
        return EXIT_OK
    out.print(
        f"check: {', '.join(labels)} apply cleanly to {pin.short}; {len(changed)} file(s) would change "
        f"({escape(str(dest))} does not exist and was not created)"
    )
    return EXIT_OK


@app.command()
def unapply(
    dest: DestOpt = DEFAULT_DEST,
    force: Annotated[
        bool, typer.Option("--force", help="Discard edits to patched files (saved under .mfnpatch/saved/ first).")
    ] = False,
    as_json: JsonOpt = False,
):
    """Restore every patched file to the pinned content, byte for byte."""
    from mfnpatch.source.worktree import unapply as do_unapply

    CTX.json = as_json
    with _open(dest) as tree:
        o = do_unapply(tree, force=force)
    code = EXIT_NOTHING_TO_DO if o.action == "nothing" else EXIT_OK
    if as_json:
        emit_json(
            {
                "action": o.action,
                "tree": str(o.tree),
                "removed": o.previous,
                "restored": o.restored,
                "saved": str(o.saved) if o.saved else None,
                "exit_code": code,
            }
        )
        return code
    if o.action == "nothing":
        out.print(f"no patches applied in {escape(str(o.tree))} (nothing to do)")
        return code
    if o.saved:
        out.print(f"[yellow]saved[/] edited files to {escape(str(o.saved))}")
    out.print(
        f"[green]unapplied[/] {', '.join(o.previous)}: restored {len(o.restored)} file(s) to {o.pin.short}, verified"
    )
    return code


@app.command()
def status(dest: DestOpt = DEFAULT_DEST, as_json: JsonOpt = False):
    """Show the pin, applied sets and patches, and drift. Exit 1 when files changed outside mfnpatch."""
    from mfnpatch.source.worktree import status as do_status

    CTX.json = as_json
    with _open(dest) as tree:
        st = do_status(tree)
    code = EXIT_OK if st.clean else 1
    if as_json:
        emit_json(st.to_dict() | {"exit_code": code})
        return code
    out.print(f"tree     {escape(str(st.tree))}")
    out.print(f"pin      {escape(st.pin.describe())}, tree {st.pin.manifest.tree[:12]} verified")
    if st.state is None:
        out.print("applied  nothing (the pinned tree)")
    else:
        fz = f", fuzz {st.state.fuzz}" if st.state.fuzz else ""
        out.print(f"applied  {', '.join(st.state.labels())}{fz} at {st.state.applied_at}")
        notes = {
            p.name + p.set: "; ".join(
                f"{h.path} #{h.hunk} offset {h.offset:+d}" + (f" fuzz {h.fuzz}" if h.fuzz else "")
                for h in p.hunks
                if h.offset or h.fuzz
            )
            for p in st.state.patches
        }
        t = Table(show_edge=False, box=None, pad_edge=False)
        t.add_column("patch")
        t.add_column("hunks", justify="right")
        if any(notes.values()):
            t.add_column("where hunks landed")
        for p in st.state.patches:
            row = [escape(f"{p.set}/{p.name}"), str(len(p.hunks))]
            t.add_row(*row, *([escape(notes[p.name + p.set])] if any(notes.values()) else []))
        out.print(t)
        t = Table(show_edge=False, box=None, pad_edge=False)
        t.add_column("file")
        t.add_column("state")
        for f in st.files:
            color = {"drifted": "red", "missing": "red"}.get(f.state, "green")
            t.add_row(escape(f.path), f"[{color}]{f.state}[/]")
        out.print(t)
    if st.other_changes:
        out.print(f"other changes ({len(st.other_changes)}, not made by mfnpatch):")
        for c in st.other_changes[:20]:
            out.print(f"  {escape(c)}")
    if not st.clean:
        err.print(
            f"[red]drift[/]: {', '.join(st.drifted)} changed outside mfnpatch; "
            "hint: mfnpatch diff shows them; mfnpatch apply --force resets them (saving a copy)"
        )
    return code


@app.command()
def diff(dest: DestOpt = DEFAULT_DEST):
    """Print what the applied patches changed (pin -> tree) as a unified diff."""
    from mfnpatch.source.worktree import diff as do_diff

    with _open(dest) as tree:
        text = do_diff(tree)
    if not text:
        err.print(f"no patches applied in {escape(str(tree.root))} (nothing to show)")
        return EXIT_NOTHING_TO_DO
    sys.stdout.write(text)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# patches


@patches_app.command("list")
def patches_list(as_json: JsonOpt = False):
    """Show the patch sets, their versions and patches."""
    from mfnpatch.resources import data_dir
    from mfnpatch.source.patchset import Catalog

    CTX.json = as_json
    cat = Catalog.scan(data_dir("patches"))
    rows = []
    for name, versions in cat.versions.items():
        for v in versions:
            s = cat.load(name, v)
            rows.append(
                {
                    "set": s.label,
                    "name": s.name,
                    "version": s.version,
                    "latest": v == versions[-1],
                    "applies_to": s.manifest.applies_to,
                    "opt_in": s.manifest.opt_in,
                    "after": s.manifest.after,
                    "sha256": s.sha256,
                    "description": s.manifest.description,
                    "patches": [
                        {"name": p.name, "description": p.header.description.splitlines()[0], "files": p.paths}
                        for p in s.patches
                    ],
                }
            )
    if as_json:
        emit_json(rows)
        return EXIT_OK
    for r in rows:
        tags = []
        if r["latest"]:
            tags.append("latest")
        if r["opt_in"]:
            tags.append("opt-in")
        out.print(
            f"[bold]{r['set']}[/] {'(' + ', '.join(tags) + ')' if tags else ''} for {r['applies_to'][:7]}  "
            f"sha256 {r['sha256'][:12]}"
        )
        out.print(f"  {escape(r['description'])}")
        for p in r["patches"]:
            out.print(f"  {escape(p['name']):40s} {escape(p['description'])}")
    return EXIT_OK


@patches_app.command("show")
def patches_show(
    spec: Annotated[str, typer.Argument(help="A set, optionally @version: mfn or mfn@1.")],
    as_json: JsonOpt = False,
):
    """Print a set's patches with their DEP-3 headers and the files and hunks they touch."""
    from mfnpatch.resources import data_dir
    from mfnpatch.source.patchset import Catalog, parse_selection

    CTX.json = as_json
    (name, version), *rest = parse_selection(spec)
    if rest:
        raise MfnError("patches show takes one set", hint="e.g. mfnpatch patches show mfn")
    s = Catalog.scan(data_dir("patches")).load(name, version)
    if as_json:
        emit_json(
            {
                "set": s.label,
                "sha256": s.sha256,
                "manifest": s.manifest.model_dump(by_alias=True),
                "patches": [
                    {
                        "name": p.name,
                        "sha256": p.sha256,
                        "header": p.header.fields,
                        "files": [{"path": f.path, "hunks": [h.header for h in f.hunks]} for f in p.files],
                    }
                    for p in s.patches
                ],
            }
        )
        return EXIT_OK
    out.print(f"[bold]{s.label}[/] for {s.manifest.applies_to}  ({escape(str(s.directory))})")
    out.print(escape(s.manifest.description))
    for p in s.patches:
        out.print()
        out.print(f"[bold]{escape(p.name)}[/]  sha256 {p.sha256[:12]}")
        for k, v in p.header.fields.items():
            out.print(f"  {k}: {escape(v)}".replace("\n", "\n    "))
        for f in p.files:
            out.print(f"  {escape(f.path)}: " + ", ".join(h.header for h in f.hunks))
    return EXIT_OK


@patches_app.command("lock")
def patches_lock(
    directory: Annotated[Path, typer.Argument(help="A set version directory, e.g. patches/mfn/2.")],
):
    """(Maintainers) Write SHA256SUMS for a new set version after validating it."""
    from mfnpatch.fsutil import atomic_write
    from mfnpatch.source.patchset import SERIES_FILE, SUMS_FILE, load_set, parse_series, sums_text

    s = load_set(directory, check_sums=False)
    names = parse_series(Path(directory) / SERIES_FILE, s.label)
    atomic_write(Path(directory) / SUMS_FILE, sums_text(Path(directory), names))
    out.print(f"wrote {escape(str(Path(directory) / SUMS_FILE))} for {s.label} ({len(names)} patches)")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# pin


@pin_app.command("list")
def pin_list(as_json: JsonOpt = False):
    """Show the pinned upstream commits."""
    from mfnpatch.source.pin import load_pins

    CTX.json = as_json
    pins = load_pins()
    if as_json:
        emit_json(
            [
                {
                    "commit": p.commit,
                    "date": p.manifest.date,
                    "subject": p.manifest.subject,
                    "tree": p.manifest.tree,
                    "upstream": p.manifest.upstream,
                    "files": len(p.manifest.files),
                    "manifest": str(p.path),
                }
                for p in pins
            ]
        )
        return EXIT_OK
    for p in pins:
        out.print(
            f"{p.short}  {p.manifest.date[:10]}  {escape(p.manifest.subject)!s:12s} tree {p.manifest.tree[:12]}  "
            f"{len(p.manifest.files)} files  {escape(p.manifest.upstream)}"
        )
    return EXIT_OK


@pin_app.command("record")
def pin_record(
    source: Annotated[str, typer.Option("--source", help="A clone, mirror or URL that has the commit.")],
    commit: Annotated[str, typer.Option("--commit", help="The full 40-digit commit SHA to pin.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Manifest to write (YAML).")],
    upstream: Annotated[
        str, typer.Option("--upstream", help="The public URL to record.")
    ] = "https://github.com/deepinsight/insightface.git",
    name: Annotated[str, typer.Option("--name")] = "insightface",
):
    """(Maintainers) Fetch a commit and write its pin manifest (tree id, blob id and sha256 of every file)."""
    from mfnpatch.fsutil import atomic_write
    from mfnpatch.source.pin import manifest_yaml, record_pin

    m = record_pin(commit, source, name, upstream)
    atomic_write(output, manifest_yaml(m))
    out.print(f"wrote {escape(str(output))}: {m.commit[:7]} tree {m.tree[:12]}, {len(m.files)} files")
    return EXIT_OK


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
    from mfnpatch.logs.parser import summarize
    from mfnpatch.logs.verdicts import resolve_reference
    from mfnpatch.runs.report import plot_curves

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
    from mfnpatch.logs.verdicts import verify as do_verify
    from mfnpatch.resources import data_dir
    from mfnpatch.runs.report import verification_markdown, write_markdown
    from mfnpatch.source.patchset import Catalog, select_sets

    CTX.json = as_json
    _check_tolerance(tolerance)
    sets = select_sets(Catalog.scan(data_dir("patches")), patches) if patches else None
    v = do_verify(
        log, reference, tolerance=tolerance, sets=sets, checkpoint=checkpoint, recipe=recipe, profile=profile,
        stage=stage, start_step=start_step,
    )  # fmt: skip
    code = EXIT_OK if v.passed else 1
    if markdown:
        write_markdown(markdown, verification_markdown(v))
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
    for col in ("check", "verdict", "found", "at step", "expected"):
        t.add_column(col)
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
        if "above the band" in c.message:
            out.print(f"[cyan]note[/]: {escape(c.message)}")
    for f in v.findings:
        out.print(f"[dim]finding[/]: {escape(f)}")
    if v.passed:
        out.print(f"[green]PASS[/]: {v.count('pass')} checks passed")
    else:
        bad = v.failures()
        word = "FAIL" if v.verdict == "fail" else "UNMEASURED"
        err.print(
            f"[red]{word}[/]: {len(bad)} required check(s) did not pass"
            if bad
            else f"[red]{word}[/]: no required check"
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
    code = EXIT_OK if c.identical else 1
    if as_json:
        emit_json(c.to_dict() | {"plot": str(png) if png else None, "exit_code": code})
        return code
    out.print(f"A: {escape(c.a)}\nB: {escape(c.b)}")
    t = Table(show_edge=False, box=None, pad_edge=False)
    for col in ("stage", "what", "", "A", "B", "difference"):
        t.add_column(col)
    for r in c.rows:
        mark = "[green]=[/]" if r.same else ("[dim]~[/]" if r.what == "context" else "[red]≠[/]")
        if r.what == "verification":
            va = "–" if r.a is None else f"{r.a:.5f}"
            vb = "–" if r.b is None else f"{r.b:.5f}"
            diff = "" if r.diff is None else f"{r.diff:+.5f}"
        elif r.what == "checkpoint":
            va, vb, diff = str(r.a or "–")[:12], str(r.b or "–")[:12], ""
        else:
            va, vb, diff = _compare_cell(r.a), _compare_cell(r.b), r.note
        t.add_row(escape(r.stage), f"{mark} {r.what}", escape(r.key), escape(va), escape(vb), escape(diff))
    out.print(t)
    for n in c.notes:
        out.print(f"[dim]note[/]: {escape(n)}")
    if png:
        out.print(f"plot: {escape(str(png))}")
    if c.identical:
        n = sum(1 for r in c.rows if r.what == "verification")
        k = sum(1 for r in c.rows if r.what == "checkpoint")
        out.print(f"[green]IDENTICAL[/]: {n} verification values and {k} checkpoint files equal")
    else:
        err.print(f"[red]DIFFERENT[/]: {len(c.differences)} difference(s); the first: {escape(c.first_difference())}")
    return code


def _compare_cell(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 48 else text[:45] + "..."


def _check_tolerance(tolerance: float | None) -> None:
    import math

    if tolerance is not None and (not math.isfinite(tolerance) or tolerance < 0):
        raise UsageError(
            f"--tolerance {tolerance}: must be a finite number >= 0", hint="e.g. --tolerance 0.002 (accuracy)"
        )


# --------------------------------------------------------------------------------------------
# recipe

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a parameter, KEY=VALUE (repeatable); seed=N sets the run seed (default 0), "
        "seed=none runs unseeded.",
        metavar="KEY=VALUE",
    ),
]


@recipe_app.command("list")
def recipe_list(as_json: JsonOpt = False):
    """The bundled recipes, one per dated version of the seed's plan."""
    from mfnpatch.runs.recipe import list_recipes

    CTX.json = as_json
    rows = []
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
    from mfnpatch.runs.recipe import find_recipe, load_recipe

    load_recipe(recipe)  # validate first: a bad recipe is an error, not a listing
    sys.stdout.write(find_recipe(recipe).read_text())
    return EXIT_OK


@recipe_app.command("plan")
def recipe_plan(
    recipe: Annotated[str, typer.Argument(help="A recipe name (may16) or file.")],
    profile: ProfileOpt = None,
    sets: SetOpt = None,
    as_json: JsonOpt = False,
):
    """Print each stage's exact command, cwd, env, inputs and stop point, without running anything."""
    from mfnpatch.runs.recipe import expand, load_recipe, parse_sets, seed_tokens

    CTX.json = as_json
    plan = expand(load_recipe(recipe), profile, parse_sets(sets or []))
    if as_json:
        emit_json(plan.to_dict())
        return EXIT_OK
    r = plan.recipe
    out.print(
        f"[bold]{r.name}[/] ({escape(r.title)}), seed update {r.seed_update}"
        + (f", profile [bold]{profile}[/]" if profile else "")
    )
    out.print(f"pin {r.pin}, patch sets {plan.patches}, environment {plan.environment}")
    from mfnpatch.runs.determinism import describe

    out.print(f"determinism: {escape(describe(plan.seed)['how'])}")
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
            from mfnpatch.runs.runner import total_steps

            steps = total_steps(s)
            out.print(
                f"  stop  at {s.stop[0]} {s.stop[1]}"
                + (f" (step {steps})" if s.stop[0] == "checkpoint" else "")
                + f": {escape(s.stop_why)}"
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
        from mfnpatch.logs.verdicts import _from_expected, load_expected, seed_rule

        rule = seed_rule(_from_expected(e.from_, load_expected()), e.tolerance, e.from_)[3]
        return f"{e.metric} {e.at}: {rule}"
    tol_text = f" ± {e.tolerance}" if e.tolerance is not None else ""
    return f"{e.metric} {e.at} {e.op} {e.value}{tol_text}"


class RichObserver:
    """Live progress for recipe runs: a bar per training stage with step, lr, accuracy, samples/s, ETA."""

    def __init__(self):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        # Live bars on a terminal; elsewhere (CI logs, pipes) one plain line per verification round.
        self.live = err.is_terminal
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.fields[stage]}"), BarColumn(),
            TextColumn("{task.fields[steps]}"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=err, transient=False,
        )  # fmt: skip
        self.task = None

    def run_started(self, run_dir, plan):
        err.print(
            f"run {escape(str(run_dir))}: {plan.recipe.name}" + (f" profile {plan.profile}" if plan.profile else "")
        )
        if self.live:
            self.progress.start()

    def stage_started(self, ps, total):
        if not self.live:
            err.print(f"start {ps.name}: {escape(ps.title)}" + (f" ({total} steps)" if total else ""))
            return
        self.task = self.progress.add_task("", total=total, stage=ps.name, steps="", info=escape(ps.title))

    def stage_event(self, ps, ev, live):
        from mfnpatch.logs.parser import Highest

        if not self.live:
            if isinstance(ev, Highest):  # the pinned code prints it once per verification round, after all targets
                accs = " ".join(f"{k} {v:.4f}" for k, v in live.accuracy.items())
                tot = f"/{live.total}" if live.total else ""
                err.print(
                    f"  {ps.name} step {live.step}{tot}: {accs}" + (f", lr {live.lr:g}" if live.lr is not None else "")
                )
            return
        if self.task is None:
            return
        info = []
        if live.lr is not None:
            info.append(f"lr {live.lr:g}")
        if live.accuracy:
            info.append(" ".join(f"{k} {v:.4f}" for k, v in live.accuracy.items()))
        if live.samples_per_sec:
            info.append(f"{live.samples_per_sec:g} samples/s")
        steps = f"{live.step or 0}/{live.total}" if live.total else f"{live.step or 0}"
        self.progress.update(self.task, completed=live.step or 0, steps=steps, info=escape("  ".join(info)))

    def stage_output(self, ps, text):
        last = [ln for ln in text.splitlines() if ln.strip()]
        if self.task is not None and last:
            self.progress.update(self.task, info=escape(last[-1][-80:]))

    def stage_finished(self, ps, rec):
        if self.task is not None:
            self.progress.update(self.task, visible=True)
            self.progress.stop_task(self.task)
            self.task = None
        color = {"done": "green" if rec.passed is not False else "red", "skipped": "dim"}.get(rec.status, "red")
        what = rec.ended or rec.skipped or ""
        verdict = "" if rec.passed is None else (" — checks pass" if rec.passed else " — [red]checks FAIL[/]")
        self.progress.console.print(f"[{color}]{rec.status}[/] {ps.name}: {escape(what)}{verdict}")
        for c in rec.checks:
            if c["required"] and c["verdict"] != "pass":
                self.progress.console.print(f"    {c['verdict']}: {escape(c['message'])}")

    def stage_reused(self, ps, rec):
        self.progress.console.print(f"[dim]reused[/] {ps.name}: completed earlier with the same provenance")

    def note(self, text):
        err.print(f"[dim]{escape(text)}[/]")

    def close(self):
        if self.live:
            self.progress.stop()


@recipe_app.command("run")
def recipe_run(
    recipe: Annotated[str, typer.Argument(help="A recipe name (may16) or file.")],
    profile: ProfileOpt = None,
    sets: SetOpt = None,
    tree: Annotated[Path, typer.Option("--tree", help="The patched InsightFace tree (made if absent).")] = DEFAULT_DEST,
    source: Annotated[str | None, typer.Option("--source", help="Where to fetch the pin (see apply).")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default runs/NAME-TIME).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue this run directory.")] = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="Start at this stage.")] = None,
    only: Annotated[str | None, typer.Option("--only", help="Run only this stage.")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Continue after a failed stage.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --resume: redo stages whose provenance changed.")
    ] = False,
    no_env_check: Annotated[bool, typer.Option("--no-env-check", help="Skip the environment check.")] = False,
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

    With --executor slurm each stage becomes a Slurm job in an afterok chain, running the same runner on the
    compute node; a preempted or timed-out stage is requeued and resumes from its last checkpoint. Follow
    it with `mfnpatch recipe status RUN --follow`, stop it with `mfnpatch recipe cancel RUN`.
    """
    from mfnpatch.cluster.slurm import SlurmOptions
    from mfnpatch.runs.recipe import parse_sets
    from mfnpatch.runs.runner import Observer, RunOptions, run_recipe

    CTX.json = as_json
    sopts = SlurmOptions(
        partition=partition, account=account, time=time_limit, gpus_per_node=gpus_per_node,
        cpus_per_task=cpus_per_task, mem=mem, max_requeues=max_requeues, requeue_grace=requeue_grace,
        sbatch_args=list(sbatch_args or []),
    )  # fmt: skip
    if executor not in ("local", "slurm"):
        raise UsageError(f"--executor {executor}: use local or slurm")
    if resume is not None and run_dir is not None:
        raise UsageError(
            f"--resume {resume} and --run-dir {run_dir}: --resume continues a run in its own directory",
            hint="give one: --resume RUN to continue a run, --run-dir DIR to start a new one there",
        )
    if executor == "local" and (partition or account or time_limit or gpus_per_node is not None or sbatch_args):
        raise UsageError("--partition, --account, --time, --gpus-per-node and --sbatch-arg need --executor slurm")
    opts = RunOptions(
        tree=tree,
        run_dir=run_dir,
        source=source,
        resume=resume,
        from_stage=from_stage,
        only=only,
        keep_going=keep_going,
        force=force,
        env_check=not no_env_check,
        env_checker=_env_checker(),
        env_prefix=env_prefix,
        executor=executor,  # type: ignore[arg-type]
        slurm=sopts if executor == "slurm" else None,
    )
    obs = Observer() if as_json else RichObserver()
    try:
        run_path, rec = run_recipe(recipe, profile, parse_sets(sets or []), opts, obs)
    finally:
        if isinstance(obs, RichObserver):
            obs.close()
    code = EXIT_OK if rec.status in ("passed", "incomplete", "queued") else 1
    if as_json:
        emit_json({"run_dir": str(run_path), "exit_code": code, **rec.model_dump(by_alias=True)})
        return code
    if rec.status == "queued":
        jobs = ", ".join(f"{s.name} {s.job['id']}" for s in rec.stages if s.job and s.status == "queued")
        out.print(f"[green]QUEUED[/]: {escape(str(run_path))}: {escape(jobs)}")
        out.print(f"follow: mfnpatch recipe status {escape(str(run_path))} --follow")
        out.print(f"cancel: mfnpatch recipe cancel {escape(str(run_path))}")
        return code
    color = "green" if code == 0 else "red"
    out.print(f"[{color}]{rec.status.upper()}[/]: {escape(str(run_path))}")
    out.print(f"report: {escape(str(run_path / 'report.md'))}")
    return code


def _env_checker():
    try:
        from mfnpatch.environments.env import recipe_env_check
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
    progress its stage's log shows. Exit 0 while a run is queued, running, passed or incomplete; 1 when it
    failed, was cancelled or interrupted, or its record is stale (it says running, but Slurm runs no job
    of it: see docs/slurm.md)."""
    from mfnpatch.cluster.slurm import ACTIVE_JOB_STATES, SlurmError, job_states
    from mfnpatch.runs.runner import live_rows, load_record

    CTX.json = as_json

    def look():
        rec = load_record(run)
        states = {}
        ids = [s.job["id"] for s in rec.stages if s.job]
        if ids and rec.executor.get("kind") == "slurm":
            try:
                states = job_states(ids)
            except SlurmError as e:
                states = {}
                err.print(f"[yellow]note[/]: {escape(e.message)}")
        return rec, live_rows(run, rec, states)

    def done(rec, rows) -> bool:
        queued = any(r.get("job_state", "").split(" ")[0] in ACTIVE_JOB_STATES for r in rows)
        if rec.status in ("passed", "failed", "cancelled", "incomplete", "interrupted"):
            return not queued
        if rec.executor.get("kind") == "slurm" and not queued and any(r.get("job") for r in rows):
            # the record says queued or running, but Slurm runs nothing of it: a job died unrecorded
            lost = [f"{r['stage']} (job {r['job']}: {r.get('job_state') or 'gone'})" for r in rows
                    if r.get("job") and r["status"] in ("queued", "running")]  # fmt: skip
            err.print(
                f"[red]stale[/]: no job of this run is queued or running, but the record says {rec.status}"
                + (f"; ended without recording: {', '.join(lost)}" if lost else "")
            )
            err.print(f"[yellow]hint[/]: see RUN/slurm/*.out; continue with: mfnpatch recipe run "
                      f"{rec.recipe.get('path')} --executor slurm --resume {run}")  # fmt: skip
            stale[0] = True
            return True
        return False

    stale = [False]

    rec, rows = look()
    if as_json and not follow:
        emit_json({**rec.model_dump(by_alias=True), "live": rows})
        return _status_code(rec)
    last = None
    while True:
        text = _status_text(rec, rows)
        if text != last:
            if last is not None:
                out.print(f"[dim]— {time.strftime('%H:%M:%S')}[/]")
            out.print(text, highlight=False)
            last = text
        if not follow or done(rec, rows):
            break
        time.sleep(interval)
        rec, rows = look()
    if follow and as_json:
        emit_json({**rec.model_dump(by_alias=True), "live": rows})
    return 1 if stale[0] else _status_code(rec)


def _status_code(rec) -> int:
    return EXIT_OK if rec.status in ("passed", "running", "incomplete", "queued") else 1


def _status_text(rec, rows) -> str:
    head = (
        f"[bold]{escape(rec.run_id)}[/]: {rec.status} — {escape(rec.recipe['name'])}"
        + (f" profile {escape(rec.recipe['profile'])}" if rec.recipe.get("profile") else "")
        + (f", executor {rec.executor.get('kind')}" if rec.executor.get("kind") == "slurm" else "")
        + f", started {rec.started}"
        + (f", finished {rec.finished}" if rec.finished else "")
    )
    lines = [head]
    for r, s in zip(rows, rec.stages, strict=True):
        bits = [f"{r['stage']:<9}", f"{r['status']:<11}"]
        if r.get("job"):
            bits.append(f"job {r['job']}" + (f" {r['job_state']}" if r.get("job_state") else ""))
        if r.get("requeued"):
            bits.append(f"requeued {r['requeued']}x")
        if r.get("step") is not None and s.status in ("running", "interrupted"):
            bits.append(f"step {r['step']}" + (f"/{r['total']}" if r.get("total") else ""))
            if r.get("accuracy"):
                bits.append(" ".join(f"{t} {a:.4f}" for t, a in r["accuracy"].items()))
        if r.get("checks"):
            bits.append(f"checks {r['checks']}")
        if r.get("ended") and s.status not in ("running", "queued"):
            bits.append(escape(r["ended"]))
        lines.append("  " + "  ".join(bits))
    for s in rec.stages:
        for name, m in (s.metrics.get("targets") or {}).items():
            if s.status == "done":
                lines.append(
                    f"  {s.name} {name}: best {m['best']:.5f} at {m['best_step']}, "
                    f"last {m['last']:.5f} at {m['last_step']}"
                )
    return "\n".join(lines)


@recipe_app.command("cancel")
def recipe_cancel(
    run: Annotated[Path, typer.Argument(help="A run directory (runs/...).")],
    as_json: JsonOpt = False,
):
    """Cancel what a run has queued or running: its Slurm jobs (scancel), or the local runner (SIGTERM).
    A running stage is stopped and recorded; exit 2 when nothing was queued or running."""
    from mfnpatch.runs.runner import cancel_run

    CTX.json = as_json
    r = cancel_run(run)
    acted = bool(r.cancelled_jobs or r.signalled_pid)
    if as_json:
        emit_json(asdict(r))
    else:
        out.print(f"{escape(str(run))}: {escape(r.message)}" + (f" ({', '.join(r.stages)})" if r.stages else ""))
    return EXIT_OK if acted else EXIT_NOTHING_TO_DO


@recipe_app.command("job", hidden=True)
def recipe_job(
    run: Annotated[Path, typer.Argument(help="The run directory.")],
    stage: Annotated[str, typer.Argument(help="The stage this job runs.")],
):
    """What each Slurm job of `recipe run --executor slurm` runs: one stage, with the local runner."""
    from mfnpatch.runs.runner import run_job

    obs = RichObserver()
    try:
        return run_job(run, stage, obs, _env_checker())
    finally:
        obs.close()


# --------------------------------------------------------------------------------------------
# env


@env_app.command("list")
def env_list(as_json: JsonOpt = False):
    """The environments, their Python, MXNet build and lock state."""
    from mfnpatch.environments.env import list_envs

    CTX.json = as_json
    rows = []
    for e in list_envs():
        m = e.spec.mxnet
        rows.append({
            "name": e.name, "kind": e.spec.kind, "python": e.spec.python, "mxnet": f"{m.package} {m.version}",
            "cuda": m.cuda, "gpu_archs": m.gpu_archs, "lock_sha256": e.lock_sha256(),
            "locks": {str(p.name): p.is_file() for p, _ in e.locks()}
            | ({e.spec.conda.lock: e.path(e.spec.conda.lock).is_file()} if e.spec.conda else {}),
            "description": e.spec.description,
        })  # fmt: skip
    if as_json:
        emit_json(rows)
        return EXIT_OK
    for r in rows:
        locks = ", ".join(f"{k} {'ok' if v else '[yellow]missing[/]'}" for k, v in r["locks"].items())
        cuda = f", CUDA {r['cuda']}, SASS {', '.join(f'sm_{a}' for a in r['gpu_archs'])}" if r["cuda"] else ""
        out.print(f"[bold]{r['name']}[/] ({r['kind']}): Python {r['python']}, {r['mxnet']}{cuda}")
        out.print(f"  {escape(r['description'])}")
        out.print(f"  locks: {locks}")
    return EXIT_OK


@env_app.command("lock")
def env_lock(name: Annotated[str, typer.Argument(help="cpu, cu101 or cu112.")]):
    """Resolve an environment with the real resolvers (uv for pip, conda-lock for conda) into hash-pinned locks.

    A lock is replaced only when its resolver succeeds; what could not be locked is said, with why.
    """
    from mfnpatch.environments.env import lock_env

    with err.status(f"locking {name} …"):
        rep = lock_env(name)
    for line in rep.locked:
        out.print(f"[green]locked[/] {escape(line)}")
    for c in rep.changes:
        out.print(f"  {escape(c)}")
    for line in rep.not_locked:
        err.print(f"[yellow]not locked[/]: {escape(line)}")
    if rep.complete:
        return EXIT_OK
    raise MfnError(f"environment {name} is only partly locked", hint="see 'not locked' above")


@env_app.command("create")
def env_create(
    name: Annotated[str, typer.Argument(help="cpu (or a conda environment where conda-lock.yml exists).")],
    prefix: Annotated[Path, typer.Option("--prefix", help="Where to make it.")],
    find_links: Annotated[Path | None, typer.Option("--find-links", help="A directory of wheels to use.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Use --find-links only, no index.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing directory at --prefix.")] = False,
):
    """Make an environment from its lock (pip install --require-hashes); whole, or nothing left behind."""
    from mfnpatch.environments.env import check, create_env

    n = {"packages": 0}

    def line(text: str) -> None:
        if text.startswith(("Collecting", "Installing collected", "Successfully installed")):
            n["packages"] += text.startswith("Collecting")
            st.update(f"creating {name} at {prefix}: {escape(text[:100])}")

    with err.status(f"creating {name} at {prefix} …") as st:
        path = create_env(name, prefix, find_links=find_links, offline=offline, force=force, on_line=line)
    out.print(f"[green]created[/] {escape(str(path))} from the {name} lock")
    doc = check(name, path)
    out.print(escape(doc.verdict))
    return EXIT_OK if doc.can_run else 1


@env_app.command("doctor", hidden=True)  # the same command under the name users reach for
@env_app.command("check")
def env_check(
    name: Annotated[
        str | None,
        typer.Argument(help="The environment to check against (default: the one the prefix was made as, else cpu)."),
    ] = None,
    prefix: Annotated[
        Path | None, typer.Option("--prefix", help="A created environment; default: this interpreter.")
    ] = None,
    nvidia_smi: Annotated[str | None, typer.Option("--nvidia-smi", help="The nvidia-smi to ask.")] = None,
    as_json: JsonOpt = False,
):
    """The doctor: can this machine run the recipes with this environment? Exit 1 when it cannot, with the fix."""
    from mfnpatch.environments.env import check

    CTX.json = as_json
    doc = check(name, prefix, nvidia_smi)
    code = EXIT_OK if doc.can_run else 1
    if as_json:
        emit_json(doc.to_dict() | {"exit_code": code})
        return code
    out.print(f"environment [bold]{doc.env}[/], interpreter {escape(doc.interpreter)}")
    mark = {True: "[green]ok[/]  ", False: "[red]FAIL[/]", None: "[dim]info[/]"}
    for f in doc.findings:
        out.print(f"  {mark[f.ok]} {f.what:8s} {escape(f.detail)}")
    color = "green" if doc.can_run else "red"
    out.print(f"[{color}]{escape(doc.verdict)}[/]")
    if doc.fix:
        out.print(f"[yellow]fix[/]: {escape(doc.fix)}")
    return code


# --------------------------------------------------------------------------------------------
# convert / bench


@convert_app.command("slim")
def convert_slim(
    checkpoint: Annotated[str, typer.Argument(help="PREFIX,EPOCH of a training checkpoint.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="New prefix (default PREFIX-slim).")] = None,
):
    """Keep fc1_output, drop fc7*: write PREFIX-slim-symbol.json and -0000.params (the training symbol stays)."""
    from mfnpatch.deploy.convert import slim

    sym, params = slim(checkpoint, output)
    out.print(f"wrote {escape(str(sym))} and {escape(str(params))}")
    return EXIT_OK


@convert_app.command("ncnn")
def convert_ncnn_cmd(
    checkpoint: Annotated[str, typer.Argument(help="PREFIX,EPOCH (a training or slim checkpoint).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the converted models.")],
    verify_after: Annotated[
        bool, typer.Option("--verify", help="Then verify all engines (writes verify.json).")
    ] = False,
    as_json: JsonOpt = False,
):
    """MXNet -> ONNX -> ncnn (pnnx, BatchNorm folded), plus the unfolded ncnn model the seed's mxnet2ncnn made."""
    from mfnpatch.deploy.convert import convert_ncnn

    CTX.json = as_json
    if as_json:
        r = convert_ncnn(checkpoint, output, verify_after=verify_after)
    else:
        with err.status("converting …") as st:
            r = convert_ncnn(checkpoint, output, verify_after=verify_after, on_step=lambda s: st.update(escape(s)))
    code = EXIT_OK if not r.verify or r.verify["passed"] else 1
    if as_json:
        from dataclasses import asdict

        emit_json(asdict(r) | {"exit_code": code})
        return code
    out.print(f"[green]converted[/] {escape(checkpoint)} -> {escape(str(output))} in {r.seconds:.1f} s")
    out.print(
        f"  ONNX      {escape(r.onnx)} (fixes: {len(r.fixes)}; onnxruntime vs MXNet cosine "
        f"{r.onnx_check['min_cosine']:.7f})"
    )
    for label, m in (("folded", r.folded), ("unfolded", r.unfolded)):
        layers = sum(m["layers"].values())
        out.print(f"  ncnn {label:8s} {escape(m['param'])}: {layers} layers, {m['batchnorm']} BatchNorm")
    if r.verify:
        _print_verify(r.verify)
    return code


def _print_verify(v: dict) -> None:
    for engine, c in v["engines"].items():
        ok = c["min_cosine"] >= v["threshold"]
        out.print(
            f"  {'[green]ok[/]  ' if ok else '[red]FAIL[/]'} {engine:14s} cosine min {c['min_cosine']:.7f}, "
            f"max |diff| {c['max_abs_diff']:.3g} (values up to {c['max_abs_value']:.3g})"
        )
    verdict = "[green]PASS[/]" if v["passed"] else "[red]FAIL[/]"
    out.print(
        f"{verdict}: {v['inputs']} inputs ({v['face_like']} face-like, {v['inputs'] - v['face_like']} noise), "
        f"every engine cosine >= {v['threshold']}: min {v['min_cosine']:.7f}"
    )


@convert_app.command("verify")
def convert_verify(
    model_dir: Annotated[Path, typer.Argument(help="A directory made by mfnpatch convert ncnn.")],
    inputs: Annotated[int, typer.Option("--inputs", min=8, help="How many inputs (face-like and noise).")] = 10,
    as_json: JsonOpt = False,
):
    """Embeddings of MXNet, onnxruntime and both ncnn models on the same inputs: cosine >= 0.9999 each."""
    from dataclasses import asdict

    from mfnpatch.deploy.convert import verify as do_verify

    CTX.json = as_json
    v = asdict(do_verify(model_dir, inputs))
    code = EXIT_OK if v["passed"] else 1
    if as_json:
        emit_json(v | {"exit_code": code})
        return code
    _print_verify(v)
    return code


@app.command("bench")
def bench_cmd(
    model_dir: Annotated[Path, typer.Argument(help="A directory made by mfnpatch convert ncnn.")],
    threads: Annotated[str, typer.Option("--threads", help="Thread counts, comma separated.")] = "1,2",
    loops: Annotated[int, typer.Option("--loops", min=1, help="Timed runs per engine and thread count.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 3,
    as_json: JsonOpt = False,
):
    """benchncnn-style latency (min/max/avg ms, batch 1): ncnn folded and unfolded, onnxruntime, MXNet.

    Writes MODEL_DIR/bench.json; shows the seed's Snapdragon 625 numbers and this machine's FLOP bound.
    """
    from dataclasses import asdict

    from mfnpatch.deploy.bench import bench, table

    CTX.json = as_json
    try:
        counts = [int(t) for t in threads.split(",") if t.strip()]
    except ValueError:
        raise MfnError(f"--threads {threads!r}: write thread counts like 1,2") from None
    with err.status("benchmarking …"):
        res = bench(model_dir, counts, loops, warmup)
    if as_json:
        emit_json(asdict(res))
        return EXIT_OK
    sys.stdout.write(table(res) + "\n")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# data


@data_app.command("synth")
def data_synth(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write (property, train.rec/.idx, *.bin).")
    ],
    ids: Annotated[int, typer.Option("--ids", min=2, help="Identities.")] = 20,
    per_id: Annotated[int, typer.Option("--per-id", min=2, help="Training images per identity.")] = 20,
    pairs: Annotated[int, typer.Option("--pairs", min=10, help="Pairs in each verification set.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Everything is deterministic for a seed.")] = 0,
):
    """A synthetic face dataset in the exact format train_softmax.py reads: property, train.rec/.idx with
    header and identity records, and lfw/cfp_fp/agedb_30.bin as Python 2 pickles.

    Identities are drawn to be learnable in tens of steps, so a CPU smoke run shows accuracy rising.
    Deterministic for a seed; rerunning with the same parameters reuses the dataset. It never writes
    into a directory that holds a dataset it did not make.

    Example: mfnpatch data synth -o /tmp/faces --ids 21 --per-id 16"""
    from mfnpatch.datasets.synth import synth

    with err.status("writing the dataset …") as st:
        r = synth(output, ids, per_id, pairs, seed, on_step=lambda s: st.update(escape(s)))
    verb = "already there" if r.reused else "wrote"
    out.print(
        f"{verb}: {escape(r.dir)}: {r.images} images of {r.identities} identities; "
        f"{', '.join(r.targets)} with {r.pairs} pairs each (seed {r.seed})"
    )
    return EXIT_OK


def _show(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, dict):
        return ", ".join(f"{k}={v!r}" for k, v in x.items())
    return str(x)


# --------------------------------------------------------------------------------------------
# Entry point


def _print_error(e: MfnError) -> None:
    err.print(f"[bold red]error[/]: {escape(e.message)}")
    for d in e.details:
        err.print(f"  {escape(d)}")
    if e.hint:
        err.print(f"[yellow]hint[/]: {escape(e.hint)}")


_SIGNALLED: list[str] = []  # the signal that interrupted this command (the CLI says which)


def _interrupt(signum, frame):
    _SIGNALLED.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    # SIGTERM (kill, a service manager, `recipe cancel`) is handled like Ctrl-C: every transaction rolls
    # back and every temporary file goes (a recipe run installs its own handlers while it runs stages)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    code = run(argv)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this)."""
    CTX.json = False
    try:
        rv = app(args=argv, prog_name="mfnpatch", standalone_mode=False)
        if _SIGNALLED:  # click turns KeyboardInterrupt into an exit code of its own, silently
            raise KeyboardInterrupt
        return rv if isinstance(rv, int) else EXIT_OK
    except MfnError as e:
        if CTX.debug:
            traceback.print_exc()
        if CTX.json:
            emit_json(e.to_dict())
        _print_error(e)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()  # prints the help
            return EXIT_USAGE
        err.print(f"[bold red]error[/]: {escape(e.format_message())}")
        ctx = getattr(e, "ctx", None)
        err.print(f"[yellow]hint[/]: see: {escape(ctx.command_path if ctx else 'mfnpatch')} --help")
        return EXIT_USAGE if getattr(e, "exit_code", 1) == 2 else e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        how = f" by {_SIGNALLED[0]}" if _SIGNALLED else ""
        err.print(f"[bold red]interrupted{how}[/]")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:  # permissions, a read-only or full disk ...: ordinary, not a bug
        if CTX.debug:
            traceback.print_exc()
        me = from_os_error(e)
        if CTX.json:
            emit_json(me.to_dict())
        _print_error(me)
        return me.exit_code
    except Exception as e:  # a bug: say so plainly, with the traceback only under --debug
        if CTX.debug:
            traceback.print_exc()
        if type(e).__name__ == "GitCommandError":  # git itself failed (a corrupt repository, a full disk ...)
            stderr = (getattr(e, "stderr", "") or "").strip().splitlines()
            me = MfnError(
                f"git failed: {stderr[-1] if stderr else e}",
                hint="run with --debug for git's output; a corrupt tree or cache can be removed and made again",
            )
            if CTX.json:
                emit_json(me.to_dict())
            _print_error(me)
            return me.exit_code
        err.print(f"[bold red]internal error[/]: {escape(type(e).__name__)}: {escape(str(e))}")
        err.print("[yellow]hint[/]: rerun with --debug for the traceback and report it")
        return 70
