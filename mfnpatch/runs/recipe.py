"""Recipes: one dated version of the seed's training plan as a typed file, expanded into exact commands.

A recipe names the pin and patch sets it needs, its environment, typed parameters, and stages. A stage
is a command (an argument list, templated), a cwd inside the patched tree, env, inputs (checkpoints of
earlier stages, resolved from their logs at run time), outputs, a stop point and expectations.
Profiles (e.g. ``smoke``) are data: parameter values and per-stage stop points and expectations.

Templates: ``${name}`` is a parameter or a built-in (``run_dir``, ``tree``, ``cpu_count``, ``cpu_free`` (the
cores not busy with other work when the run starts), ``mfnpatch``),
``${inputs.NAME}`` an input of the stage, ``${stages.STAGE.outputs.NAME}`` an output of an earlier stage.
A command item ``{flag: --verbose, value: "${verbose}"}`` is left out when its value is empty or null,
so a recipe can offer options the seed's commands do not pass. An env value that renders empty is
still set (``CUDA_VISIBLE_DEVICES=''`` means the CPU), except ``null`` values, which are left out.

Everything here is pure: no processes, no files written.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import UnsafePath, confined, sha256_bytes
from mfnpatch.resources import data_dir
from mfnpatch.schema import SchemaError, Strict, load_yaml, locate, validate

VAR = re.compile(r"\$\{([A-Za-z_][\w.-]*)\}")
DEFAULT_SEED = 0  # every run is seeded unless --set seed=none
BUILTINS = ("run_dir", "tree", "cpu_count", "cpu_free", "mfnpatch", "python_exe")


class RecipeError(MfnError):
    pass


# --------------------------------------------------------------------------------------------
# Schema


class Param(Strict):
    default: Any = None
    type: Literal["str", "int", "float", "bool", "path"] = "str"
    help: str = ""
    source: str = Field(default="", description="where the default comes from: FILE:LINE and the quoted text")


class FlagArg(Strict):
    flag: str
    value: str


class InputRef(Strict):
    """A checkpoint of an earlier stage: by save number, by step, the best for a target, or the last."""

    stage: str
    checkpoint: int | str | None = None
    step: int | str | None = None
    best: str | None = None
    last: bool = False
    tie: Literal["earliest", "latest"] = Field(
        default="earliest", description="with best: which of checkpoints with the same best value"
    )

    @model_validator(mode="after")
    def _one(self):
        n = sum(x is not None for x in (self.checkpoint, self.step, self.best)) + int(self.last)
        if n != 1:
            raise ValueError("give exactly one of checkpoint, step, best, last")
        if self.tie != "earliest" and self.best is None:
            raise ValueError("tie applies to best only")
        return self


class Stop(Strict):
    checkpoint: int | str | None = None
    step: int | str | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.checkpoint is None) == (self.step is None):
            raise ValueError("give exactly one of checkpoint, step")
        return self


class CopySpec(Strict):
    checkpoint: str = Field(description="PREFIX,EPOCH to copy (symbol and params)")
    to: str = Field(description="the new prefix; the copy keeps the epoch number")


class Expectation(Strict):
    """One check at the end of a stage (evaluated by mfnpatch.logs.verdicts)."""

    metric: str | None = Field(default=None, description="a verification target (lfw ...) or train_acc")
    at: str = Field(default="best", description="best | last | step:N")
    op: Literal[">=", "<=", "~", "rises"] = ">="
    value: float | str | None = None
    from_: str | None = Field(default=None, alias="from", description="expected.yaml entry: targets.arcface.lfw")
    tolerance: float | None = None
    verified: list[str] | None = Field(default=None, description="targets that must be verified")
    rounds_at_least: int = 1
    json_file: str | None = Field(default=None, alias="json", description="a JSON result file the stage writes")
    key: str | None = None
    reference: str | None = Field(default=None, description="a reference log to verify the stage's log against")
    required: bool = True
    note: str = ""


class Resources(Strict):
    """What a stage asks a cluster for (the Slurm executor); values may use ${parameters}. Flags of
    `recipe run --executor slurm` override them."""

    gpus_per_node: int | str | None = None
    cpus_per_task: int | str | None = None
    mem: str | None = None
    time: str | None = Field(default=None, description="Slurm time limit, e.g. 3-00:00:00")


class Stage(Strict):
    title: str
    kind: Literal["train", "tool"] = "train"
    when: str | None = None
    cwd: str = "src"
    command: list[str | FlagArg]
    env: dict[str, str | None] = Field(default_factory=dict)
    inputs: dict[str, InputRef | str] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    copy_: list[CopySpec] = Field(default_factory=list, alias="copy")
    stop: Stop | None = None
    expect: list[Expectation] = Field(default_factory=list)
    seed_command: str | None = None
    stands_in: str | None = None
    note: str | None = None
    resources: Resources | None = None


class ProfileStage(Strict):
    stop: Stop | None = None
    expect: list[Expectation] | None = None
    env: dict[str, str | None] = Field(default_factory=dict)
    resources: Resources | None = None


class Profile(Strict):
    description: str
    environment: str | None = None
    patches: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, ProfileStage] = Field(default_factory=dict)


class Recipe(Strict):
    schema_: Literal[1] = Field(alias="schema")
    name: str
    title: str
    seed_update: str
    source: str
    pin: str
    patches: str
    environment: str
    description: str = ""
    parameters: dict[str, Param | str | int | float | bool | None] = Field(default_factory=dict)
    stages: dict[str, Stage]
    profiles: dict[str, Profile] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Loading and validation


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    sha256: str
    node: yaml.Node | None

    def where(self, loc: tuple) -> str:
        line, col, _ = locate(self.node, loc)
        return f"{self.path}:{line}:{col}"


def find_recipe(spec: str) -> Path:
    """A path, or a bundled recipe by name (may16 or may16.yaml)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    bundled = data_dir("recipes")
    for cand in (bundled / spec, bundled / f"{spec}.yaml"):
        if cand.is_file():
            return cand
    names = ", ".join(sorted(x.stem for x in bundled.glob("*.yaml") if x.stem != "expected")) or "none"
    raise RecipeError(f"no recipe {spec!r} (not a file, not a bundled recipe)", hint=f"bundled recipes: {names}")


