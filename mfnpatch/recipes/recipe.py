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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError, model_validator

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import UnsafePath, confined, sha256_bytes
from mfnpatch.logs.expected import Expectation
from mfnpatch.logs.sentinels import NAMES as SENTINELS
from mfnpatch.logs.sentinels import Sentinels
from mfnpatch.recipes import RecipeError
from mfnpatch.recipes.fit import FitSpec
from mfnpatch.recipes.template import VAR, templated
from mfnpatch.resources import data_dir
from mfnpatch.schema import SchemaError, Strict, load_yaml, locate, validate
from mfnpatch.source.partial import normalise

DEFAULT_SEED = 0  # every run is seeded unless --set seed=none
BUILTINS = ("run_dir", "tree", "cpu_count", "cpu_free", "mfnpatch", "python_exe", "arm_cpus")


# --------------------------------------------------------------------------------------------
# Schema


class Param(Strict):
    default: Any = None
    type: Literal["str", "int", "float", "bool", "path"] = "str"
    help: str = ""
    source: str = Field(default="", description="where the default comes from: FILE:LINE and the quoted text")


class FlagArg(Strict):
    """``{flag: --lr, value: "${lr}"}``: two arguments, left out when the value is null or empty; with ``sep``
    one argument, flag, sep and value joined (``{flag: num_epoch, sep: "=", value: ...}`` -> ``num_epoch=2``)."""

    flag: str
    value: str
    sep: str | None = None


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
        for v in (self.checkpoint, self.step):
            if isinstance(v, int) and v < 1:
                raise ValueError(f"a stop point is a checkpoint or step of at least 1, not {v}")
        return self


class CopySpec(Strict):
    checkpoint: str = Field(description="PREFIX,EPOCH to copy (symbol and params)")
    to: str = Field(description="the new prefix; the copy keeps the epoch number")


class Resources(Strict):
    """What a stage asks a cluster for (the Slurm executor); values may use ${parameters}. Flags of
    `recipe run --executor slurm` override them."""

    gpus_per_node: int | str | None = None
    cpus_per_task: int | str | None = None
    mem: str | None = None
    time: str | None = Field(default=None, description="Slurm time limit, e.g. 3-00:00:00")


class DataSpec(Strict):
    """The training data a stage reads, checked before the run starts (``mfnpatch data check``): its
    directory (relative to the stage's cwd), the verification targets, and the dataset variant the stage's
    expected results were measured on (a name ``data check`` knows, ``synthetic``, ``built`` or ``any``)."""

    dir: str
    targets: str = "lfw,cfp_fp,agedb_30"
    variant: str | None = None


def _sentinel_spec(v: Any) -> dict[str, Any]:
    """A recipe's ``sentinels:``: each name ``off`` or some of its settings, checked against the settings'
    model so that a misspelt name or key is an error with its file and line."""
    if not isinstance(v, dict):
        raise ValueError(f"a mapping of sentinel names ({', '.join(SENTINELS)}) to off or their settings")
    unknown = [k for k in v if k not in SENTINELS]
    if unknown:
        raise ValueError(f"no sentinel {unknown[0]!r} (sentinels: {', '.join(SENTINELS)})")
    try:
        Sentinels().merged(v)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"] if str(x) == str(x).lower())  # not the union's class names
        raise ValueError(f"{where}: {first['msg']}") from None
    return v


SentinelSpec = Annotated[dict[str, Any], AfterValidator(_sentinel_spec)]


class Stage(Strict):
    title: str
    kind: Literal["train", "tool"] = "train"
    when: str | None = None
    cwd: str = "src"
    command: list[str | FlagArg] = Field(min_length=1)
    env: dict[str, str | None] = Field(default_factory=dict)
    inputs: dict[str, InputRef | str] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    copy_: list[CopySpec] = Field(default_factory=list, alias="copy")
    stop: Stop | None = None
    ends_by_itself: bool = Field(
        default=False,
        description="a training command that ends at its own schedule's end (arcface_torch's num_epoch), so no "
        "stop point is needed",
    )
    expect: list[Expectation] = Field(default_factory=list)
    seed_command: str | None = None
    stands_in: str | None = None
    note: str | None = None
    resources: Resources | None = None
    data: DataSpec | None = None
    sentinels: SentinelSpec | None = None


class ProfileStage(Strict):
    stop: Stop | None = None
    expect: list[Expectation] | None = None
    env: dict[str, str | None] = Field(default_factory=dict)
    resources: Resources | None = None
    sentinels: SentinelSpec | None = None


class Profile(Strict):
    description: str
    environment: str | None = None
    patches: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, ProfileStage] = Field(default_factory=dict)
    sentinels: SentinelSpec | None = None


class Recipe(Strict):
    schema_: Literal[1] = Field(alias="schema")
    name: str
    title: str
    seed_update: str
    source: str
    pin: str
    patches: str
    environment: str
    lineage: str | None = Field(default=None, description="the lineage its training stages run (mfnpatch/lineages/)")
    description: str = ""
    parameters: dict[str, Param | str | int | float | bool | None] = Field(default_factory=dict)
    sentinels: SentinelSpec | None = None
    fit: FitSpec | None = None
    # the directories of the pinned tree the stages read (a partial fetch materialises only these and what the
    # patch sets touch); empty: the whole tree
    paths: list[str] = Field(default_factory=list)
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
        out[k] = v if isinstance(v, Param) else Param.model_validate({"default": v, "type": _infer_type(v)})
    return out


