"""A third lineage, made up for the tests: its trainer (``caffe train``, a Python script that prints its log), its
log format ("CAFFE iter N lfw=A"), and its Lineage, registered from here with nothing changed in mfnpatch.

``register()`` adds it to the lineage and log-format registries; ``unregister()`` takes it out again."""

from __future__ import annotations

from typing import Any

from mfnpatch import lineages
from mfnpatch.lineages.base import Capabilities, Lineage, TrainerFacts
from mfnpatch.logs import formats
from mfnpatch.logs.events import Config, Verification
from mfnpatch.logs.formats import Item

NAME = "caffe_mfn"
# the trainer: "caffe train --iters N --every K": a verification of lfw every K iterations, rising
TRAINER = (
    "import sys\n"
    "a = sys.argv[1:]\n"
    "n, k = int(a[a.index('--iters') + 1]), int(a[a.index('--every') + 1])\n"
    "print('CAFFE start', flush=True)\n"
    "for i in range(k, n + 1, k):\n"
    "    print(f'CAFFE iter {i} lfw={0.5 + 0.4 * i / n:.3f}', flush=True)\n"
)


class CaffeLines:
    """Its log format: "CAFFE start" (its configuration) and "CAFFE iter N lfw=A" lines, read into the parser's
    events directly."""

    def line(self, raw: str) -> list[Item]:
        if raw == "CAFFE start":  # what it trains with
            return [Config(0, None, {"network": "mfn", "lineage": NAME})]
        parts = raw.split()
        if len(parts) == 4 and parts[:2] == ["CAFFE", "iter"] and "=" in parts[3]:
            target, acc = parts[3].split("=")
            return [Verification(0, None, target, int(parts[2]), float(acc), 0.0, None, None)]
        return [None]

    def close(self) -> list[Item]:
        return []


class Caffe(Lineage):
    name, title, framework = NAME, "a Caffe port of MobileFaceNet (tests)", "caffe"
    capabilities = Capabilities(resume="its solver state is not read", lr_sentinel="its log prints no lr", fit=None)
    defining, compared = ("network",), ("network",)

    def claims(self, argv: list[str]) -> bool:
        return "caffe" in argv and "train" in argv

    def _opt(self, argv: list[str], key: str) -> str | None:
        flag = f"--{key}"
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else None

    def args(self, argv: list[str]) -> dict[str, Any]:
        return {"network": "mfn", "lineage": NAME}

    def facts(self, argv: list[str]) -> TrainerFacts:
        iters, every = self._opt(argv, "iters"), self._opt(argv, "every")
        return TrainerFacts(self.name, 32, 2, int(every or 100), int(iters) if iters else None, None, None, None)

    def probe_argv(self, argv: list[str], prefix: str, steps: int) -> list[str]:
        return self.set(self.set(argv, "iters", str(steps)), "every", str(max(1, steps // 2)))

    def get(self, argv: list[str], key: str) -> str | None:
        return self._opt(argv, key)

    def set(self, argv: list[str], key: str, value: str) -> list[str]:
        flag, out = f"--{key}", list(argv)
        if flag in out[:-1]:
            out[out.index(flag) + 1] = value
            return out
        return [*out, flag, value]


def register() -> Lineage:
    lin = lineages.register(Caffe())
    formats.register_format(formats.LogFormat(NAME, lambda head: head.startswith("CAFFE "), CaffeLines))
    return lin


def unregister() -> None:
    formats.FORMATS.pop(NAME, None)
    lineages.LINEAGES.pop(NAME, None)


def recipe(pin: str, iters: int = 40, every: int = 10) -> str:
    """A recipe of the fixture upstream's pin whose one training stage runs the trainer."""
    script = TRAINER.replace("\n", "\\n").replace('"', '\\"')
    return f"""\
schema: 1
name: caffe
title: a third lineage
seed_update: "2018-05-16"
source: tests
pin: {pin}
patches: fake
environment: cpu
lineage: {NAME}
sentinels: {{chance: off}}
parameters:
  python: {{default: "${{python_exe}}"}}
stages:
  train:
    title: train with caffe
    cwd: src
    command: ["${{python}}", -c, "{script}", caffe, train, --iters, "{iters}", --every, "{every}"]
    ends_by_itself: true
    expect:
      - {{verified: [lfw], rounds_at_least: 2}}
      - {{metric: lfw, at: best, op: ">=", value: 0.8}}
"""
