from __future__ import annotations

import importlib.metadata
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))  # the shared helpers (tests/support)

from helpers import GOLDEN, SUPPORT, PatchMaker, make_upstream, write_pin, write_set  # noqa: E402


def pytest_collection_modifyitems(config, items):
    upstream = os.environ.get("MFNPATCH_UPSTREAM")
    skip = pytest.mark.skip(
        reason="needs a real InsightFace clone or mirror: set MFNPATCH_UPSTREAM=/path/to/insightface"
    )
    for item in items:
        if "upstream" in item.keywords and not (upstream and Path(upstream).exists()):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test sees the developer's cache, upstream or data overrides."""
    for var in ("MFNPATCH_PINS", "MFNPATCH_PATCHES", "MFNPATCH_RECIPES", "MFNPATCH_ENVS", "MFNPATCH_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MFNPATCH_CACHE", str(tmp_path / "cache"))
    real_upstream = os.environ.get("MFNPATCH_UPSTREAM")
    monkeypatch.delenv("MFNPATCH_UPSTREAM", raising=False)
    if real_upstream:
        monkeypatch.setenv("MFNPATCH_REAL_UPSTREAM", real_upstream)


# --------------------------------------------------------------------------------------------
# The fixture upstream, built once per session and copied per test


DEMO_EDITS = [
    (
        "0001-no-bias.patch",
        "softmax fc7 without bias",
        [
            (
                "src/train_softmax.py",
                "    _bias = mx.symbol.Variable('fc7_bias', lr_mult=2.0, wd_mult=0.0)\n"
                "    fc7 = mx.sym.FullyConnected(data=embedding, weight = _weight, bias = _bias, num_hidden=10, "
                "name='fc7')\n",
                "    #_bias = mx.symbol.Variable('fc7_bias', lr_mult=2.0, wd_mult=0.0)\n"
                "    fc7 = mx.sym.FullyConnected(data=embedding, weight = _weight, no_bias=True, num_hidden=10, "
                "name='fc7')\n    # no bias\n",
            )
        ],
    ),
    (
        "0002-init.patch",
        "uniform init for y1",
        [
            (
                "src/train_softmax.py",
                "    if args.network[0]=='r' or args.network[0]=='y':\n",
                "    if args.network[0]=='r':\n",
            )
        ],
    ),
    (
        "0003-py3.patch",
        "python 3 fixes in several files",
        [
            ("src/image_iter.py", "self.imgidx = range(1,", "self.imgidx = list(range(1,"),
            ("src/image_iter.py", "int(header.label[0]))\n", "int(header.label[0])))\n"),
            ("src/image_iter.py", "for c in xrange(", "for c in range("),
            ("deploy/model_slim.py", "arg_params.iteritems()", "arg_params.items()"),
            (
                "src/train_softmax.py",
                "os.environ['CUDA_VISIBLE_DEVICES'].strip()",
                "os.environ.get('CUDA_VISIBLE_DEVICES', '').strip()",
            ),
        ],
    ),
]


@dataclass
class Base:
    upstream: Path
    sha: str
    pins: Path
    patches: Path


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Base:
    root = tmp_path_factory.mktemp("base")
    random.seed(0)
    upstream, sha = make_upstream(root / "upstream")
    pins = root / "pins"
    write_pin(pins, upstream, sha)
    maker = PatchMaker(upstream, sha, root / "maker")
    demo = []
    for fn, desc, edits in DEMO_EDITS:
        for rel, old, new in edits:
            maker.edit(rel, old, new)
        demo.append((fn, maker.diff(desc)))
    patches = root / "patches"
    write_set(patches, "demo", 1, sha, demo)
    maker.edit("src/train_softmax.py", "default=1.0, help='weight decay mult", "default=10.0, help='weight decay mult")
    write_set(
        patches, "extra", 1, sha, [("0001-wd-mult.patch", maker.diff("fc7 wd mult 10"))], after=["demo"], opt_in=True
    )
    return Base(upstream, sha, pins, patches)


