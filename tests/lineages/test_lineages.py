"""The lineage registry: one name per line of InsightFace's code, typed facts read from a stage's command, and
capabilities a lineage lacks said where a user looks (recipe plan), never silently off."""

from __future__ import annotations

import pytest
import third_lineage

from mfnpatch import lineages
from mfnpatch.errors import MfnError
from mfnpatch.lineages.base import Capabilities, PolySchedule, StepSchedule

MX = ["python", "-u", "train_softmax.py", "--network", "y1", "--loss-type", "4", "--lr", "0.1",
      "--lr-steps", "40000,60000", "--per-batch-size", "128", "--prefix", "../models/MobileFaceNet/model-y1-arcface",
      "--pretrained", "../models/MobileFaceNet/model-y1-softmax,20"]  # fmt: skip
TORCH = ["torchrun", "--nproc_per_node", "4", "train_v2.py", "configs/ms1mv2_mbf.py", "batch_size=64",
         "output=work/mbf"]  # fmt: skip


def test_the_two_lineages_are_registered_under_one_name_each_with_their_old_names_as_aliases():
    assert set(lineages.LINEAGES) == {"insightface_mxnet", "arcface_torch"}
    assert lineages.get("mxnet") is lineages.get("insightface_mxnet")
    assert lineages.get("torch") is lineages.get("arcface_torch")
    with pytest.raises(MfnError) as e:
        lineages.get("caffe")
    assert "unknown lineage 'caffe'" in str(e.value) and "insightface_mxnet" in (e.value.hint or "")


def test_facts_of_an_mxnet_command():
    f = lineages.facts_of(MX)
    assert f is not None and f.lineage == "insightface_mxnet"
    assert (f.per_gpu_batch, f.processes, f.total_batch) == (128, 1, 128)
    assert f.prefix == "../models/MobileFaceNet/model-y1-arcface"
    assert f.pretrained == "../models/MobileFaceNet/model-y1-softmax,20"
    assert isinstance(f.lr, StepSchedule)
    assert [f.lr.at(s) for s in (0, 39999, 40000, 60000)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_facts_of_an_arcface_torch_command():
    f = lineages.facts_of(TORCH)
    assert f is not None and f.lineage == "arcface_torch"
    assert (f.per_gpu_batch, f.processes, f.total_batch) == (64, 4, 256)
    assert f.steps == 5822653 // 256 * 40 and f.verbose == 2000 and f.prefix == "work/mbf"
    assert isinstance(f.lr, PolySchedule)
    assert f.lr.at(0) is None  # before the first scheduler step nothing is scheduled
    assert f.lr.at(f.steps // 2) == pytest.approx(0.05, rel=1e-3)  # no warm-up: linear decay to 0
    assert f.lr.at(f.steps) == 0.0


def test_a_warm_up_rises_linearly_then_decays():
    s = PolySchedule(base=0.2, warmup=100, total=1100)
    assert [s.at(50), s.at(100), s.at(600), s.at(1100), s.at(5000)] == pytest.approx([0.1, 0.2, 0.1, 0.0, 0.0])


def test_a_command_of_no_known_trainer_has_no_lineage():
    assert lineages.of_argv(["python", "-c", "pass"]) is None
    assert lineages.facts_of(["python", "deploy/convert.py"]) is None


def test_get_and_set_speak_each_lineages_grammar():
    mx, torch = lineages.get("insightface_mxnet"), lineages.get("arcface_torch")
    assert mx.get(MX, "per_batch_size") == "128" and mx.get(MX, "verbose") is None
    assert mx.get(mx.set(MX, "verbose", "500"), "verbose") == "500"
    assert torch.get(TORCH, "batch_size") == "64" and torch.get(TORCH, "output") == "work/mbf"
    moved = torch.set(TORCH, "output", "elsewhere")
    assert torch.get(moved, "output") == "elsewhere" and moved.count("output=elsewhere") == 1
    assert "output=work/mbf" not in moved


def test_what_a_lineage_lacks_is_said():
    assert lineages.get("insightface_mxnet").capabilities.said() == []
    said = Capabilities(resume="not yet", lr_sentinel=None, fit="no fit: one GPU only").said()
    assert said == ["no resume: not yet", "no fit: no fit: one GPU only"]


@pytest.fixture
def caffe():
    """A third line of code (tests/support/third_lineage.py), plugged in by registering it."""
    try:
        yield third_lineage.register()
    finally:
        third_lineage.unregister()


RECIPE = """\
schema: 1
name: t
title: t
seed_update: "2018-05-16"
source: tests
pin: 4bc8132
patches: mfn
environment: cpu
stages:
  a:
    title: a
    command: [caffe, train, --solver, s.prototxt]
"""


def test_a_third_lineage_plugs_in_by_registering(tmp_path, cli, caffe):
    assert lineages.get("caffe_mfn") is caffe
    f = lineages.facts_of(["caffe", "train", "--solver", "s.prototxt"])
    assert f is not None and f.lineage == "caffe_mfn" and f.total_batch == 64
    p = tmp_path / "caffe.yaml"
    p.write_text(RECIPE)
    text = cli("recipe", "plan", p).out
    assert "trainer caffe_mfn: total batch 64 (2 x 32), verification every 100 steps" in text
    assert "no resume: its solver state is not read" in text and "no lr sentinel: its log prints no lr" in text


def test_a_third_lineages_log_is_read_by_the_one_parser(caffe):
    from mfnpatch.logs.parser import summarize_text

    s = summarize_text("CAFFE iter 100 lfw=0.91\nCAFFE iter 200 lfw=0.95\nsomething else\n")
    assert s.lineage == "caffe_mfn" and s.verifications["lfw"] == {100: (0.91, 0.0, None), 200: (0.95, 0.0, None)}
    assert summarize_text("[lfw][2000]Accuracy-Flip: 0.95+-0.01\n").lineage == "insightface_mxnet"


def test_without_it_the_plan_says_the_stage_runs_no_known_trainer(tmp_path, cli):
    p = tmp_path / "caffe.yaml"
    p.write_text(RECIPE)
    text = cli("recipe", "plan", p).out
    assert "runs no trainer of a known lineage: no resume, lr sentinel or fit" in text


def test_a_recipe_names_its_lineage_and_its_training_stages_run_that_lineages_trainer(tmp_path, cli):
    assert "lineage arcface_torch" in cli("recipe", "plan", "mbf").out
    assert cli("recipe", "plan", "may16", "--json").json()["lineage"] == "insightface_mxnet"
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE.replace("environment: cpu\n", "environment: cpu\nlineage: caffe2\n"))
    r = cli("recipe", "plan", p)
    assert r.code == 1 and f"{p}:9:" in r.err and "unknown lineage 'caffe2'" in r.err and "arcface_torch" in r.err
    p.write_text(
        RECIPE.replace("environment: cpu\n", "environment: cpu\nlineage: arcface_torch\n").replace(
            "[caffe, train, --solver, s.prototxt]", "[python, -u, train_softmax.py, --network, y1]"
        )
    )
    r = cli("recipe", "plan", p)
    assert r.code == 1 and "stage 'a' runs insightface_mxnet's trainer, but the recipe says lineage: arcface_torch" \
        in r.err  # fmt: skip
