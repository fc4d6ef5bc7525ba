"""The house by capability: what may import what (imports inside functions count), no import cycle, no module
over 600 lines. docs/architecture.md says the same in words."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mfnpatch"
BASE = {"errors", "fsutil", "resources", "schema", "checkpoint", "finite", "emulator"}
# layer -> the layers it may import (besides itself and the shared base)
ALLOWED = {
    "base": set(),
    "source": set(),
    "lineages": set(),
    "logs": {"source", "lineages"},
    "recipes": {"source", "logs", "lineages"},
    "verify": {"source", "logs", "recipes", "lineages"},
    "runs": {"source", "logs", "recipes", "verify", "lineages"},
    "cluster": {"source", "logs", "recipes", "verify", "runs", "lineages"},
    "environments": {"lineages"},
    # convert evaluate reads the verification sets through datasets/bins.py; deploy.json names the lineage
    "deploy": {"datasets", "lineages"},
    "datasets": set(),
    "cli": {"source", "logs", "recipes", "verify", "runs", "cluster", "environments", "deploy", "datasets", "lineages"},
}
# The rooms of runs/, bottom up: a room imports only rooms below it, so following a plan through the runner
# goes one way down (the record at the bottom; the runner, which uses them all, at the top).
RUNS_ROOMS = ["record", "determinism", "resume", "process", "liveness", "outcome", "handover", "provenance",
              "summaries", "files", "dataplan", "execute", "report", "status", "compare", "eta", "runner",
              "estimate"]  # fmt: skip
MAX_LINES = 600


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        if "seedhook" in p.parts or "emulated" in p.parts:  # run in another interpreter, import nothing of ours
            continue
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = p
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "cli"  # mfnpatch/__init__ (the version) is read by every layer; __main__ runs the cli
    if parts[1] in BASE:
        return "base"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def imports(path: Path, name: str) -> set[str]:
    """Every mfnpatch module ``path`` imports, at module level or inside functions."""
    out = set()
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mfnpatch")}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, mod] if mod else base)
            if not mod.startswith("mfnpatch"):
                continue
            out.add(mod)
            for a in node.names:  # `from mfnpatch.x import y` where y is a module
                if f"{mod}.{a.name}" in MODULES:
                    out.add(f"{mod}.{a.name}")
    return {m for m in out if m in MODULES and m != name}


MODULES = modules()
GRAPH = {name: imports(path, name) for name, path in MODULES.items()}


def test_every_import_goes_down_the_layers():
    bad = []
    for name, deps in GRAPH.items():
        src = layer(name)
        for d in deps:
            dst = layer(d)
            if d == "mfnpatch" or dst == src or dst == "base" or dst in ALLOWED[src]:
                continue
            bad.append(f"{name} ({src}) imports {d} ({dst})")
    assert not bad, "\n".join(bad)


def test_runs_rooms_import_only_rooms_below_them():
    rooms = {f"mfnpatch.runs.{r}": i for i, r in enumerate(RUNS_ROOMS)}
    assert set(rooms) == {n for n in MODULES if n.startswith("mfnpatch.runs.")}, "a room of runs/ is not ranked"
    bad = [f"{n} imports {d}" for n, i in rooms.items() for d in GRAPH[n] if d in rooms and rooms[d] >= i]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_module_over_600_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}, sorted(long.items(), key=lambda x: -x[1])[:12]
