"""Commands for training data: data check, data build, data synth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mfnpatch.cli.app import CTX, JsonOpt, data_app, emit_json, err, out, progress_bar
from mfnpatch.errors import EXIT_OK, UsageError

TargetsOpt = Annotated[
    str, typer.Option("--targets", help="Verification sets to check: DIR/<target>.bin for each, comma separated.")
]


def parse_targets(text: str) -> list[str]:
    import re

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", t)]
    if not names or bad:
        raise UsageError(f"--targets {text!r}: write names like lfw,cfp_fp,agedb_30", hint="each names DIR/<name>.bin")
    return names


@data_app.command("check")
def data_check(
    directory: Annotated[Path, typer.Argument(help="The dataset: property, train.rec, train.idx and <target>.bin.")],
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets",
            help="Verification sets to check: DIR/<target>.bin for each, comma separated "
            "(default: lfw,cfp_fp,agedb_30; for a dataset data build made, the sets it made).",
        ),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Decode every image (all cores) and hash the whole train.rec.")
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Processes for --full (default: all cores).")
    ] = None,
    as_json: JsonOpt = False,
):
    """Is DIR the dataset the pinned code reads, whole and consistent, and which one?

    \b
    Checks property (num_classes,height,width); every train.idx line points at a valid RecordIO record and
    the records tile train.rec; record 0 is the header with the identity range FaceImageIter reads; the
    identity records' image ranges are contiguous, disjoint and cover every image; every image's label is a
    class in [0, ids) and the identity whose range holds it; images decode as JPEG/PNG of the property's size
    (a sample, or all with --full); each <target>.bin loads safely (a restricted unpickler: a pickle naming
    any other global is refused, nothing imported or called) as (images, issame) with two images per pair.
    Names the MS1M variant its counts match, or says it is unknown. Exit 0 only when everything holds.

    \b
    Examples:
      mfnpatch data check ~/datasets/faces_ms1m_112x112
      mfnpatch data check ~/datasets/faces_emore --full --json > check.json
    """
    from mfnpatch.datasets.check import built_targets, check_dataset

    CTX.json = as_json
    built = built_targets(directory) if targets is None else None
    names = built if built is not None else parse_targets(targets or "lfw,cfp_fp,agedb_30")
    if built is not None and not as_json:
        err.print(f"targets: {escape(', '.join(built)) or 'none'} (the sets data build made here; --targets to "
                  "choose)")  # fmt: skip
    with progress_bar(not as_json, lines=True) as progress:
        r = check_dataset(directory, names, full=full, workers=workers, progress=progress)
    if as_json:
        emit_json(r.to_dict())
        return r.exit_code
    t = Table(
        show_edge=False, box=None, pad_edge=False, title=f"data check {escape(str(directory))}", title_justify="left"
    )
    for col in ("check", "status", "detail"):
        t.add_column(col, overflow="fold")
    style = {"ok": "green", "FAIL": "bold red", "warn": "yellow", "skipped": "dim"}
    for row in r.rows:
        t.add_row(escape(row.check), f"[{style[row.status]}]{row.status}[/]", escape(row.detail))
    out.print(t)
    for f in r.findings:
        label = "[bold red]error[/]" if f.severity == "error" else "[yellow]warning[/]"
        err.print(f"{label}: {escape(f.text())}")
        if f.hint and f.severity == "error":
            err.print(f"[yellow]hint[/]: {escape(f.hint)}")
    verdict = r.verdict()
    colour = "green" if r.ok else "bold red"
    out.print(f"[{colour}]{escape(verdict)}[/] ({r.decoded:,} images decoded, {r.seconds:.1f} s)")
    return r.exit_code


@data_app.command("build")
def data_build(
    images: Annotated[Path, typer.Argument(help="A folder with one sub-folder of aligned face images per identity.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The dataset directory to create (new or empty).")],
    pairs: Annotated[
        list[str] | None,
        typer.Option("--pairs", help="An LFW-style pairs file, as FILE (for lfw) or TARGET=FILE; repeatable."),
    ] = None,
    pairs_per_set: Annotated[
        int | None, typer.Option("--pairs-per-set", min=20, help="Draw N pairs for each target instead (half match).")
    ] = None,
    targets: TargetsOpt = "lfw,cfp_fp,agedb_30",
    resize: Annotated[bool, typer.Option("--resize", help="Scale images that are not 112x112 (else refused).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the drawn pairs.")] = 0,
    as_json: JsonOpt = False,
):
    """Turn a folder of aligned faces into property, train.rec/.idx and verification .bin sets.

    \b
    The layout is exactly what InsightFace's face2rec2.py writes and the pinned train_softmax.py reads:
    identities numbered in folder-name order, the header and identity records, the images as they are.
    Images in verification pairs are held out of training. Written in a hidden directory beside
    --output and renamed into place at the end: an interrupted build leaves no half dataset.

    \b
    Examples:
      mfnpatch data build ~/faces -o ~/datasets/myfaces --pairs-per-set 100
      mfnpatch data build ~/lfw-aligned -o ~/datasets/mylfw --pairs lfw=pairs.txt
      mfnpatch data check ~/datasets/myfaces
    """
    from mfnpatch.datasets.build import build

    CTX.json = as_json
    names = parse_targets(targets)
    files: dict[str, Path] = {}
    for spec in pairs or []:
        target, _, path = spec.rpartition("=") if "=" in spec else ("lfw", "", spec)
        parse_targets(target)
        files[target] = Path(path)
    with progress_bar(not as_json, lines=True) as progress:
        r = build(images, output, files or None, pairs_per_set, names, resize=resize, seed=seed, progress=progress)
    if as_json:
        emit_json(r.to_dict() | {"exit_code": EXIT_OK})
        return EXIT_OK
    sets = ", ".join(f"{t} ({n} pairs)" for t, n in r.targets.items()) or "no verification sets"
    out.print(f"built {escape(r.dir)}: {r.images:,} images of {r.identities:,} identities; {escape(sets)}")
    if r.held_out:
        out.print(f"  {r.held_out} images held out of training for the verification pairs")
    if r.resized:
        out.print(f"  {r.resized} images resized to 112x112 (--resize)")
    out.print(f"check it with: mfnpatch data check {escape(r.dir)}")
    return EXIT_OK


@data_app.command("synth")
def data_synth(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write (property, train.rec/.idx, *.bin).")
    ],
    ids: Annotated[int, typer.Option("--ids", min=2, help="Identities.")] = 20,
    per_id: Annotated[int, typer.Option("--per-id", min=2, help="Training images per identity.")] = 20,
    pairs: Annotated[
        int, typer.Option("--pairs", min=20, help="Pairs in each verification set (10 folds, both kinds in each).")
    ] = 100,
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
