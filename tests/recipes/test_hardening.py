"""Recipes confine what they name, and their values stay values: each attack made for real."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfnpatch.errors import EXIT_FAILURE
from mfnpatch.fsutil import UnsafePath, confined
from mfnpatch.recipes.expand import expand
from mfnpatch.recipes.recipe import RecipeError, load_recipe


def _recipe_with(tmp_path: Path, old: str, new: str) -> Path:
    text = load_recipe("may16").path.read_text()
    assert old in text, old
    p = tmp_path / "r.yaml"
    p.write_text(text.replace(old, new, 1))
    return p


SOFTMAX_SEED = (
    "    seed_command: >-\n      CUDA_VISIBLE_DEVICES='0' python -u train_softmax.py --network y1 --ckpt 2 "
    "--loss-type 0"
)


SLIM_SEED = "    seed_command: python models_slim"


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("  softmax:\n    title: softmax", "  ../../x:\n    title: softmax",
         "stage name '../../x' is not a plain name"),
        (f"    cwd: src\n{SOFTMAX_SEED}", f"    cwd: ../../outside\n{SOFTMAX_SEED}", "cwd '../../outside' has a '..'"),
        (f"    cwd: deploy\n{SLIM_SEED}", f"    cwd: /etc\n{SLIM_SEED}", "cwd '/etc' is absolute"),
        (f"    cwd: deploy\n{SLIM_SEED}", f"    cwd: .git/hooks\n{SLIM_SEED}", "names .git/"),
        ('env: {CUDA_VISIBLE_DEVICES: "${gpus}", OMP_NUM_THREADS', 'env: {"A;touch /tmp/x": "1", OMP_NUM_THREADS',
         "env key 'A;touch /tmp/x' is not a variable name"),
        ('resources: {gpus_per_node: "${slurm_gpus}", time: "${slurm_time}"}',
         'resources: {gpus_per_node: "${slurm_gpus}", time: "1\\n#SBATCH --wrap=id"}', "is not a Slurm value"),
    ],
)  # fmt: skip
def test_a_recipe_that_names_outside_is_refused_at_load(tmp_path, cli, old, new, message):
    p = _recipe_with(tmp_path, old, new)
    r = cli("recipe", "plan", p)
    assert r.code == EXIT_FAILURE and message in r.err, r.err
    assert str(p) in r.err and ":" in r.err.split(str(p))[1][:6]  # file:line:col


def test_a_resource_value_set_on_the_command_line_cannot_add_a_script_line(tmp_path):
    with pytest.raises(RecipeError, match="is not a Slurm value"):
        expand(load_recipe("may16"), None, {"slurm_time": "1\n#SBATCH --wrap=id"})
    from mfnpatch.cluster.slurm import SlurmOptions, script_text
    from mfnpatch.fsutil import UnsafePath

    with pytest.raises(RecipeError, match="--partition: 'gpu\\\\nid' is not a Slurm value"):
        script_text(tmp_path, "r", "softmax", {}, SlurmOptions(partition="gpu\nid"))
    with pytest.raises(UnsafePath, match="--sbatch-arg '--qos=x\\\\nid' holds a newline"):
        script_text(tmp_path, "r", "softmax", {}, SlurmOptions(sbatch_args=["--qos=x\nid"]))
    with pytest.raises(UnsafePath, match="holds whitespace"):
        script_text(tmp_path, "r", "softmax", {}, SlurmOptions(sbatch_args=["--comment=a --wrap=id"]))


def test_printed_shell_lines_quote_what_they_print():
    plan = expand(load_recipe("may16"), "smoke", {"gpus": "0; touch /tmp/pwned", "data_dir": "a b/$(id)"})
    ps = plan.stage("softmax")
    line = ps.shell()
    assert "CUDA_VISIBLE_DEVICES='0; touch /tmp/pwned'" in line and "'a b/$(id)'" in line


NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=24)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, cwd=NAMES, key=NAMES, path=NAMES)
def test_random_names_cwds_env_keys_and_set_paths_never_escape(tmp_path, name, cwd, key, path):
    """Whatever a recipe or a patch set says, what is accepted stays inside its root."""
    from mfnpatch.recipes.recipe import ENV_KEY, STAGE_NAME

    root = tmp_path / "root"
    if STAGE_NAME.match(name):
        log = (root / "stages" / f"{name}.log").resolve()
        assert root.resolve() / "stages" in log.parents
    for rel in (cwd, path):
        try:
            ok = confined(rel, "x")
        except UnsafePath:
            continue
        resolved = (root / ok).resolve()
        assert resolved == root.resolve() or root.resolve() in resolved.parents
        assert ".git" not in [p.casefold() for p in Path(ok).parts] and ".mfnpatch" not in Path(ok).parts
    if ENV_KEY.match(key):
        assert key.isascii() and not any(c in key for c in " ;$`\n'\"=")


def test_a_self_referencing_parameter_is_an_error_line(cli):
    r = cli("recipe", "plan", "may16", "--set", "models_dir=${models_dir}/x")
    assert r.code == EXIT_FAILURE and "parameter models_dir refers to itself: models_dir -> models_dir" in r.err
    r = cli("recipe", "plan", "may16", "--set", "models_dir=${ncnn_dir}")
    assert r.code == EXIT_FAILURE and "models_dir -> ncnn_dir -> models_dir" in r.err


def test_a_trailing_newline_is_no_part_of_a_name_key_or_resource():
    """A regex anchored with $ also accepts 'A\\n' (hypothesis found it for env keys): the anchors are \\Z."""
    from mfnpatch.recipes.recipe import ENV_KEY, RESOURCE_VALUE, STAGE_NAME

    for pattern, ok in ((ENV_KEY, "OMP_NUM_THREADS"), (STAGE_NAME, "softmax"), (RESOURCE_VALUE, "3-00:00:00")):
        assert pattern.match(ok) and not pattern.match(ok + "\n")


PY = "  python: {default: python,"
CONVERT = 'command: ["${mfnpatch}", convert, ncnn,'
HOSTILE = [
    (lambda t: t.replace(PY, "  laughs: &a [x, x, x]\n  more: [*a, *a]\n" + PY), "YAML anchors and aliases"),
    (lambda t: t.replace("pin: 4bc8132", "pin: 4bc8132\ndeep: " + "[" * 5000 + "]" * 5000), "nested more than 64"),
    (lambda t: t.replace("per_batch_size: {default: 512,", "per_batch_size: {default: " + "9" * 5000 + ","),
     "a number of 5000 characters"),
    (lambda t: t.replace("stages:\n", "stages:\n  ? [a, b]\n  : 1\n", 1), "a mapping key must be a plain value"),
    (lambda t: t.replace(CONVERT, "command: []\n    old: " + CONVERT[9:]), "command: List should have at least 1"),
    (lambda t: t.replace("    outputs: {bench:", "    stop: {checkpoint: -5}\n    outputs: {bench:"),
     "a stop point is a checkpoint or step of at least 1, not -5"),
]  # fmt: skip


@pytest.mark.parametrize("mutate, words", HOSTILE)
def test_hostile_yaml_in_a_recipe_is_one_located_error_line(tmp_path, cli, mutate, words):
    text = load_recipe("may16").path.read_text()
    bad = mutate(text)
    assert bad != text
    p = tmp_path / "r.yaml"
    p.write_text(bad)
    r = cli("recipe", "plan", p)
    assert r.code == EXIT_FAILURE and words in r.err and str(p) in r.err, r.err
    assert "internal error" not in r.err and "Traceback" not in r.err


def test_non_finite_values_and_unknown_references_in_set_values(cli):
    r = cli("recipe", "plan", "may16", "--set", "per_batch_size=nan")
    assert r.code == EXIT_FAILURE and "'nan' is not a int" in r.err
    r = cli("recipe", "plan", "may16", "--set", "msg=${stages.x.outputs.y}")
    assert r.code == EXIT_FAILURE and "no parameter 'msg'" in r.err
    r = cli("recipe", "plan", "may16", "--set", "softmax_lr_steps=${stages.x.outputs.y}")
    assert r.code == EXIT_FAILURE and "unknown parameter '${stages.x.outputs.y}'" in r.err
    r = cli("recipe", "plan", "may16", "--json")
    assert r.code == 0 and "NaN" not in r.out and "Infinity" not in r.out


def test_json_output_is_strict_json_whatever_the_values():
    import json

    from mfnpatch.finite import finite

    text = json.dumps(finite({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}}), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


# --------------------------------------------------------------------------------------------
# Round 3: what becomes a run's directory, a sparse pattern; templates that blow up


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("name: may16\n", "name: ../../outside\n", "recipe name '../../outside' is not a plain name"),
        ("name: may16\n", "name: 'a\\nb'\n", "is not a plain name"),
        ("profiles:\n  seed:\n", "profiles:\n  ../x:\n", "profile name '../x' is not a plain name"),
        ('paths: [src, "deploy/*"]', 'paths: [src, "deploy/*\\n/etc"]', "holds a newline"),
        ('paths: [src, "deploy/*"]', 'paths: [src, "../deploy"]', "is not inside the tree"),
    ],
)
def test_what_becomes_a_run_directory_or_a_sparse_pattern_is_refused_at_load(tmp_path, cli, old, new, message):
    p = _recipe_with(tmp_path, old, new)
    r = cli("recipe", "plan", p)
    assert r.code == EXIT_FAILURE and message in r.err, r.err
    assert str(p) in r.err  # file:line:col


def test_a_run_of_a_recipe_named_outside_creates_nothing_outside(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    p = _recipe_with(tmp_path, "name: may16\n", "name: ../../escaped\n")
    r = cli("recipe", "run", p, "--profile", "smoke", "--no-env-check", "--tree", tmp_path / "tree")
    assert r.code == EXIT_FAILURE and "is not a plain name" in r.err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.yaml", "work"] and not any((tmp_path / "work").iterdir())


def _chain(tmp_path: Path, depth: int, uses: int) -> Path:
    """Parameters p0..p{depth}, each using the one before it ``uses`` times."""
    lines = ["  p0: {default: xxxxxxxx}"]
    lines += ['  p{}: {{default: "{}"}}'.format(i, f"${{p{i - 1}}}" * uses) for i in range(1, depth + 1)]
    lines.insert(0, "  python: {default: python, help: the interpreter}")
    return _recipe_with(tmp_path, "  python: {default: python, help: the interpreter that runs the pinned code "
                        "(the environment's python)}", "\n".join(lines))  # fmt: skip


def test_a_chain_of_parameters_is_checked_in_time_linear_in_its_length(tmp_path, cli):
    import time

    p = _chain(tmp_path, 40, 10)  # 10^40 paths for a check that walks every path
    t = time.perf_counter()
    r = cli("recipe", "show", p)
    assert time.perf_counter() - t < 20 and r.code == 0, r.err


@pytest.mark.parametrize("how", ["recipe", "set"])
def test_parameters_that_double_at_every_step_are_refused_before_they_grow(tmp_path, how):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if how == "recipe":  # 41 parameters in 600 bytes, the last worth 8 x 2^40 characters
        p = _chain(tmp_path, 40, 2)
        p.write_text(
            p.read_text().replace("data_dir: {default: ../datasets/faces_ms1m_112x112", 'data_dir: {default: "${p40}"')
        )
        lr, sets = load_recipe(str(p)), {}
    else:  # the same with --set values
        lr = load_recipe("may16")
        sets = {"data_dir": "${models_dir}${models_dir}", "models_dir": "${softmax_lr_steps}${softmax_lr_steps}"}
        sets |= {"softmax_lr_steps": "${arcface_lr_steps}${arcface_lr_steps}", "arcface_lr_steps": "x" * 40_000}
    with pytest.raises(RecipeError, match="renders to more than 128 KiB"):
        expand(lr, "smoke", sets)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near gigabytes


@pytest.mark.parametrize(
    "argv,said",
    [
        (("--gpus", "1000000000"), "more than the 1024 GPUs"),
        (("--gpus", "0," * 5000), "more than 1024 GPU indices"),
        (("--gpus", "1", "--gpu-memory", "inf"), "--gpu-memory inf: not a GPU's memory"),
        (("--gpus", "1", "--gpu-memory", "1e308"), "not a GPU's memory"),
        (("--gpus", "1", "--gpu-memory", "nan"), "--gpu-memory"),
        (("--gpus", "2", "--fit", "per-gpu", "--set", "softmax_lr_steps=abc", "--gpu-memory", "80"),
         "parameter softmax_lr_steps is 'abc'"),
        (("--gpus", "2", "--fit", "per-gpu", "--set", "softmax_lr_steps=1,,2", "--gpu-memory", "80"), "'1,,2'"),
        (("--gpus", "2", "--fit", "per-gpu", "--set", "softmax_lr_steps=1e5", "--gpu-memory", "80"), "'1e5'"),
        (("--gpus", "2", "--fit", "per-gpu", "--set", "softmax_lr=zero", "--gpu-memory", "80"), "softmax_lr"),
    ],
)  # fmt: skip
def test_fit_values_that_crashed_are_one_clear_error(cli, argv, said):
    r = cli("recipe", "plan", "may16", *argv)
    assert r.code in (1, 64) and said in r.err and "internal error" not in r.err, r.err
