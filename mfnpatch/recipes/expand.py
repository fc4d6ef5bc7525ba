"""A recipe expanded into a plan: every stage's exact argv, cwd, env, inputs, outputs, copies, stop point and
expectations, for a profile and parameter overrides (``--set KEY=VALUE``; ``seed`` is the run seed).

Templates are rendered here, once (``mfnpatch.recipes.template``): a stage's inputs stay slots in its command
and copies, filled by ``PlannedStage.with_inputs`` — from the plan for an input that names a checkpoint by
number (``PREFIX,N``), from the earlier stage's log at run time for the others (by step, best, last). Stop
points a stage does not declare are derived from what later stages need. Pure: no processes, no files written.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any

from mfnpatch.checkpoint import StopPoint
from mfnpatch.emulator import arm_cpus
from mfnpatch.logs.expected import Expectation
from mfnpatch.logs.sentinels import Sentinels, all_off
from mfnpatch.recipes import RecipeError
from mfnpatch.recipes.fit import FitDecision, Rule, fit_parameters
from mfnpatch.recipes.recipe import (
    BUILTINS,
    DEFAULT_SEED,
    InputRef,
    LoadedRecipe,
    Recipe,
    Stage,
    _deps,
    _params,
    check_resource,
    parse_input,
)
from mfnpatch.recipes.template import VAR, Scope, Text, fill, render_command, render_env

# --------------------------------------------------------------------------------------------
# Expansion


@dataclass
class PlannedInput:
    name: str
    ref: InputRef
    value: str | None  # "PREFIX,N" when the checkpoint number is known before running
    describe: str


@dataclass
class PlannedData:
    """A stage's training data, rendered: checked before the run (or once the stage that makes it ends)."""

    dir: str  # relative to the stage's cwd, or absolute
    targets: list[str]
    variant: str | None  # what the stage's expected results were measured on; None or "any": any dataset

    def to_dict(self) -> dict:
        return {"dir": self.dir, "targets": self.targets, "variant": self.variant}


@dataclass
class PlannedStage:
    name: str
    title: str
    kind: str
    skipped: str | None  # why, when the stage does not run
    cwd: str  # relative to the tree
    args: list[Text]  # the command, rendered, its inputs as slots
    env: dict[str, str]
    inputs: dict[str, PlannedInput]
    outputs: dict[str, str]
    copy_args: list[tuple[Text, Text]]  # (checkpoint, to), rendered, inputs as slots
    stop: StopPoint | None
    expect: list[Expectation]
    seed_command: str | None
    stands_in: str | None
    note: str | None
    depends: list[str]
    template: Stage = field(repr=False, default=None)  # type: ignore[assignment]
    resources: dict[str, str] = field(default_factory=dict)  # rendered; only what is set
    data: PlannedData | None = None
    filled: dict[str, str] = field(default_factory=dict)  # the inputs the slots are filled with
    # what is watched while it runs (training stages): the defaults, then the recipe's, the profile's, the
    # stage's and the profile's stage's sentinels: settings
    sentinels: Sentinels = field(default_factory=all_off)

    def _values(self) -> dict[str, str]:
        known = {k: i.value if i.value is not None else f"<{k}: {i.describe}>" for k, i in self.inputs.items()}
        return {**known, **self.filled}

    @property
    def argv(self) -> list[str]:
        """The exact command: inputs filled (``with_inputs``), else as the plan knows them (or a placeholder)."""
        values = self._values()
        return [fill(a, values) for a in self.args]

    @property
    def copies(self) -> list[tuple[str, str]]:
        values = self._values()
        return [(fill(a, values), fill(b, values)) for a, b in self.copy_args]

    def with_inputs(self, inputs: dict[str, str]) -> PlannedStage:
        """The stage with its inputs resolved (from the earlier stages' logs): nothing is rendered again."""
        return replace(self, filled={**self.filled, **inputs})

    def with_argv(self, argv: list[str], stop: StopPoint | None) -> PlannedStage:
        """The stage running another command (a resumed segment's, made from this one's argv)."""
        return replace(self, args=[(a,) for a in argv], filled={}, stop=stop)

    def with_env(self, env: dict[str, str]) -> PlannedStage:
        return replace(self, env=env)

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + " ".join(shlex.quote(a) for a in self.argv)

    def tokens(self) -> list[str]:
        """The command as tokens, env assignments first (to compare with a seed command)."""
        return [f"{k}={v}" for k, v in self.env.items()] + list(self.argv)