@dataclass
class Fx:
    root: Path
    upstream: Path
    sha: str
    pins: Path
    patches: Path
    dest: Path

    @property
    def short(self) -> str:
        return self.sha[:7]

    def maker(self) -> PatchMaker:
        return PatchMaker(self.upstream, self.sha, self.root / f"maker-{random.random():.9f}")

    def prepare(self, dest: Path | None = None, source: str | None = None):
        from mfnpatch.source.tree import prepare_tree

        return prepare_tree(self.short, dest or self.dest, source or str(self.upstream))

    def apply(self, series: str = "demo", dest: Path | None = None, **kw):
        from mfnpatch.source.patchset import Catalog, select_sets
        from mfnpatch.source.worktree import apply

        prepared = self.prepare(dest)
        sets = select_sets(Catalog.scan(self.patches), series)
        return apply(prepared.tree, sets, **kw)

    def tree(self, dest: Path | None = None):
        from mfnpatch.source.tree import open_existing

        return open_existing(dest or self.dest)


@pytest.fixture
def fx(base: Base, tmp_path, monkeypatch) -> Fx:
    root = tmp_path / "fx"
    shutil.copytree(base.upstream.parent, root, symlinks=True)
    f = Fx(root, root / "upstream", base.sha, root / "pins", root / "patches", tmp_path / "tree")
    monkeypatch.setenv("MFNPATCH_PINS", str(f.pins))
    monkeypatch.setenv("MFNPATCH_PATCHES", str(f.patches))
    return f


# --------------------------------------------------------------------------------------------
# Golden messages and the CLI


def _normalize(text: str, tmp: Path, fx: Fx | None) -> str:
    text = text.replace(str(tmp.resolve()), "<TMP>").replace(str(tmp), "<TMP>")
    if fx is not None:
        text = text.replace(fx.sha, "<SHA>").replace(fx.short, "<SHORT>")
    text = re.sub(r"saved/\d{8}T\d{6}(\.\d+)?", "saved/<TIME>", text)
    text = re.sub(r"\b\d+\.\d+ s\b", "<T> s", text)
    text = re.sub(r"(?m)^  fatal: .*$", "  fatal: <git's own message>", text)
    return text


