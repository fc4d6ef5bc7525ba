"""Recipes: the schema, errors with file:line:column, expansion, profiles, stop points, hazards, the seed's commands."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from mfnpatch.errors import MfnError
from mfnpatch.recipes.expand import expand
from mfnpatch.recipes.recipe import load_recipe, parse_input, seed_tokens

MAY16_TRAINING = ("softmax", "arcface", "finetune")


def test_may16_with_the_seeds_paths_is_the_seeds_commands():
    plan = expand(load_recipe("may16"), "seed")
    for name in MAY16_TRAINING:
        s = plan.stage(name)
        assert s.tokens() == seed_tokens(s.seed_command), name
        assert s.cwd == "src" and s.env == {"CUDA_VISIBLE_DEVICES": "0"}
    assert [(s.stop.kind, s.stop.value) for s in plan.stages if s.name in MAY16_TRAINING] == [
        ("checkpoint", 60), ("checkpoint", 100), ("checkpoint", 40),
    ]  # fmt: skip
    assert plan.stage("softmax").stop.why == "derived: arcface uses checkpoint 60"
    (hazard,) = plan.hazards
    assert "finetune writes to ../models/MobileFaceNet/model-y1-arcface" in hazard and "1…40" in hazard


def test_may16_default_keeps_the_arcface_checkpoints():
    plan = expand(load_recipe("may16"))
    ft = plan.stage("finetune")
    assert ft.argv[ft.argv.index("--prefix") + 1] == "../models/MobileFaceNet/model-y1-finetune"
    assert plan.hazards == []
    # only the prefix differs from the seed's command
    diff = [(a, b) for a, b in zip(ft.tokens(), seed_tokens(ft.seed_command), strict=True) if a != b]
    assert diff == [("../models/MobileFaceNet/model-y1-finetune", "../models/MobileFaceNet/model-y1-arcface")]
    assert plan.stage("data").skipped == "when: ${synth_data} is false"
    slim = plan.stage("slim")
    assert slim.cwd == "deploy" and slim.argv[:2] == ["python", "model_slim.py"]
    assert slim.copies == [
        ("../models/MobileFaceNet/model-y1-finetune,40", "../models/MobileFaceNet/deploy/model-y1-arcface")
    ]
    assert "models_slim.py" in slim.seed_command and "model_slim.py" in slim.note
    for name in ("convert", "bench"):
        assert plan.stage(name).stands_in


def test_overrides_are_typed_and_checked():
    lr = load_recipe("may16")
    plan = expand(lr, None, {"gpus": "0,1", "data_dir": "/data/ms1m", "per_batch_size": "256"})
    s = plan.stage("arcface")
    assert s.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert s.argv[s.argv.index("--per-batch-size") + 1] == "256" and "/data/ms1m" in s.argv
    with pytest.raises(MfnError, match="--set batch: recipe may16 has no parameter 'batch'") as e:
        expand(lr, None, {"batch": "1"})
    assert "per_batch_size" in e.value.hint
    with pytest.raises(MfnError, match="parameter per_batch_size: 'many' is not a int"):
        expand(lr, None, {"per_batch_size": "many"})
    with pytest.raises(MfnError, match="has no profile 'fast'"):
        expand(lr, "fast")


def test_smoke_profile_is_data():
    plan = expand(load_recipe("may16"), "smoke", builtins={"run_dir": "/r", "cpu_count": "2", "cpu_free": "2"})
    assert plan.environment == "cpu" and plan.patches == "mfn,py3"
    sm = plan.stage("softmax")
    assert sm.env == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    assert sm.argv[-2:] == ["--verbose", "21"] and "--per-batch-size" in sm.argv
    assert sm.argv[sm.argv.index("--per-batch-size") + 1] == "16"
    # the arithmetic that makes the smoke checks measurable: Speedometer prints at batch 20 of each epoch
    # (step 21 of epoch 0, step bpe + 21 of epoch 1); both must come before the stop at checkpoint 2
    data = plan.stage("data").argv
    images = int(data[data.index("--ids") + 1]) * int(data[data.index("--per-id") + 1])
    bpe, stop_step = images // 16, 2 * 21
    assert images % 16 == 0 and 21 <= bpe and bpe + 21 <= stop_step
    assert sm.argv[sm.argv.index("--data-dir") + 1] == "/r/data"
    assert [(plan.stage(n).stop.kind, plan.stage(n).stop.value) for n in MAY16_TRAINING] == [("checkpoint", 2)] * 3
    assert plan.stage("data").skipped is None
    assert plan.stage("arcface").inputs["pretrained"].value == "/r/models/model-y1-softmax,2"
    assert any(e.metric == "train_acc" for e in sm.expect)
    # ${cpu_free} and --set omp_threads=2 record the same typed value (provenance compares them equal)
    given = expand(load_recipe("may16"), "smoke", {"omp_threads": "2"},
                   builtins={"run_dir": "/r", "cpu_count": "2", "cpu_free": "2"})  # fmt: skip
    assert plan.parameters["omp_threads"] == given.parameters["omp_threads"] == 2
    assert expand(load_recipe("may16"), "smoke").parameters["omp_threads"] == "<cpu_free>"  # recipe plan's view


def test_plan_cli_json_and_text(cli):
    d = cli("recipe", "plan", "may16", "--profile", "seed", "--json").json()
    assert [s["name"] for s in d["stages"]] == ["data", "softmax", "arcface", "finetune", "slim", "convert", "bench"]
    soft = d["stages"][1]
    assert soft["shell"].startswith("CUDA_VISIBLE_DEVICES=0 python -u train_softmax.py --network y1")
    assert soft["stop"] == {"kind": "checkpoint", "value": 60, "why": "derived: arcface uses checkpoint 60"}
    text = cli("recipe", "plan", "may16", "--profile", "seed").out
    assert text.count("= the seed's command, token for token") == 3
    assert "stop  at checkpoint 60 (step 120000)" in text and "hazard:" in text
    assert "seed  mxnet2ncnn.exe" in text and "stands in" in text


def test_list_and_show(cli):
    rows = cli("recipe", "list", "--json").json()
    names = [r["name"] for r in rows]
    assert names == sorted(names) and "may16" in names and all(r["error"] is None for r in rows)
    assert cli("recipe", "show", "may16").out.startswith("# The seed's final training plan")
    r = cli("recipe", "show", "nope")
    assert r.code == 1 and "bundled recipes:" in r.err


def test_input_shorthands():
    assert parse_input("softmax@60").checkpoint == 60
    assert parse_input("softmax@step:120000").step == 120000
    assert parse_input("arcface@best:agedb_30").best == "agedb_30"
    assert parse_input("arcface@last").last
    assert parse_input("softmax@${softmax_checkpoint}").checkpoint == "${softmax_checkpoint}"
    with pytest.raises(ValueError):
        parse_input("softmax")


# --------------------------------------------------------------------------------------------
# Bad recipes: one error line with file:line:column and the key; nothing runs


GOOD = """\
schema: 1
name: t
title: t
seed_update: "2018-05-16"
source: tests
pin: 4bc8132
patches: mfn
environment: cpu
parameters:
  steps: {default: 10, type: int}