def load_recipe(spec: str) -> LoadedRecipe:
    path = find_recipe(spec)
    data, node = load_yaml(path)
    if data is None:
        raise SchemaError(f"{path}:1:1: empty recipe")
    recipe = validate(Recipe, data, path, node, hint="see mfnpatch recipe show may16 for a complete recipe")
    loaded = LoadedRecipe(recipe, path, sha256_bytes(path.read_bytes()), node)
    check_references(loaded)
    return loaded


def _params(r: Recipe) -> dict[str, Param]:
    out = {}
    for k, v in r.parameters.items():
        out[k] = v if isinstance(v, Param) else Param(default=v, type=_infer_type(v))
    return out


def _infer_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    return "str"


def _templated(stage: Stage) -> list[tuple[tuple, str]]:
    """(location under the stage, text) of every string a stage renders."""
    out: list[tuple[tuple, str]] = []
    for i, item in enumerate(stage.command):
        if isinstance(item, FlagArg):
            out.append((("command", i, "value"), item.value))
        else:
            out.append((("command", i), item))
    for k, v in stage.env.items():
        if v is not None:
            out.append((("env", k), v))
    for k, v in stage.outputs.items():
        out.append((("outputs", k), v))
    for i, c in enumerate(stage.copy_):
        out += [(("copy", i, "checkpoint"), c.checkpoint), (("copy", i, "to"), c.to)]
    for k, ref in stage.inputs.items():
        if isinstance(ref, str):
            out.append((("inputs", k), ref))
        else:
            for f in ("checkpoint", "step"):
                v = getattr(ref, f)
                if isinstance(v, str):
                    out.append((("inputs", k, f), v))
    if stage.stop is not None:
        for f in ("checkpoint", "step"):
            v = getattr(stage.stop, f)
            if isinstance(v, str):
                out.append((("stop", f), v))
    if stage.when:
        out.append((("when",), stage.when))
    for i, e in enumerate(stage.expect):
        if e.json_file:
            out.append((("expect", i, "json"), e.json_file))
    return out


def parse_input(ref: InputRef | str) -> InputRef:
    """'softmax@60', 'softmax@step:120000', 'softmax@best:lfw', 'softmax@last' -> InputRef."""
    if isinstance(ref, InputRef):
        return ref
    m = re.fullmatch(r"([A-Za-z_][\w-]*)@(?:(step):(.+)|(best):([\w-]+)|(last)|(.+))", ref.strip())
    if not m:
        raise ValueError(f"cannot read input {ref!r}: write STAGE@N, STAGE@step:N, STAGE@best:TARGET or STAGE@last")
    stage = m.group(1)
    if m.group(2):
        return InputRef(stage=stage, step=_intish(m.group(3)))
    if m.group(4):
        return InputRef(stage=stage, best=m.group(5))
    if m.group(6):
        return InputRef(stage=stage, last=True)
    return InputRef(stage=stage, checkpoint=_intish(m.group(7)))


