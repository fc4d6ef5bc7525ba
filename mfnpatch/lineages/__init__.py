"""The lineages of InsightFace's training code mfnpatch runs, by name (the one name used everywhere: env.yaml, the
recipe's ``lineage:``, logs, records, compare, deploy.json). A new lineage is registered here."""

from __future__ import annotations

from mfnpatch.errors import MfnError
from mfnpatch.lineages.arcface_torch import ArcfaceTorch
from mfnpatch.lineages.base import Capabilities, Lineage, TrainerFacts
from mfnpatch.lineages.insightface_mxnet import InsightfaceMxnet

LINEAGES: dict[str, Lineage] = {}
# the lineage of a log, record or contract that names none: the only one before lineages had names
DEFAULT = "insightface_mxnet"
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
    return get(str(args.get("lineage") or DEFAULT))


def of_argv(argv: list[str]) -> Lineage | None:
    """The lineage whose trainer a command runs (None: not a training command of a known lineage)."""
    hits = [lin for lin in LINEAGES.values() if lin.claims(argv)]
    return hits[-1] if hits else None


def of_model(model_format: str, name: str | None = None) -> Lineage:
    """The lineage a model of ``model_format`` ("mxnet", "onnx") was trained by: ``name`` when given (checked: its
    export is of that format), else the one lineage whose export it is."""
    if name is not None:
        lin = get(name)
        if lin.model_format != model_format:
            raise MfnError(f"lineage {lin.name} does not export {model_format} models "
                           f"({'its export is ' + lin.model_format if lin.model_format else 'it exports none'})",
                           hint="give the lineage that trained the model: --lineage NAME")  # fmt: skip
        return lin
    hits = [lin for lin in LINEAGES.values() if lin.model_format == model_format]
    if len(hits) != 1:
        raise MfnError(f"which lineage trained this {model_format} model is not known: "
                       f"{', '.join(x.name for x in hits) or 'no lineage'} export{'s' if len(hits) == 1 else ''} "
                       f"{model_format} models", hint="say it: --lineage NAME")  # fmt: skip
    return hits[0]


def facts_of(argv: list[str]) -> TrainerFacts | None:
    lin = of_argv(argv)
    return lin.facts(argv) if lin else None


__all__ = [
    "DEFAULT",
    "LINEAGES",
    "Capabilities",
    "Lineage",
    "TrainerFacts",
    "facts_of",
    "get",
    "of_args",
    "of_argv",
    "of_model",
    "register",
]