stages:
  a:
    title: a
    command: [python, -c, pass, "${steps}"]
    outputs: {checkpoint: m/a}
  b:
    title: b
    inputs: {pre: "a@2"}
    command: [python, -c, pass, "${inputs.pre}"]
"""


@pytest.mark.parametrize(
    "case,old,new",
    [
        ("unknown-key", "    title: a\n", "    title: a\n    comand: [x]\n"),
        ("wrong-type", "schema: 1", "schema: one"),
        ("wrong-type-param", "steps: {default: 10, type: int}", "steps: {default: 10, type: integer}"),
        ("unknown-parameter", '"${steps}"', '"${step}"'),
        ("unknown-stage-input", '"a@2"', '"c@2"'),
        ("unknown-output", '"${inputs.pre}"', '"${stages.a.outputs.model}"'),
        ("later-stage", '[python, -c, pass, "${steps}"]', '[python, -c, pass, "${stages.b.outputs.x}"]'),
        ("cycle", "    outputs: {checkpoint: m/a}\n", '    inputs: {x: "b@1"}\n    outputs: {checkpoint: m/a}\n'),
        ("bad-input", '"a@2"', '"a:2"'),
        ("duplicate-key", "  b:\n    title: b\n", "  b:\n    title: b\n    title: c\n"),
        ("bad-yaml", "stages:\n", "stages: [\n"),
        ("missing-key", "pin: 4bc8132\n", ""),
        ("input-two-ways", '{pre: "a@2"}', "{pre: {stage: a, checkpoint: 2, last: true}}"),
        (
            "unknown-sentinel",
            "    outputs: {checkpoint: m/a}\n",
            "    outputs: {checkpoint: m/a}\n    sentinels: {stal: off}\n",
        ),
        (
            "sentinel-setting",
            "    outputs: {checkpoint: m/a}\n",
            "    outputs: {checkpoint: m/a}\n    sentinels: {stall: {below: 2}}\n",
        ),
    ],
)
def test_bad_recipes_have_golden_errors(tmp_path, cli, golden, case, old, new):
    assert old in GOOD
    p = tmp_path / "bad.yaml"
    p.write_text(GOOD.replace(old, new, 1))
    r = cli("recipe", "plan", p)
    assert r.code == 1
    golden(f"recipe/{case}", r.err)
    first = r.err.splitlines()[0]
    assert first.startswith("error: <TMP>/bad.yaml:".replace("<TMP>", str(tmp_path)))


def test_the_good_recipe_is_good(tmp_path):
    p = tmp_path / "good.yaml"
    p.write_text(GOOD)
    plan = expand(load_recipe(str(p)))
    assert (plan.stage("a").stop.kind, plan.stage("a").stop.value) == ("checkpoint", 2)  # derived from b's input
    assert plan.stage("b").argv == ["python", "-c", "pass", "m/a,2"]


def test_profile_with_unknown_parameter(tmp_path, cli, golden):
    p = tmp_path / "bad.yaml"
    p.write_text(GOOD + "profiles:\n  quick:\n    description: q\n    parameters: {step: 1}\n")
    r = cli("recipe", "plan", p, "--profile", "quick")
    assert r.code == 1
    golden("recipe/profile-unknown-parameter", r.err)


def test_every_bundled_recipe_plans(cli):
    for row in cli("recipe", "list", "--json").json():
        r = cli("recipe", "plan", row["name"], "--json")
        assert r.code == 0, (row["name"], r.err)
        for p in row["profiles"]:
            assert cli("recipe", "plan", row["name"], "--profile", p, "--json").code == 0


def test_seed_commands_are_shell_words():
    for path in sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml")):
        if path.stem == "expected":
            continue
        for s in load_recipe(str(path)).recipe.stages.values():
            if s.seed_command:
                assert shlex.split(s.seed_command)


def test_sentinels_merge_recipe_profile_and_stage(tmp_path):
    text = GOOD.replace("environment: cpu\n", "environment: cpu\nsentinels: {stall: {below: 0.3}, lr: off}\n")
    text = text.replace(
        "    outputs: {checkpoint: m/a}\n",
        "    outputs: {checkpoint: m/a}\n    sentinels: {chance: {after_rounds: 3}}\n",
    )
    text += "profiles:\n  p:\n    description: p\n    sentinels: {stall: {lines: 5}}\n"
    text += "    stages: {a: {sentinels: {train_acc: off}}}\n"
    p = tmp_path / "s.yaml"
    p.write_text(text)
    a = expand(load_recipe(str(p))).stage("a").sentinels
    assert a.stall.below == 0.3 and a.lr == "off" and a.chance.after_rounds == 3 and a.train_acc != "off"
    a = expand(load_recipe(str(p)), "p").stage("a").sentinels
    assert (a.stall.below, a.stall.lines) == (0.3, 5) and a.train_acc == "off" and a.chance.after_rounds == 3
    # a tool stage watches nothing; a stage the recipe says nothing about gets the recipe's and the defaults
    assert expand(load_recipe(str(p))).stage("b").sentinels.active() == ["chance", "train_acc", "nonfinite", "stall"]


def test_mbf_plans_torchrun_with_overrides_only_where_set():
    """The PyTorch lineage's recipe: key=value overrides ({flag, sep: "=", value}) left out when unset, one
    argument each when set; a training stage that ends by itself raises no 'trains until stopped' hazard."""
    from mfnpatch.recipes.expand import expand, hazards
    from mfnpatch.recipes.recipe import load_recipe

    loaded = load_recipe("mbf")
    real = expand(loaded)
    argv = [a for a in next(s for s in real.stages if s.name == "train").argv]
    assert argv[:7] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "8",
                        "train_v2.py"]  # fmt: skip
    assert argv[7:9] == ["configs/ms1mv2_mbf.py", "rec=/train_tmp/faces_emore"] and len(argv) == 11
    assert argv[-1] == "save_all_states=True"  # resumable (the save_states parameter)
    smoke = expand(loaded, "smoke")
    sargv = next(s for s in smoke.stages if s.name == "train").argv
    assert "num_epoch=2" in sargv and "fp16=False" in sargv and "num_classes=21" in sargv
    assert smoke.environment == "torch-cpu" and real.environment == "torch-cu12"
    assert not [h for h in hazards(real) if "trains until stopped" in h]