@pytest.fixture
def golden(tmp_path, request):
    def check(name: str, text: str, fx: Fx | None = None):
        text = _normalize(text, tmp_path, fx)
        path = GOLDEN / f"{name}.txt"
        if os.environ.get("MFNPATCH_UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + ("" if text.endswith("\n") else "\n"))
            return
        assert path.exists(), f"no golden file {path}; create it with MFNPATCH_UPDATE_GOLDEN=1"
        assert text + ("" if text.endswith("\n") else "\n") == path.read_text()

    return check


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        import json

        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    from mfnpatch.cli import run

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = run([str(a) for a in args])
        o, e = capsys.readouterr()
        return Result(code, o, e)

    return invoke


# --------------------------------------------------------------------------------------------
# A fixture upstream whose train_softmax.py is the fake trainer, with a pin, a patch set and a recipe


FAKE_RECIPE = """\
schema: 1
name: fake
title: the recipe runner on a fake trainer
seed_update: "2018-05-16"
source: tests
pin: {short}
patches: fake
environment: cpu
# the fake trainer's verification starts at 0.3 + 0.01 a step: at chance for its first rounds, as no real run is
sentinels: {{chance: off}}
parameters:
  python: {{default: "${{python_exe}}"}}
  data_dir: {{default: "${{run_dir}}/data", type: path}}
  models_dir: {{default: "${{run_dir}}/models", type: path}}
  verbose: {{default: 10, type: int}}
  softmax_checkpoint: {{default: 5, type: int}}
  slurm_gpus: {{default: 0, type: int}}
stages:
  data:
    title: a dataset directory
    kind: tool
    cwd: src
    command: ["${{python}}", -c, "import os, sys; os.makedirs(sys.argv[1], exist_ok=True); open(os.path.join(sys.argv[1], 'property'), 'w').write('20,112,112')", "${{data_dir}}"]
    outputs: {{data: "${{data_dir}}"}}
  softmax:
    title: softmax
    cwd: src
    seed_command: CUDA_VISIBLE_DEVICES='' python -u train_softmax.py --network y1 --ckpt 2 --loss-type 0
    env: {{CUDA_VISIBLE_DEVICES: ""}}
    resources: {{gpus_per_node: "${{slurm_gpus}}"}}
    command: ["${{python}}", -u, train_softmax.py, --network, y1, --ckpt, "2", --loss-type, "0", --lr-steps, "20,25",
              --per-batch-size, "16", --data-dir, "${{data_dir}}", --prefix, "${{models_dir}}/model-y1-softmax",
              {{flag: --verbose, value: "${{verbose}}"}}]
    outputs: {{checkpoint: "${{models_dir}}/model-y1-softmax"}}
    expect:
      - {{verified: [lfw, cfp_fp, agedb_30], rounds_at_least: 2}}
      - {{metric: lfw, at: best, op: ">=", value: 0.5}}
      - {{metric: train_acc, op: rises}}
  arcface:
    title: arcface
    cwd: src
    env: {{CUDA_VISIBLE_DEVICES: ""}}
    resources: {{gpus_per_node: "${{slurm_gpus}}"}}
    inputs:
      pretrained: "softmax@${{softmax_checkpoint}}"
    command: ["${{python}}", -u, train_softmax.py, --network, y1, --ckpt, "2", --loss-type, "4",
              --per-batch-size, "16", --data-dir, "${{data_dir}}", --pretrained, "${{inputs.pretrained}}",
              --prefix, "${{models_dir}}/model-y1-arcface", {{flag: --verbose, value: "${{verbose}}"}}]
    outputs: {{checkpoint: "${{models_dir}}/model-y1-arcface"}}
    stop: {{checkpoint: 2}}
    expect:
      - {{metric: lfw, at: last, op: ">=", value: 0.5}}
  slim:
    title: slim a copy
    kind: tool
    cwd: deploy
    inputs:
      model: {{stage: arcface, checkpoint: 2}}
    copy:
      - {{checkpoint: "${{inputs.model}}", to: "${{models_dir}}/deploy/model-y1-arcface"}}
    command: ["${{python}}", model_slim.py, --model, "${{models_dir}}/deploy/model-y1-arcface,2"]
    outputs: {{checkpoint: "${{models_dir}}/deploy/model-y1-arcface"}}
"""


@dataclass
class FakeBase:
    upstream: Path
    sha: str
    pins: Path
    patches: Path
    recipe_text: str


@pytest.fixture(scope="session")
def fake_base(tmp_path_factory) -> FakeBase:
    here = SUPPORT
    root = tmp_path_factory.mktemp("fakebase")
    upstream, sha = make_upstream(
        root / "upstream",
        extra_files={
            "src/train_softmax.py": (here / "fake_trainer.py").read_bytes(),
            "deploy/model_slim.py": (here / "fake_slim.py").read_bytes(),
        },
    )
    pins = root / "pins"
    write_pin(pins, upstream, sha)
    maker = PatchMaker(upstream, sha, root / "maker")
    maker.edit("src/train_softmax.py", '("--fc7-wd-mult", 1.0)', '("--fc7-wd-mult", 10.0)')
    write_set(root / "patches", "fake", 1, sha, [("0001-wd-mult.patch", maker.diff("fc7 wd mult 10"))])
    return FakeBase(upstream, sha, pins, root / "patches", FAKE_RECIPE.format(short=sha[:7]))


@dataclass
class RunFx:
    root: Path
    upstream: Path
    sha: str
    recipe: Path
    tree: Path

    def run_dir(self, name: str = "run") -> Path:
        return self.root / "runs" / name


@pytest.fixture
def runfx(fake_base: FakeBase, tmp_path, monkeypatch) -> RunFx:
    root = tmp_path / "rf"
    shutil.copytree(fake_base.upstream.parent, root, symlinks=True)
    monkeypatch.setenv("MFNPATCH_PINS", str(root / "pins"))
    monkeypatch.setenv("MFNPATCH_PATCHES", str(root / "patches"))
    monkeypatch.setenv("MFNPATCH_UPSTREAM", str(root / "upstream"))
    for var in ("FAKE_DELAY", "FAKE_CAP", "FAKE_CRASH_AT", "FAKE_CRASH_LOSS", "FAKE_WITH_BIAS", "FAKE_RATE",
                "FAKE_IMAGES", "FAKE_NAN_AT", "FAKE_LR_FACTOR", "FAKE_SLOW_AT"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    recipe = root / "fake.yaml"
    recipe.write_text(fake_base.recipe_text)
    return RunFx(root, root / "upstream", fake_base.sha, recipe, root / "tree")


@pytest.fixture
def gpu_envs(tmp_path, monkeypatch):
    """Environments whose locks hold only what this interpreter has, so the doctor's verdict rests on the GPU."""
    root = tmp_path / "envs"
    pytest_version = importlib.metadata.version("pytest")
    for name, cuda, archs, package in (
        ("gpu101", "10.1", [30, 50, 60, 70, 75], "mxnet-cu101"),
        ("cpuish", None, [], "mxnet"),
    ):
        d = root / name
        d.mkdir(parents=True)
        (d / "pip.in").write_text("pytest\n")
        (d / "pip.lock").write_text(f"pytest=={pytest_version} \\\n    --hash=sha256:{'0' * 64}\n")
        mx = {"package": package, "version": "1.9.1", "gpu_archs": archs}
        if cuda:
            mx |= {"cuda": cuda, "driver_min": "418.39"}
        (d / "env.yaml").write_text(json.dumps({
            "schema": 1, "name": name, "kind": "pip", "description": "test", "platform": "x86_64-manylinux_2_28",
            "python": f"{sys.version_info.major}.{sys.version_info.minor}", "pip": {"requirements": "pip.in",
            "lock": "pip.lock"}, "mxnet": mx, "patches": "mfn", "why": "test",
        }))  # fmt: skip
    monkeypatch.setenv("MFNPATCH_ENVS", str(root))
    return root


# --------------------------------------------------------------------------------------------
# The torch-cpu environment, made once per session from its lock (the PyTorch lineage's CPU runs)

TORCH_WHEELS = Path(os.environ.get("MFNPATCH_TORCH_WHEELS", "/opt/wheels"))


@pytest.fixture(scope="session")
def torch_cpu_prefix(tmp_path_factory) -> Path:
    """MFNPATCH_TORCH_CPU_PREFIX (an environment made by env create torch-cpu), else one made here from the lock
    with the CPU torch wheel from MFNPATCH_TORCH_WHEELS (default /opt/wheels); skipped when neither is there."""
    given = os.environ.get("MFNPATCH_TORCH_CPU_PREFIX")
    if given:
        return Path(given)
    if not (TORCH_WHEELS.is_dir() and next(TORCH_WHEELS.glob("torch-2.13.0+cpu-cp311-*.whl"), None)):
        pytest.skip(f"needs the torch 2.13.0+cpu wheel in {TORCH_WHEELS} (MFNPATCH_TORCH_WHEELS) or an environment "
                    "made by `mfnpatch env create torch-cpu` in MFNPATCH_TORCH_CPU_PREFIX")  # fmt: skip
    from mfnpatch.environments.create import create_env

    return create_env("torch-cpu", tmp_path_factory.mktemp("envs") / "torch-cpu", find_links=TORCH_WHEELS)