def _intish(s: str) -> int | str:
    return int(s) if s.isdigit() else s


def check_references(lr: LoadedRecipe) -> None:
    """Every ${...} names a parameter, a built-in, an input of its stage or an output of an earlier stage;
    every input names an earlier stage; profiles name existing stages and parameters."""
    r = lr.recipe
    params = _params(r)
    names = list(r.stages)
    check_confinement(lr)
    for si, (sname, stage) in enumerate(r.stages.items()):
        earlier = set(names[:si])
        for key, ref in stage.inputs.items():
            loc = ("stages", sname, "inputs", key)
            try:
                ref = parse_input(ref)
            except ValueError as e:
                raise RecipeError(f"{lr.where(loc)}: {e}") from None
            if ref.stage not in r.stages:
                raise RecipeError(
                    f"{lr.where(loc)}: input '{key}' names unknown stage '{ref.stage}'",
                    hint=f"stages: {', '.join(names)}",
                )
            if ref.stage not in earlier:
                _cycle_or_order(lr, sname, ref.stage, loc)
        for sub, text in _templated(stage):
            for var in VAR.findall(text):
                _check_var(lr, params, sname, stage, earlier, var, ("stages", sname, *sub))
    for pname, p in params.items():
        if isinstance(p.default, str):
            for var in VAR.findall(p.default):
                if var not in params and var not in BUILTINS:
                    raise RecipeError(f"{lr.where(('parameters', pname))}: unknown parameter '${{{var}}}'")
    for prof, profile in r.profiles.items():
        for key in profile.parameters:
            if key not in params:
                raise RecipeError(
                    f"{lr.where(('profiles', prof, 'parameters', key))}: profile '{prof}' sets unknown parameter "
                    f"'{key}'",
                    hint=f"parameters: {', '.join(params)}",
                )
        for sname in profile.stages:
            if sname not in r.stages:
                raise RecipeError(
                    f"{lr.where(('profiles', prof, 'stages', sname))}: profile '{prof}' names unknown stage '{sname}'",
                    hint=f"stages: {', '.join(names)}",
                )
    _params_acyclic(lr, params)


STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")  # a file name: its log is stages/<name>.log
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESOURCE_VALUE = re.compile(r"^[A-Za-z0-9_.:,=@/+%-]*$")  # Slurm values: 3-00:00:00, 16G, 1, gpu:a100:2


def check_resource(value: str, what: str) -> str:
    """A value that goes into an sbatch script line: one token, no whitespace, newline or shell character."""
    if not RESOURCE_VALUE.match(value) or value.startswith("-"):
        raise RecipeError(
            f"{what}: {value!r} is not a Slurm value (letters, digits and . : , = @ / + % - only, no spaces "
            "or newlines)",
            hint="e.g. time 3-00:00:00, mem 32G, gpus_per_node 1",
        )
    return value


def check_confinement(lr: LoadedRecipe) -> None:
    """What a recipe names stays where it belongs: stage names are file names (their logs go to the run's
    stages/), cwds are relative paths inside the tree, env keys are variable names, and resource values are
    single Slurm tokens (they are written into sbatch scripts)."""
    r = lr.recipe
    for sname, stage in r.stages.items():
        if not STAGE_NAME.match(sname):
            raise RecipeError(
                f"{lr.where(('stages', sname))}: stage name {sname!r} is not a plain name",
                hint="letters, digits, _ and - (it names the stage's log file, stages/<name>.log)",
            )
        try:
            confined(stage.cwd, "cwd")
        except UnsafePath as e:
            raise RecipeError(
                f"{lr.where(('stages', sname, 'cwd'))}: stage {sname}: {e.message}",
                hint="a cwd is a directory inside the patched tree, relative to it (src, deploy)",
            ) from None
        envs = [(("stages", sname, "env"), stage.env)]
        envs += [(("profiles", p, "stages", sname, "env"), prof.stages[sname].env)
                 for p, prof in r.profiles.items() if sname in prof.stages]  # fmt: skip
        for loc, env in envs:
            for key in env:
                if not ENV_KEY.match(key):
                    raise RecipeError(
                        f"{lr.where((*loc, key))}: env key {key!r} is not a variable name",
                        hint="letters, digits and _, not starting with a digit (e.g. OMP_NUM_THREADS)",
                    )
        for loc, res in [(("stages", sname, "resources"), stage.resources)] + [
            (("profiles", p, "stages", sname, "resources"), prof.stages[sname].resources)
            for p, prof in r.profiles.items()
            if sname in prof.stages
        ]:
            for k, v in (res.model_dump(exclude_none=True) if res else {}).items():
                if isinstance(v, str) and VAR.search(v):
                    continue  # checked once rendered (expand)
                check_resource(str(v), f"{lr.where((*loc, k))}: resource {k}")