@dataclass
class Plan:
    recipe: Recipe
    loaded: LoadedRecipe
    profile: str | None
    parameters: dict[str, Any]
    environment: str
    patches: str
    stages: list[PlannedStage]
    hazards: list[str]
    seed: int | None = DEFAULT_SEED  # the run seed (None: unseeded), see mfnpatch/runs/seedhook
    fit: FitDecision | None = None  # the GPUs and batch (recipes/fit.py), for a recipe with a fit: section

    def stage(self, name: str) -> PlannedStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise RecipeError(
            f"no stage '{name}' in {self.recipe.name}", hint=f"stages: {', '.join(s.name for s in self.stages)}"
        )

    def sources(self) -> dict[str, str]:
        """parameter -> where its default comes from (the recipe's ``source`` fields)."""
        return {k: p.source for k, p in _params(self.recipe).items() if p.source}

    def to_dict(self) -> dict:
        return {
            "sources": self.sources(),
            "recipe": self.recipe.name,
            "path": str(self.loaded.path),
            "sha256": self.loaded.sha256,
            "profile": self.profile,
            "pin": self.recipe.pin,
            "patches": self.patches,
            "environment": self.environment,
            "lineage": self.recipe.lineage,
            "parameters": self.parameters,
            "seed": self.seed,
            "hazards": self.hazards,
            "fit": self.fit.to_dict() if self.fit else None,
            "stages": [
                {
                    "name": s.name,
                    "title": s.title,
                    "skipped": s.skipped,
                    "cwd": s.cwd,
                    "argv": s.argv,
                    "env": s.env,
                    "shell": s.shell(),
                    "inputs": {k: {"value": i.value, "from": i.describe} for k, i in s.inputs.items()},
                    "outputs": s.outputs,
                    "copy": [{"checkpoint": a, "to": b} for a, b in s.copies],
                    "stop": s.stop.model_dump() if s.stop else None,
                    "seed_command": s.seed_command,
                    "stands_in": s.stands_in,
                    "resources": s.resources,
                    "note": s.note,
                    "depends": s.depends,
                    "data": s.data.to_dict() if s.data else None,
                }
                for s in self.stages
            ],
        }


def coerce(value: Any, typ: str, name: str) -> Any:
    if value is None:
        return None
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(value)
            return f
        if typ == "bool":
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError):
        raise RecipeError(f"parameter {name}: {value!r} is not a {typ}") from None


def _typed(value: Any, typ: str, name: str) -> Any:
    """A rendered parameter as its declared type (``${cpu_free}`` -> 2 for an int), so a value given with --set
    and the same value from a template record alike; a placeholder of `recipe plan` (``<cpu_free>``) stays."""
    if isinstance(value, str) and typ in ("int", "float", "bool") and not re.search(r"<[a-z_]+>", value):
        try:
            return coerce(value, typ, name)
        except RecipeError:
            return value
    return value


def parse_seed(value: Any) -> int | None:
    """``--set seed=N``: the run seed; ``none``/``off`` runs unseeded (as the pinned code alone does)."""
    text = str(value).strip().lower()
    if text in ("none", "off", "unseeded"):
        return None
    try:
        n = int(text)
    except ValueError:
        raise RecipeError(
            f"--set seed={value}: not an integer", hint="write --set seed=N (N >= 0), or --set seed=none"
        ) from None
    if not 0 <= n < 2**32:
        raise RecipeError(f"--set seed={value}: out of range", hint="a seed is an integer from 0 to 4294967295")
    return n


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise RecipeError(f"--set {p!r}: write KEY=VALUE", hint="e.g. --set data_dir=/data/faces_ms1m_112x112")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out


@dataclass
class FitRequest:
    """``--gpus``/``--fit`` and what the machine says about its GPUs (nvidia-smi), for ``recipes.fit``."""

    rule: Rule | None = None
    gpus: list[str] | None = None
    memory_mib: float | None = None
    gpu_name: str | None = None