def _infer_type(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    return "str"


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


def _check_lineage(lr: LoadedRecipe) -> None:
    """``lineage:`` is a registry name, and every training stage whose trainer is known runs that lineage's."""
    from mfnpatch.lineages import LINEAGES, of_argv

    r = lr.recipe
    if r.lineage is None:
        return
    if r.lineage not in LINEAGES:
        raise RecipeError(f"{lr.where(('lineage',))}: unknown lineage '{r.lineage}'", hint=f"lineages: "
                          f"{', '.join(LINEAGES)} (mfnpatch/lineages/; a new one is registered there)")  # fmt: skip
    for sname, stage in r.stages.items():
        lin = of_argv([a for a in stage.command if isinstance(a, str)]) if stage.kind == "train" else None
        if lin is not None and lin.name != r.lineage:
            raise RecipeError(f"{lr.where(('stages', sname, 'command'))}: stage '{sname}' runs {lin.name}'s trainer, "
                              f"but the recipe says lineage: {r.lineage}",
                              hint=f"set lineage: {lin.name}, or run {r.lineage}'s trainer")  # fmt: skip


def check_references(lr: LoadedRecipe) -> None:
    """Every ${...} names a parameter, a built-in, an input of its stage or an output of an earlier stage;
    every input names an earlier stage; profiles name existing stages and parameters."""
    r = lr.recipe
    params = _params(r)
    names = list(r.stages)
    check_confinement(lr)
    _check_lineage(lr)
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
        for sub, text in templated(stage):
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
    if r.fit is not None:
        f = r.fit
        named: list[tuple[str, str | None]] = [
            ("gpus", f.gpus), ("per_gpu_batch", f.per_gpu_batch), ("verbose", f.verbose), ("slurm_gpus", f.slurm_gpus),
            *(("steps", x) for x in f.steps), *(("lr", x) for x in f.lr),
        ]  # fmt: skip
        for role, named_param in named:
            if named_param is not None and named_param not in params:
                raise RecipeError(f"{lr.where(('fit', role))}: fit names unknown parameter '{named_param}'",
                                  hint=f"parameters: {', '.join(params)}")  # fmt: skip
    _params_acyclic(lr, params)


# \Z, not $: "$" also matches before a trailing newline ("A\n" would pass)
STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")  # a file name: its log is stages/<name>.log
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
RESOURCE_VALUE = re.compile(r"^[A-Za-z0-9_.:,=@/+%-]*\Z")  # Slurm values: 3-00:00:00, 16G, 1, gpu:a100:2


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
    # the recipe's name and a profile's name make the run's directory (runs/<name>-<profile>-<stamp>)
    if not STAGE_NAME.match(r.name):
        raise RecipeError(
            f"{lr.where(('name',))}: recipe name {r.name!r} is not a plain name",
            hint="letters, digits, _ and - (it names the run's directory, runs/<name>-<time>)",
        )
    for prof in r.profiles:
        if not STAGE_NAME.match(prof):
            raise RecipeError(
                f"{lr.where(('profiles', prof))}: profile name {prof!r} is not a plain name",
                hint="letters, digits, _ and - (it names the run's directory, runs/<name>-<profile>-…)",
            )
    for i, p in enumerate(r.paths):
        try:
            normalise([p])
        except MfnError as e:
            raise RecipeError(f"{lr.where(('paths', i))}: {e.message}", hint=e.hint) from None
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
        envs: list[tuple[tuple[str, ...], dict[str, str | None]]] = [(("stages", sname, "env"), stage.env)]
        envs += [(("profiles", p, "stages", sname, "env"), prof.stages[sname].env)
                 for p, prof in r.profiles.items() if sname in prof.stages]  # fmt: skip
        for loc, env in envs:
            for key in env:
                if not ENV_KEY.match(key):
                    raise RecipeError(
                        f"{lr.where((*loc, key))}: env key {key!r} is not a variable name",
                        hint="letters, digits and _, not starting with a digit (e.g. OMP_NUM_THREADS)",
                    )
        resources: list[tuple[tuple[str, ...], Resources | None]] = [(("stages", sname, "resources"), stage.resources)]
        for loc, res in resources + [
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
    for _, text in templated(stage):
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
    """No parameter refers to itself through others: a depth-first search that finishes each parameter once, so a
    long chain of references costs its length, never 10^depth paths."""
    refs = {n: [v for v in VAR.findall(p.default) if v in params] if isinstance(p.default, str) else []
            for n, p in params.items()}  # fmt: skip
    done: set[str] = set()
    for start in params:
        if start in done:
            continue
        path = [start]
        todo = [iter(refs[start])]
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                todo.pop()
                done.add(path.pop())
            elif nxt in path:
                raise RecipeError(
                    f"{lr.where(('parameters', path[0]))}: parameters refer to each other in a cycle: "
                    + " -> ".join([*path[path.index(nxt) :], nxt])
                )
            elif nxt not in done:
                path.append(nxt)
                todo.append(iter(refs[nxt]))


def seed_tokens(seed_command: str) -> list[str]:
    return shlex.split(seed_command)


def list_recipes() -> list[tuple[Path, Recipe | None, str | None]]:
    out: list[tuple[Path, Recipe | None, str | None]] = []
    for p in sorted(data_dir("recipes").glob("*.yaml")):
        if p.stem == "expected":
            continue
        try:
            out.append((p, load_recipe(str(p)).recipe, None))
        except MfnError as e:
            out.append((p, None, e.message))
    return out