def _check_var(lr, params, sname, stage, earlier, var, loc) -> None:
    where = lr.where(loc)
    if var in params or var in BUILTINS:
        return
    parts = var.split(".")
    if parts[0] == "inputs":
        if len(parts) == 2 and parts[1] in stage.inputs:
            return
        raise RecipeError(
            f"{where}: '${{{var}}}': stage '{sname}' has no input '{'.'.join(parts[1:])}'",
            hint=f"its inputs: {', '.join(stage.inputs) or 'none'}",
        )
    if parts[0] == "stages":
        if len(parts) != 4 or parts[2] != "outputs":
            raise RecipeError(f"{where}: '${{{var}}}': write ${{stages.STAGE.outputs.NAME}}")
        other = parts[1]
        if other not in lr.recipe.stages:
            raise RecipeError(
                f"{where}: '${{{var}}}' names unknown stage '{other}'", hint=f"stages: {', '.join(lr.recipe.stages)}"
            )
        if other not in earlier:
            _cycle_or_order(lr, sname, other, loc)
        if parts[3] not in lr.recipe.stages[other].outputs:
            raise RecipeError(
                f"{where}: '${{{var}}}': stage '{other}' has no output '{parts[3]}'",
                hint=f"its outputs: {', '.join(lr.recipe.stages[other].outputs) or 'none'}",
            )
        return
    raise RecipeError(
        f"{where}: unknown parameter '${{{var}}}'",
        hint=f"parameters: {', '.join(params) or 'none'}; built-ins: {', '.join(BUILTINS)}",
    )


def _deps(stage: Stage) -> set[str]:
    out = set()
    for ref in stage.inputs.values():
        try:
            out.add(parse_input(ref).stage)
        except ValueError:
            pass
    for _, text in _templated(stage):
        for var in VAR.findall(text):
            parts = var.split(".")
            if parts[0] == "stages" and len(parts) > 1:
                out.add(parts[1])
    return out


def _cycle_or_order(lr: LoadedRecipe, sname: str, other: str, loc: tuple) -> None:
    stages = lr.recipe.stages
    # a path other -> ... -> sname means a cycle
    seen, stack = {other: [other]}, [other]
    while stack:
        cur = stack.pop()
        for d in _deps(stages[cur]):
            if d == sname:
                cycle = " -> ".join([sname, *seen[cur], sname])
                raise RecipeError(
                    f"{lr.where(loc)}: stages form a cycle: {cycle}",
                    hint="a stage can only use stages that run before it",
                )
            if d in stages and d not in seen:
                seen[d] = [*seen[cur], d]
                stack.append(d)
    raise RecipeError(
        f"{lr.where(loc)}: stage '{sname}' uses '{other}', which comes after it",
        hint="stages run in the order they are written; move it up",
    )


def _params_acyclic(lr: LoadedRecipe, params: dict[str, Param]) -> None:
    def visit(name, path):
        d = params[name].default
        for var in VAR.findall(d) if isinstance(d, str) else ():
            if var in path:
                raise RecipeError(
                    f"{lr.where(('parameters', name))}: parameters refer to each other in a cycle: "
                    + " -> ".join([*path, var])
                )
            if var in params:
                visit(var, [*path, var])

    for n in params:
        visit(n, [n])


# --------------------------------------------------------------------------------------------
# Expansion


@dataclass
class PlannedInput:
    name: str
    ref: InputRef
    value: str | None  # "PREFIX,N" when the checkpoint number is known before running
    describe: str


