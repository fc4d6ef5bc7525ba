"""Fitting may16 to other GPUs: the seed's total batch kept (per-GPU batch divided), or the per-GPU batch kept with
every step count and learning rate scaled to equal samples seen, or a smaller total said so; refusals; the warning
for a silent change; the record."""

from __future__ import annotations

import pytest

from mfnpatch.recipes import RecipeError
from mfnpatch.recipes.expand import FitRequest, expand
from mfnpatch.recipes.fit import FitSpec, fit_parameters, memory_need_mib, parse_gpus
from mfnpatch.recipes.recipe import load_recipe


def plan(fit=None, sets=None, profile=None):
    return expand(load_recipe("may16"), profile, sets or {}, fit=fit)


def argv(p, stage):
    return p.stage(stage).argv


def opt(a, flag):
    return a[a.index(flag) + 1] if flag in a else None


def test_fit_total_keeps_the_seeds_experiment():
    p = plan(FitRequest("total", ["0", "1", "2", "3"]))
    for stage in ("softmax", "arcface", "finetune"):
        a = argv(p, stage)
        assert opt(a, "--per-batch-size") == "128" and p.stage(stage).env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert opt(argv(p, "softmax"), "--lr-steps") == "120000,140000" and "--lr" not in argv(p, "softmax")
    assert opt(argv(p, "finetune"), "--lr") == "0.001" and "--verbose" not in argv(p, "arcface")
    assert p.stage("arcface").stop.value == 100 and p.stage("softmax").stop.value == 60
    f = p.fit
    assert (f.total, f.per_gpu, f.factor, f.differs) == (512, 128, 1.0, False)
    assert [(c.parameter, c.seed, c.now) for c in f.changes] == [("per_batch_size", 512, 128)]
    assert p.stage("softmax").resources["gpus_per_node"] == "4"
    assert not any("total batch" in h for h in p.hazards)


def test_fit_per_gpu_scales_every_step_and_lr_to_equal_samples():
    p = plan(FitRequest("per-gpu", ["0", "1"]))
    s, a, ft = argv(p, "softmax"), argv(p, "arcface"), argv(p, "finetune")
    assert opt(s, "--per-batch-size") == "512" and opt(s, "--lr-steps") == "60000,70000" and opt(s, "--lr") == "0.2"
    assert opt(a, "--lr-steps") == "60000,80000,90000,100000" and opt(a, "--lr") == "0.2"
    assert opt(ft, "--lr-steps") == "10000,15000,20000" and opt(ft, "--lr") == "0.002"
    assert all(opt(x, "--verbose") == "1000" for x in (s, a, ft))  # a checkpoint every 1000 steps: same samples
    # checkpoint 60 at --verbose 1000 is step 60000 x 1024 samples: the seed's 120000 x 512
    assert p.stage("softmax").stop.value == 60
    f = p.fit
    assert (f.total, f.factor, f.differs) == (1024, 2.0, True)
    assert {c.parameter for c in f.changes} == {"softmax_lr_steps", "arcface_lr_steps", "finetune_lr_steps",
                                                "verbose", "softmax_lr", "arcface_lr", "finetune_lr"}  # fmt: skip
    assert "NOT the seed's experiment" in f.summary()


def test_fit_smaller_batch_only_when_asked():
    sets = {"per_batch_size": "256"}
    with pytest.raises(RecipeError, match="smaller than the seed's 512") as e:
        plan(FitRequest("per-gpu", ["0"]), sets)
    assert "--fit smaller-batch" in e.value.hint
    p = plan(FitRequest("smaller-batch", ["0"]), sets)
    assert opt(argv(p, "softmax"), "--lr-steps") == "240000,280000" and opt(argv(p, "softmax"), "--lr") == "0.05"
    assert opt(argv(p, "arcface"), "--verbose") == "4000" and p.fit.differs and p.fit.factor == 0.5
    with pytest.raises(RecipeError, match="not smaller"):
        plan(FitRequest("smaller-batch", ["0", "1"]))


def test_refusals():
    with pytest.raises(RecipeError, match="3 GPUs do not divide the seed's total batch 512"):
        plan(FitRequest("total", ["0", "1", "2"]))
    with pytest.raises(RecipeError, match="needs about 21.1 GiB") as e:
        plan(FitRequest("total", ["0"], memory_mib=16 * 1024, gpu_name="GPU 0 (Tesla V100-SXM2-16GB)"))
    assert "Tesla V100" in e.value.message and "--gpus 2 --fit total" in e.value.hint
    # the seed's own setup fits the seed's card: 512 on a P40 (22.4 GiB usable of its 24 GB)
    assert plan(FitRequest("total", ["0"], memory_mib=22919, gpu_name="P40")).fit.memory["need_mib"] == 21658
    assert plan(FitRequest("total", ["0", "1"], memory_mib=16 * 1024)).fit.per_gpu == 256
    with pytest.raises(RecipeError, match="write a count"):
        parse_gpus("0,0")
    assert parse_gpus("3") == ["0", "1", "2"] and parse_gpus("1,3") == ["1", "3"]