def expand(
    loaded: LoadedRecipe,
    profile: str | None = None,
    overrides: dict[str, str] | None = None,
    builtins: dict[str, Any] | None = None,
    fit: FitRequest | None = None,
) -> Plan:
    r = loaded.recipe
    if profile is not None and profile not in r.profiles:
        raise RecipeError(
            f"recipe {r.name} has no profile '{profile}'", hint=f"profiles: {', '.join(r.profiles) or 'none'}"
        )
    prof = r.profiles.get(profile) if profile else None
    specs = _params(r)
    overrides = dict(overrides or {})
    seed = parse_seed(overrides.pop("seed")) if "seed" in overrides and "seed" not in specs else DEFAULT_SEED
    values: dict[str, Any] = {k: p.default for k, p in specs.items()}
    if prof:
        values.update(prof.parameters)
    for k, v in overrides.items():
        if k not in specs:
            raise RecipeError(
                f"--set {k}: recipe {r.name} has no parameter '{k}'", hint=f"parameters: {', '.join(specs)}"
            )
        for var in VAR.findall(str(v)):  # a value may use parameters and built-ins, as a recipe's defaults may
            if var not in specs and var not in BUILTINS:
                raise RecipeError(
                    f"--set {k}={v}: unknown parameter '${{{var}}}' (a value may use parameters and built-ins only)",
                    hint=f"parameters: {', '.join(specs)}; built-ins: {', '.join(BUILTINS)}",
                )
        values[k] = v
    values = {
        k: (coerce(v, specs[k].type, k) if not (isinstance(v, str) and VAR.search(v)) else v) for k, v in values.items()
    }
    decision = None
    fit = fit or FitRequest()
    if r.fit is not None:  # on typed values; what it sets is typed the same way
        decision = fit_parameters(r.fit, values, fit.rule, fit.gpus, fit.memory_mib, fit.gpu_name,
                                  frozenset(overrides))  # fmt: skip
        values.update({k: coerce(v, specs[k].type, k) for k, v in decision.overrides.items()})
    elif fit.rule is not None or fit.gpus is not None:
        raise RecipeError(f"recipe {r.name} has no fit: section, so --gpus and --fit cannot change it",
                          hint="set its GPU parameters with --set instead")  # fmt: skip
    scope = Scope(values, {
        "run_dir": "<run_dir>", "tree": "<tree>", "cpu_count": "<cpu_count>", "cpu_free": "<cpu_free>",
        "mfnpatch": ["mfnpatch"], "python_exe": "python", "arm_cpus": arm_cpus(), **(builtins or {}),
    })  # fmt: skip
    resolved_params = {k: _typed(scope.param(k), specs[k].type, k) for k in values}
    stages: list[PlannedStage] = []
    consumers: dict[str, list[tuple[str, int]]] = {}
    for sname, st in r.stages.items():
        pst = prof.stages.get(sname) if prof else None
        skipped = None
        if st.when is not None:
            on = coerce(scope.render(st.when), "bool", f"stages.{sname}.when")
            if not on:
                skipped = f"when: {st.when} is false"
        inputs: dict[str, PlannedInput] = {}
        for key, raw in st.inputs.items():
            ref = parse_input(raw)
            out = r.stages[ref.stage].outputs.get("checkpoint")
            prefix = scope.outputs.get(ref.stage, {}).get("checkpoint") or (scope.render(out) if out else None)
            if ref.checkpoint is not None:
                n = scope.number(ref.checkpoint, f"stages.{sname}.inputs.{key}")
                ref = InputRef(stage=ref.stage, checkpoint=n)
                value = f"{prefix},{n}" if prefix else None
                desc = f"{ref.stage} checkpoint {n} (checked in {ref.stage}'s log)"
                consumers.setdefault(ref.stage, []).append((sname, n))
            elif ref.step is not None:
                ref = InputRef(stage=ref.stage, step=scope.number(ref.step, f"stages.{sname}.inputs.{key}"))
                value, desc = None, f"{ref.stage}'s checkpoint saved at step {ref.step}, from its log"
            elif ref.best is not None:
                tie = ", the latest of ties" if ref.tie == "latest" else ""
                value, desc = None, f"{ref.stage}'s checkpoint with the best {ref.best}{tie}, from its log"
            else:
                value, desc = None, f"{ref.stage}'s last checkpoint, from its log"
            inputs[key] = PlannedInput(key, ref, value, desc)
            scope.inputs[key] = value if value is not None else f"<{key}: {desc}>"  # how titles and env show it
        outputs = {k: scope.render(v) for k, v in st.outputs.items()}
        scope.outputs[sname] = outputs
        stop_src = (pst.stop if pst and pst.stop else None) or st.stop
        stop = None
        if stop_src is not None:
            why = "the recipe's stop point" + (f" (profile {profile})" if pst and pst.stop else "")
            if stop_src.checkpoint is not None:
                n = scope.number(stop_src.checkpoint, f"stages.{sname}.stop")
                stop = StopPoint(kind="checkpoint", value=n, why=why)
            elif stop_src.step is not None:
                stop = StopPoint(kind="step", value=scope.number(stop_src.step, f"stages.{sname}.stop"), why=why)
        env = render_env({**st.env, **(pst.env if pst else {})}, scope)
        res: dict[str, str] = {}
        for src in (st.resources, pst.resources if pst else None):
            for k, v in (src.model_dump(exclude_none=True) if src else {}).items():
                res[k] = check_resource(scope.render(str(v)), f"stage {sname}: resource {k}")
        args = render_command(st.command, scope)
        data = None
        if st.data is not None:
            variant = scope.render(st.data.variant) if st.data.variant is not None else None
            data = PlannedData(scope.render(st.data.dir),
                               [t.strip() for t in scope.render(st.data.targets).split(",") if t.strip()],
                               variant or None)  # fmt: skip
        copy_args = [(scope.parts(c.checkpoint), scope.parts(c.to)) for c in st.copy_]
        sentinels = all_off()
        if st.kind == "train":
            sentinels = Sentinels()
            for spec in (r.sentinels, prof.sentinels if prof else None, st.sentinels, pst.sentinels if pst else None):
                sentinels = sentinels.merged(spec)
        scope.inputs = {}
        stages.append(
            PlannedStage(
                name=sname,
                title=scope.render(st.title),
                kind=st.kind,
                skipped=skipped,
                cwd=st.cwd,
                args=args,
                env=env,
                inputs=inputs,
                outputs=outputs,
                copy_args=copy_args,
                stop=stop,
                expect=[
                    e.model_copy(update={"json_file": scope.render(e.json_file)}) if e.json_file else e
                    for e in (pst.expect if pst and pst.expect is not None else st.expect)
                ],
                seed_command=st.seed_command,
                stands_in=st.stands_in,
                note=st.note,
                depends=sorted(_deps(st)),
                template=st,
                resources={k: v for k, v in res.items() if v != ""},  # "0" GPUs is kept: it asks for none
                data=data,
                sentinels=sentinels,
            )
        )
    # stop points derived from what later stages need
    for s in stages:
        needs = consumers.get(s.name, [])
        if s.stop is None and needs and s.kind == "train":
            n = max(x for _, x in needs)
            users = ", ".join(f"{u} uses checkpoint {x}" for u, x in needs)
            s.stop = StopPoint(kind="checkpoint", value=n, why=f"derived: {users}")
    plan = Plan(
        recipe=r,
        loaded=loaded,
        profile=profile,
        parameters=resolved_params,
        environment=(prof.environment if prof and prof.environment else r.environment),
        patches=(prof.patches if prof and prof.patches else r.patches),
        stages=stages,
        hazards=[],
        seed=seed,
        fit=decision,
    )
    plan.hazards = hazards(plan) + (decision.warnings if decision else [])
    return plan


def hazards(plan: Plan) -> list[str]:
    out = []
    active = [s for s in plan.stages if not s.skipped]
    by_prefix: dict[str, list[PlannedStage]] = {}
    for s in active:
        p = s.outputs.get("checkpoint")
        if p:
            by_prefix.setdefault(p, []).append(s)
    for prefix, ss in by_prefix.items():
        if len(ss) > 1:
            first, *later = ss
            for s in later:
                n = s.stop.value if s.stop and s.stop.kind == "checkpoint" else None
                rng = f"1…{n}" if n else "1…N"
                m = VAR.fullmatch(s.template.outputs.get("checkpoint", "")) if s.template else None
                how = f" (parameter {m.group(1)})" if m and m.group(1) in plan.parameters else ""
                out.append(
                    f"stage {s.name} writes to {prefix}, the prefix of stage {first.name}: it overwrites "
                    f"{first.name}'s checkpoints {rng}. Give it its own prefix{how} to keep them."
                )
    for s in active:
        if s.kind == "train" and s.stop is None and not (s.template and s.template.ends_by_itself):
            out.append(f"stage {s.name} has no stop point and nothing uses its checkpoints: it trains until stopped")
    return out