@dataclass
class PlannedStage:
    name: str
    title: str
    kind: str
    skipped: str | None  # why, when the stage does not run
    cwd: str  # relative to the tree
    argv: list[str]
    env: dict[str, str]
    inputs: dict[str, PlannedInput]
    outputs: dict[str, str]
    copies: list[tuple[str, str]]
    stop: tuple[str, int] | None  # ("checkpoint", 60) or ("step", 120000)
    stop_why: str
    expect: list[Expectation]
    seed_command: str | None
    stands_in: str | None
    note: str | None
    depends: list[str]
    template: Stage = field(repr=False, default=None)  # type: ignore[assignment]
    resources: dict[str, str] = field(default_factory=dict)  # rendered; only what is set

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
    seed: int | None = DEFAULT_SEED  # the run seed (None: unseeded), see mfnpatch/seedhook

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
            "parameters": self.parameters,
            "seed": self.seed,
            "hazards": self.hazards,
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
                    "stop": {"kind": s.stop[0], "value": s.stop[1], "why": s.stop_why} if s.stop else None,
                    "seed_command": s.seed_command,
                    "stands_in": s.stands_in,
                    "resources": s.resources,
                    "note": s.note,
                    "depends": s.depends,
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
            return float(value)
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


class Scope:
    """Values for ${...}: parameters (rendered recursively), built-ins, inputs, earlier stages' outputs."""

    def __init__(self, params: dict[str, Any], builtins: dict[str, Any]):
        self.raw = params
        self.builtins = builtins
        self.rendered: dict[str, Any] = {}
        self.outputs: dict[str, dict[str, str]] = {}
        self.inputs: dict[str, str] = {}
        self._rendering: list[str] = []  # parameters being rendered (a cycle is an error, not a recursion)

    def param(self, name: str) -> Any:
        if name not in self.rendered:
            if name in self._rendering:
                chain = " -> ".join([*self._rendering[self._rendering.index(name) :], name])
                raise RecipeError(
                    f"parameter {name} refers to itself: {chain}",
                    hint="a value may use other parameters, never itself (directly or through others)",
                )
            v = self.raw[name]
            self._rendering.append(name)
            try:
                self.rendered[name] = self.render(v) if isinstance(v, str) else v
            finally:
                self._rendering.pop()
        return self.rendered[name]

    def lookup(self, var: str) -> Any:
        if var in self.raw:
            return self.param(var)
        if var in self.builtins:
            return self.builtins[var]
        parts = var.split(".")
        if parts[0] == "inputs":
            return self.inputs.get(parts[1], f"<{parts[1]}: resolved at run time>")
        if parts[0] == "stages":
            return self.outputs.get(parts[1], {}).get(parts[3], f"<{var}>")
        raise RecipeError(f"unknown parameter '${{{var}}}'")

    def render(self, text: str) -> str:
        def sub(m):
            v = self.lookup(m.group(1))
            if isinstance(v, list):
                return " ".join(v)
            return "" if v is None else str(v)

        return VAR.sub(sub, text)

    def is_null(self, text: str) -> bool:
        """A template that is exactly one variable whose value is null/empty."""
        m = VAR.fullmatch(text.strip())
        return bool(m) and self.lookup(m.group(1)) in (None, "")


def render_argv(stage: Stage, scope: Scope) -> list[str]:
    argv: list[str] = []
    for item in stage.command:
        if isinstance(item, FlagArg):
            if scope.is_null(item.value):
                continue
            argv += [item.flag, scope.render(item.value)]
        elif VAR.fullmatch(item) and isinstance(scope.lookup(VAR.fullmatch(item).group(1)), list):
            argv += list(scope.lookup(VAR.fullmatch(item).group(1)))
        else:
            argv.append(scope.render(item))
    return argv


def render_env(env: dict[str, str | None], scope: Scope) -> dict[str, str]:
    out = {}
    for k, v in env.items():
        if v is None or (VAR.fullmatch(v.strip()) and scope.lookup(VAR.fullmatch(v.strip()).group(1)) is None):
            continue
        out[k] = scope.render(v)
    return out


def _int_or_render(v: int | str | None, scope: Scope, what: str) -> int | None:
    if v is None or isinstance(v, int):
        return v
    text = scope.render(v)
    try:
        return int(text)
    except ValueError:
        raise RecipeError(f"{what}: {text!r} is not a number") from None