def test_a_silent_change_of_the_total_batch_is_a_warning():
    p = plan(sets={"gpus": "0,1"})
    assert any("total batch 1024 (2 GPU(s) x per_batch_size 512) is not the seed's 512" in h for h in p.hazards)
    assert p.fit.differs and p.fit.rule is None
    assert not any("total batch" in h for h in plan().hazards)
    assert not any("total batch" in h for h in plan(profile="smoke").hazards)  # its batch is its own, by design


def test_the_memory_figure_is_y1s_activations():
    """36.7 MiB of float32 outputs a 112x112 sample in the graph of a y1-shaped network, plus 10 % (40.3)."""
    mx = pytest.importorskip("mxnet")
    import numpy as np
    from mfn_symbol import mobilefacenet

    internals = mobilefacenet(mx).get_internals()
    _, shapes, _ = internals.infer_shape(data=(1, 3, 112, 112))
    size = dict(zip(internals.list_outputs(), shapes, strict=True))
    mib = sum(int(np.prod(size[o])) for o in internals.list_outputs() if o.endswith("_output")) * 4 / 2**20
    spec = load_recipe("may16").recipe.fit
    assert mib == pytest.approx(36.7, abs=0.05) and spec.memory_per_sample_mib == pytest.approx(mib * 1.1, abs=0.05)
    assert memory_need_mib(spec, 512) / 1024 < 22919 / 1024  # the seed's P40


def test_fit_needs_a_fit_section(tmp_path, cli):
    r = cli("recipe", "plan", "may09", "--gpus", "2")
    assert r.code == 1 and "has no fit: section" in r.err
    r = cli("recipe", "plan", "may16", "--gpus", "2", "--fit", "per-gpu", "--json")
    assert r.code == 0 and r.json()["fit"]["total"] == 1024
    r = cli("recipe", "plan", "may16", "--fit", "half")
    assert r.code == 64 and "use total, per-gpu or smaller-batch" in r.err
    text = cli("recipe", "plan", "may16", "--gpus", "2", "--fit", "per-gpu").out
    assert "changed from the seed: softmax_lr_steps 120000,140000 -> 60000,70000" in text


def test_fit_parameters_rounds_and_says_so():
    spec = FitSpec(total_batch=512, gpus="g", per_gpu_batch="b", steps=["s"], verbose="v", lr={"lr": 0.1})
    d = fit_parameters(spec, {"g": "0", "b": 512, "s": "1000,3001", "v": None}, "per-gpu", ["0", "1", "2"])
    assert d.overrides["s"] == "333,1000" and "rounded" in d.changes[0].why
    assert d.overrides["v"] == "667" and d.overrides["lr"] == "0.3"


def test_mbf_fits_another_gpu_count_keeping_the_published_total_batch(cli):
    """arcface_torch's --gpus: the published 8 x 128 = 1,024 kept by the per-GPU batch, one process per GPU, the
    Slurm request the same; --fit per-gpu keeps 128 a GPU and scales lr and verbose, each change said."""
    d = cli("recipe", "plan", "mbf", "--gpus", "4", "--json").json()
    assert d["fit"]["total"] == 1024 and not d["fit"]["differs"]
    p = d["parameters"]
    assert (p["gpus"], p["nproc"], p["batch_size"], p["slurm_gpus"]) == ("0,1,2,3", 4, 256, 4)
    argv = next(s for s in d["stages"] if s["name"] == "train")["argv"]
    assert argv[argv.index("--nproc_per_node") + 1] == "4" and "batch_size=256" in argv
    assert "trainer arcface_torch: total batch 1024 (4 x 256)" in cli("recipe", "plan", "mbf", "--gpus", "4").out
    d = cli("recipe", "plan", "mbf", "--gpus", "16", "--fit", "per-gpu", "--json").json()
    argv = next(s for s in d["stages"] if s["name"] == "train")["argv"]
    assert d["fit"]["differs"] and "lr=0.2" in argv and "verbose=1000" in argv and "batch_size=128" not in argv
    assert {c["parameter"]: c["now"] for c in d["fit"]["changes"]} == {"verbose": "1000", "lr": 0.2}
    r = cli("recipe", "plan", "mbf", "--gpus", "3")
    assert r.code == 1 and "3 GPUs do not divide the seed's total batch 1024" in r.err
    r = cli("recipe", "plan", "mbf", "--gpus", "1", "--gpu-memory", "24")
    assert r.code == 1 and "a per-GPU batch of 1024 needs about 26.8 GiB" in r.err and "--gpus 2" in r.err
    assert cli("recipe", "plan", "mbf", "--gpus", "1", "--gpu-memory", "80").code == 0  # an H100
