"""Commands on the locked environments: env list, lock, create, check (doctor)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from mfnpatch.cli.app import (
    CTX,
    JsonOpt,
    emit_json,
    env_app,
    err,
    out,
)
from mfnpatch.errors import (
    EXIT_OK,
    MfnError,
)

# --------------------------------------------------------------------------------------------
# env


@env_app.command("list")
def env_list(as_json: JsonOpt = False):
    """The environments, their Python, framework build (MXNet or PyTorch), GPU kernels and lock state."""
    from mfnpatch.environments.spec import list_envs

    CTX.json = as_json
    rows: list[dict[str, Any]] = []
    for e in list_envs():
        m = e.spec.build if e.spec.trains else None
        rows.append({
            "name": e.name, "kind": e.spec.kind, "python": e.spec.python,
            "lineage": e.spec.lineage if m else None,
            "build": f"{m.package} {m.version}" if m else "QEMU: " + ", ".join(e.spec.emulated.cpus if e.spec.emulated
                                                                                else []),
            "cuda": m.cuda if m else None, "gpu_archs": m.gpu_archs if m else [],
            "lock_sha256": e.lock_sha256(),
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
        head = f"[bold]{r['name']}[/] ({r['kind']}" + (f", {r['lineage']} lineage)" if r["lineage"] else ")")
        out.print(f"{head}: Python {r['python']}, {r['build']}{cuda}")
        out.print(f"  {escape(r['description'])}")
        out.print(f"  locks: {locks}")
    return EXIT_OK


@env_app.command("lock")
def env_lock(
    name: Annotated[str, typer.Argument(help="An environment of mfnpatch env list, e.g. cpu or torch-cu12.")],
    find_links: Annotated[
        Path | None,
        typer.Option(
            "--find-links",
            help="A directory of wheels the resolver may take files from besides the indexes (e.g. where a "
            "local-version wheel such as torch 2.13.0+cpu lies when its index cannot be reached); the lock "
            "records only names, versions and hashes, never this directory.",
        ),
    ] = None,
):
    """Resolve an environment with the real resolvers (uv for pip, conda-lock for conda) into hash-pinned locks.

    A lock is replaced only when its resolver succeeds; what could not be locked is said, with why.
    """
    from mfnpatch.environments.lock import lock_env

    with err.status(f"locking {name} …"):
        rep = lock_env(name, find_links=find_links)
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
    name: Annotated[
        str,
        typer.Argument(
            help="cpu, cu117, torch-cpu, torch-cu12 (pip only), or a conda environment with its conda-lock.yml."
        ),
    ],
    prefix: Annotated[Path, typer.Option("--prefix", help="Where to make it.")],
    find_links: Annotated[
        Path | None,
        typer.Option(
            "--find-links",
            help="A directory of wheels to use; with it, an environment's extra index (PyTorch's CPU index for "
            "torch-cpu) is not asked: the files must be there or on the configured indexes.",
        ),
    ] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Use --find-links only, no index.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing directory at --prefix.")] = False,
):
    """Make an environment from its lock (pip install --require-hashes); whole, or nothing left behind."""
    from mfnpatch.environments.create import create_env
    from mfnpatch.environments.doctor import check, only_this_machine
    from mfnpatch.environments.spec import load_env, parse_lock

    spec_env = load_env(name)  # an unknown name is the usual clear error, before anything is made
    total = 0 if spec_env.spec.conda else sum(len(parse_lock(lock)) for lock, _ in spec_env.locks())
    n = {"packages": 0}

    def line(text: str) -> None:  # pip's lines, as progress: the package count and what is being fetched
        if text.startswith(
            ("Collecting", "Downloading", "Installing collected", "Successfully installed", "Installed")
        ):
            n["packages"] += text.startswith("Collecting")
            count = f"{n['packages']}/{total} packages, " if total else ""
            st.update(f"creating {name} at {prefix}: {count}{escape(text[:100])}")

    with err.status(f"creating {name} at {prefix} …") as st:
        path = create_env(name, prefix, find_links=find_links, offline=offline, force=force, on_line=line)
    out.print(f"[green]created[/] {escape(str(path))} from the {name} lock")
    doc = check(name, path)
    if not doc.can_run and only_this_machine(doc):  # made right; for other machines (GPU nodes)
        err.print(f"[yellow]warning[/]: the environment is complete, but this machine cannot run it: "
                  f"{escape(doc.verdict)}")  # fmt: skip
        where = f"mfnpatch env check {name} --prefix {escape(str(path))}"
        err.print(f"[yellow]note[/]: check it where it will run: {where}")
        return EXIT_OK
    for f in doc.findings:
        if f.ok is False:
            out.print(f"  [red]FAIL[/] {f.what:8s} {escape(f.detail)}")
    out.print(escape(doc.verdict))
    if doc.fix:
        out.print(f"[yellow]fix[/]: {escape(doc.fix)}")
    return doc.exit_code


@env_app.command("gpus")
def env_gpus(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="A Markdown table (as in docs/environments.md).")
    ] = False,
    as_json: JsonOpt = False,
):
    """Which environment has kernels for which GPU: every GPU generation the doctor knows, against the kernel
    lists of the bundled GPU environments (read from their libraries), and the environment each lineage
    would use. The doctor decides with the same lists (mfnpatch env check)."""
    from mfnpatch.environments.doctor import gpu_table, gpu_table_markdown

    CTX.json = as_json
    if as_json:
        emit_json(gpu_table())
        return EXIT_OK
    if markdown:
        out.print(gpu_table_markdown(), end="", markup=False, highlight=False, soft_wrap=True)
        return EXIT_OK
    from rich.table import Table

    rows = gpu_table()
    envs = list(rows[0]["kernels"]) if rows else []
    lineages = list(rows[0]["use"]) if rows else []  # the registered lineages, by their one name
    t = Table("GPUs", "arch", *envs, *lineages)
    for r in rows:
        t.add_row(", ".join(r["gpus"]), r["cc"],
                  *[(r["kernels"][e] or "—").split(" (")[0] for e in envs],
                  *[r["use"][name] or "[red]none[/]" for name in lineages])  # fmt: skip
    out.print(t)
    return EXIT_OK


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
    from mfnpatch.environments.doctor import check

    CTX.json = as_json
    doc = check(name, prefix, nvidia_smi)
    code = doc.exit_code
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