def expand(
    loaded: LoadedRecipe,
    profile: str | None = None,
    overrides: dict[str, str] | None = None,
    builtins: dict[str, Any] | None = None,
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
        values[k] = v
    values = {
        k: (coerce(v, specs[k].type, k) if not (isinstance(v, str) and VAR.search(v)) else v) for k, v in values.items()
    }
    scope = Scope(values, {
        "run_dir": "<run_dir>", "tree": "<tree>", "cpu_count": "<cpu_count>", "cpu_free": "<cpu_free>",
        "mfnpatch": ["mfnpatch"], "python_exe": "python", **(builtins or {}),
    })  # fmt: skip
    resolved_params = {k: scope.param(k) for k in values}
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
                n = _int_or_render(ref.checkpoint, scope, f"stages.{sname}.inputs.{key}")
                ref = InputRef(stage=ref.stage, checkpoint=n)
                value = f"{prefix},{n}" if prefix else None
                desc = f"{ref.stage} checkpoint {n} (checked in {ref.stage}'s log)"
                consumers.setdefault(ref.stage, []).append((sname, n))
            elif ref.step is not None:
                ref = InputRef(stage=ref.stage, step=_int_or_render(ref.step, scope, f"stages.{sname}.inputs.{key}"))
                value, desc = None, f"{ref.stage}'s checkpoint saved at step {ref.step}, from its log"
            elif ref.best is not None:
                tie = ", the latest of ties" if ref.tie == "latest" else ""
                value, desc = None, f"{ref.stage}'s checkpoint with the best {ref.best}{tie}, from its log"
            else:
                value, desc = None, f"{ref.stage}'s last checkpoint, from its log"
            inputs[key] = PlannedInput(key, ref, value, desc)
            scope.inputs[key] = value if value is not None else f"<{key}: {desc}>"
        outputs = {k: scope.render(v) for k, v in st.outputs.items()}
        scope.outputs[sname] = outputs
        stop_src = (pst.stop if pst and pst.stop else None) or st.stop
        stop = None
        stop_why = ""
        if stop_src is not None:
            if stop_src.checkpoint is not None:
                stop = ("checkpoint", _int_or_render(stop_src.checkpoint, scope, f"stages.{sname}.stop"))
            else:
                stop = ("step", _int_or_render(stop_src.step, scope, f"stages.{sname}.stop"))
            stop_why = "the recipe's stop point" + (f" (profile {profile})" if pst and pst.stop else "")
        env = render_env({**st.env, **(pst.env if pst else {})}, scope)
        res: dict[str, str] = {}
        for src in (st.resources, pst.resources if pst else None):
            for k, v in (src.model_dump(exclude_none=True) if src else {}).items():
                res[k] = check_resource(scope.render(str(v)), f"stage {sname}: resource {k}")
        argv = render_argv(st, scope)
        copies = [(scope.render(c.checkpoint), scope.render(c.to)) for c in st.copy_]
        scope.inputs = {}
        stages.append(
            PlannedStage(
                name=sname,
                title=scope.render(st.title),
                kind=st.kind,
                skipped=skipped,
                cwd=st.cwd,
                argv=argv,
                env=env,
                inputs=inputs,
                outputs=outputs,
                copies=copies,
                stop=stop,
                stop_why=stop_why,
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
            )
        )
    # stop points derived from what later stages need
    for s in stages:
        needs = consumers.get(s.name, [])
        if s.stop is None and needs and s.kind == "train":
            n = max(x for _, x in needs)
            users = ", ".join(f"{u} uses checkpoint {x}" for u, x in needs)
            s.stop = ("checkpoint", n)
            s.stop_why = f"derived: {users}"
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
    )
    plan.hazards = hazards(plan)
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
                n = s.stop[1] if s.stop and s.stop[0] == "checkpoint" else None
                rng = f"1…{n}" if n else "1…N"
                m = VAR.fullmatch(s.template.outputs.get("checkpoint", "")) if s.template else None
                how = f" (parameter {m.group(1)})" if m and m.group(1) in plan.parameters else ""
                out.append(
                    f"stage {s.name} writes to {prefix}, the prefix of stage {first.name}: it overwrites "
                    f"{first.name}'s checkpoints {rng}. Give it its own prefix{how} to keep them."
                )
    for s in active:
        if s.kind == "train" and s.stop is None:
            out.append(f"stage {s.name} has no stop point and nothing uses its checkpoints: it trains until stopped")
    return out


def seed_tokens(seed_command: str) -> list[str]:
    return shlex.split(seed_command)


def list_recipes() -> list[tuple[Path, Recipe | None, str | None]]:
    out = []
    for p in sorted(data_dir("recipes").glob("*.yaml")):
        if p.stem == "expected":
            continue
        try:
            out.append((p, load_recipe(str(p)).recipe, None))
        except MfnError as e:
            out.append((p, None, e.message))
    return out
