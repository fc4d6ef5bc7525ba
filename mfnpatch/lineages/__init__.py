"""The lineages of InsightFace's training code mfnpatch runs, by name (the one name used everywhere: env.yaml, the
recipe's ``lineage:``, logs, records, compare, deploy.json). A new lineage is registered here."""

from __future__ import annotations

from mfnpatch.errors import MfnError
from mfnpatch.lineages.arcface_torch import ArcfaceTorch
from mfnpatch.lineages.base import Capabilities, Lineage, TrainerFacts
from mfnpatch.lineages.insightface_mxnet import InsightfaceMxnet

LINEAGES: dict[str, Lineage] = {}
# the older names records and logs carry: mxnet and torch (parser, environments), onnx (deploy)
ALIASES = {"mxnet": "insightface_mxnet", "torch": "arcface_torch", "pytorch": "arcface_torch"}


def register(lineage: Lineage) -> Lineage:
    """Add a lineage (a third line of InsightFace's code: a module of its own, registered by its name)."""
    LINEAGES[lineage.name] = lineage
    return lineage


register(InsightfaceMxnet())
register(ArcfaceTorch())


def get(name: str) -> Lineage:
    key = ALIASES.get(name, name)
    if key not in LINEAGES:
        raise MfnError(f"unknown lineage {name!r}", hint=f"lineages: {', '.join(LINEAGES)}")
    return LINEAGES[key]


def of_args(args: dict) -> Lineage:
    """The lineage of a log's configuration or a stage's arguments (their ``lineage`` key; the MXNet code's
    carry none)."""
    return get(str(args.get("lineage") or "insightface_mxnet"))


def of_argv(argv: list[str]) -> Lineage | None:
    """The lineage whose trainer a command runs (None: not a training command of a known lineage)."""
    hits = [lin for lin in LINEAGES.values() if lin.claims(argv)]
    return hits[-1] if hits else None


def facts_of(argv: list[str]) -> TrainerFacts | None:
    lin = of_argv(argv)
    return lin.facts(argv) if lin else None


__all__ = ["LINEAGES", "Capabilities", "Lineage", "TrainerFacts", "facts_of", "get", "of_args", "of_argv", "register"]
