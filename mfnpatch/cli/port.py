"""`mfnpatch patches port`: carry a patch set to a later InsightFace commit, with a per-patch report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mfnpatch.cli.app import CTX, JsonOpt, emit_json, err, out, patches_app
from mfnpatch.errors import UsageError

COLOR = {"clean": "green", "moved": "green", "merged": "yellow", "upstream": "cyan", "resolved": "yellow",
         "conflict": "red"}  # fmt: skip


@patches_app.command("port")
def patches_port(
    name: Annotated[str | None, typer.Argument(help="The set to carry (its newest version), e.g. mfn.")] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="The commit to carry it to: its full SHA (or a pinned commit's prefix).")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="InsightFace clone, mirror or URL to fetch from (as apply).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the per-patch report; write nothing.")] = False,
    keep_conflicts: Annotated[
        Path | None,
        typer.Option("--keep-conflicts", help="On a conflict, write the conflicting files with markers into DIR."),
    ] = None,
    continue_: Annotated[
        Path | None,
        typer.Option("--continue", help="After resolving the files in DIR: carry on from the resolved patch."),
    ] = None,
    as_json: JsonOpt = False,
):
    """Carry a patch set to a later commit with git's three-way merge, and say per patch what happened.

    Each patch is clean (same context), moved (offset), merged (context changed, merge clean), upstream
    (the commit already has the change: dropped) or conflict (both sides shown). Success writes version
    N+1 of the set for the commit (diffs regenerated at fuzz 0, DEP-3 headers carried over with a
    Ported-From line, SHA256SUMS) and, if the commit is not pinned yet, its pin manifest; apply then picks
    the version made for the commit it is given. A conflict writes nothing (exit 1) unless --keep-conflicts
    DIR: resolve the files there, then run `mfnpatch patches port --continue DIR`.
    """
    from mfnpatch.resources import data_dir
    from mfnpatch.source.port import port

    CTX.json = as_json
    if continue_ is None and (name is None or to is None):
        raise UsageError("patches port needs a SET and --to COMMIT (or --continue DIR)",
                         hint="e.g. mfnpatch patches port mfn --to <the commit's full SHA>")  # fmt: skip
    if continue_ is not None and (name or to or keep_conflicts):
        raise UsageError("--continue DIR takes the set and commit from DIR; give nothing else",
                         hint=f"mfnpatch patches port --continue {continue_}")  # fmt: skip
    with err.status("porting …") as st:
        report = port(
            name or "", to or "", source=source, patches_root=data_dir("patches"), dry_run=dry_run,
            keep_conflicts=keep_conflicts, resume=continue_, on_progress=lambda line: st.update(f"fetching: {line}"),
        )  # fmt: skip
    code = report.exit_code
    if as_json:
        emit_json(report.to_dict() | {"exit_code": code})
        return code
    out.print(f"{report.set}@{report.from_version} ({report.from_commit[:7]}) → {report.to_commit[:7]}")
    for p in report.patches:
        c = COLOR[p.status]
        out.print(f"  [{c}]{p.status:9s}[/] {escape(p.patch):40s} {escape(p.detail)}")
        for h in p.conflicts:
            where = f"{h.path}:{h.line}" if h.line else h.path
            out.print(f"    {escape(where)}")
            out.print("      ours (the set):   " + escape(h.ours.rstrip("\n")).replace("\n", "\n" + " " * 24))
            out.print(
                f"      theirs ({report.to_commit[:7]}): "
                + escape(h.theirs.rstrip("\n")).replace("\n", "\n" + " " * 24)
            )
    if not report.ok:
        if report.kept:
            out.print(f"conflicting files written with markers to {escape(report.kept)}; resolve them, then:")
            out.print(f"  mfnpatch patches port --continue {escape(report.kept)}")
        else:
            out.print("[red]nothing written[/]: resolve by hand with --keep-conflicts DIR, then --continue DIR")
        return code
    if report.dry_run:
        out.print("dry run: nothing written")
        return code
    if report.pin_recorded:
        out.print(f"recorded the pin {escape(report.pin_recorded)}")
    out.print(
        f"[green]wrote[/] {report.set}@{report.new_version} for {report.to_commit[:7]}: {escape(str(report.written))}"
    )
    out.print(f"next: mfnpatch apply --commit {report.to_commit[:7]} --series {report.set}")
    return code
