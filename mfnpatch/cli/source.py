"""Commands on the patched tree and the patch sets: apply, unapply, status, diff, patches, pin."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mfnpatch.cli.app import (
    CTX,
    DEFAULT_DEST,
    DestOpt,
    JsonOpt,
    _say,
    app,
    emit_json,
    err,
    out,
    patches_app,
    pin_app,
    write_stdout,
)
from mfnpatch.errors import (
    EXIT_NOTHING_TO_DO,
    EXIT_OK,
    MfnError,
)

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
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest",
            "-d",
            help="The InsightFace tree (created if absent); default: the pin's own "
            "(insightface for 4bc8132, insightface-0159b24 for 0159b24).",
        ),
    ] = None,
    fuzz: Annotated[
        int, typer.Option("--fuzz", min=0, max=3, help="Accept hunks whose outer N context lines differ (recorded).")
    ] = 0,
    force: Annotated[
        bool,
        typer.Option("--force", help="Reset files changed outside mfnpatch (saved under .mfnpatch/saved/) and apply."),
    ] = False,
    check: Annotated[bool, typer.Option("--check", help="Check that the series applies; write nothing.")] = False,
    paths: Annotated[
        str | None,
        typer.Option(
            "--paths",
            help="The directories of the tree to materialise besides what the patch sets touch, comma separated "
            "(DIR, or DIR/* for a directory's own files); default: what the pinned code needs to run the seed's "
            "commands (4bc8132: src,deploy/*).",
        ),
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Fetch and check out the whole tree, every file.")] = False,
    as_json: JsonOpt = False,
):
    """Fetch a pinned InsightFace commit (verified by hash) and apply patch sets, all or nothing.

    Only that one commit is fetched (depth 1) into a cache, so a second apply needs no network; and of it only
    the directories the patch sets touch (and --paths): its trees without their blobs, then those directories'
    blobs (git's partial clone and sparse checkout; a source that refuses filters sends the whole commit, said
    once). The commit and the tree id of the whole commit are verified, and every materialised file against
    its pinned blob. --full gives the whole tree. Applying again is a no-op (exit 2); a tree changed outside
    mfnpatch is refused unless --force.
    """
    from mfnpatch.resources import data_dir
    from mfnpatch.source.command import apply_commit
    from mfnpatch.source.pin import default_dest

    CTX.json = as_json
    dest = dest if dest is not None else default_dest(commit)
    wanted = None if paths is None else [p for p in paths.split(",") if p.strip()]

    def run(on_progress=None):
        return apply_commit(commit, series, dest, data_dir("patches"), source, fuzz=fuzz, force=force, check=check,
                            on_wait=_say, on_progress=on_progress, paths=wanted, full=full)  # fmt: skip

    if as_json:
        r = run()
    else:
        with err.status(f"fetching {commit} …") as st:
            r = run(lambda line: st.update(f"fetching {commit}: {escape(line)}"))
    code = r.exit_code
    if as_json:
        emit_json(r.to_dict())
        return code
    if r.checked is not None:
        c = r.checked
        out.print(
            f"check: {', '.join(c.sets)} apply cleanly to {c.pin.short}; {len(c.changed)} file(s) would change "
            f"({escape(str(dest))} does not exist and was not created)"
        )
        return code
    prepared, outcome = r.prepared, r.outcome
    assert prepared is not None and outcome is not None
    tree = prepared.tree
    _said_recovered(tree)
    pin = tree.pin
    if prepared.fetch is not None:
        f = prepared.fetch
        if f.note:
            _say(f.note)
        how = "from the cache" if f.from_cache else f"from {f.url} in {f.seconds:.1f} s"
        what = f" (partial: the blobs of {', '.join(f.paths)})" if f.partial and f.paths is not None else ""
        out.print(f"fetched {pin.short}{escape(what)} {escape(how)}; verified commit and tree {pin.manifest.tree[:12]}")
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
    held = tree.paths
    out.print("tree holds: " + ("every file (--full)" if held is None else escape(", ".join(held)) +
                                " and the files at the root; --paths DIR,... or --full for more"))  # fmt: skip
    if outcome.action not in ("nothing", "adopted", "checked"):
        out.print(f"next: mfnpatch status --dest {escape(str(dest))}")
    return code


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
    code = o.exit_code
    if as_json:
        emit_json(o.to_dict() | {"exit_code": code})
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
    code = st.exit_code
    if as_json:
        emit_json(st.to_dict() | {"exit_code": code})
        return code
    out.print(f"tree     {escape(str(st.tree))}")
    out.print(f"pin      {escape(st.pin.describe())}, tree {st.pin.manifest.tree[:12]} verified")
    shown = "every file" if st.paths is None else ", ".join(st.paths) + " (and the files at the root)"
    out.print(f"files    {escape(shown)}" + ("" if st.paths is None else " — apply --paths DIR or --full for more"))
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
    write_stdout(text)
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
    rows: list[dict[str, Any]] = []
    for name, v, s, problem in cat.listing():
        if s is None:
            rows.append({"set": f"{name}@{v}", "name": name, "version": v, "error": problem})
            continue
        rows.append(
            {
                "set": s.label,
                "name": s.name,
                "version": s.version,
                "latest": v == cat.versions[name][-1],
                "applies_to": s.manifest.applies_to,
                "opt_in": s.manifest.opt_in,
                "after": s.manifest.after,
                "sha256": s.sha256,
                "description": s.manifest.description,
                "patches": [
                    {"name": p.name, "description": p.header.description.splitlines()[0], "files": p.paths}
                    for p in s.patches
                ],
                "error": None,
            }
        )
    if as_json:
        emit_json(rows)
        return EXIT_OK
    for r in rows:
        if r["error"]:
            out.print(f"[red]{escape(r['set'])}[/]: {escape(r['error'])}")
            continue
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
    note: Annotated[str, typer.Option("--note", help="Why this commit is pinned (kept in the manifest).")] = "",
    paths: Annotated[
        str,
        typer.Option(
            "--paths",
            help="What a plain apply materialises: the directories the pinned code needs "
            "to run the seed's commands, comma separated (src,deploy/*).",
        ),
    ] = "",
    dest: Annotated[str, typer.Option("--dest", help="The pin's default tree (one per pin).")] = "insightface",
):
    """(Maintainers) Fetch a commit and write its pin manifest (tree id, blob id and sha256 of every file)."""
    from mfnpatch.fsutil import atomic_write
    from mfnpatch.source.partial import normalise
    from mfnpatch.source.pin import manifest_yaml, record_pin

    wanted = normalise([p for p in paths.split(",") if p.strip()])
    m = record_pin(commit, source, name, upstream).model_copy(update={"note": note, "paths": wanted, "dest": dest})
    atomic_write(output, manifest_yaml(m))
    out.print(f"wrote {escape(str(output))}: {m.commit[:7]} tree {m.tree[:12]}, {len(m.files)} files")
    return EXIT_OK
