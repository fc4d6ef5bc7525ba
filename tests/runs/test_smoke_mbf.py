"""The mbf recipe (the PyTorch lineage: InsightFace's arcface_torch at 0159b24) for real on the CPU: the smoke
profile end to end in the torch-cpu environment, on the real pinned code with the mbf and torch-cpu patch sets
(about 2 minutes on 2 cores). Needs MFNPATCH_UPSTREAM and a torch-cpu environment (made from its lock by the
torch_cpu_prefix fixture)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mfnpatch.logs.parser import summarize

UPSTREAM = os.environ.get("MFNPATCH_UPSTREAM", "")  # read before the per-test isolation hides it
pytestmark = [pytest.mark.upstream, pytest.mark.slow]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, torch_cpu_prefix):
    work = tmp_path_factory.mktemp("mbf-smoke")
    env = {**os.environ, "MFNPATCH_UPSTREAM": UPSTREAM, "MFNPATCH_CACHE": str(work / "cache")}
    argv = [sys.executable, "-m", "mfnpatch", "recipe", "run", "mbf", "--profile", "smoke", "--env-prefix",
            str(torch_cpu_prefix), "--tree", "insightface", "--run-dir", "run"]  # fmt: skip
    p = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    return work, work / "run", p


def test_every_stage_passes(smoke):
    work, run, p = smoke
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rec = json.loads((run / "record.json").read_text())
    stages = {s["name"]: s for s in rec["stages"]}
    assert list(stages) == ["data", "train", "export", "convert", "bench"]
    for name, s in stages.items():
        assert s["status"] == "done", (name, s["ended"])
        assert s["checks"] and all(c["verdict"] == "pass" for c in s["checks"]), (name, s["checks"])
    assert [(x["name"], x["version"]) for x in rec["patches"]] == [("mbf", 1), ("torch-cpu", 1)]
    assert rec["environment"]["name"] == "torch-cpu"
    assert rec["environment"]["interpreter"]["torch"] == "2.13.0+cpu"
    assert "PyTorch 2.13.0+cpu, MXNet 1.9.1" in (run / "report.md").read_text()
    # only arcface_torch of the pinned tree's 1,351 files was checked out
    assert [p.name for p in (work / "insightface" / "recognition").iterdir()] == ["arcface_torch"]


def test_the_stage_log_is_read_as_arcface_torchs(smoke):
    """The stage's stdout (warnings first, then arcface_torch's lines) is read by the one parser as the
    arcface_torch lineage: its config, its Speed lines as the loss curve, its verifications at steps 21 and 42."""
    _, run, _ = smoke
    s = summarize(run / "stages" / "train.log")
    assert s.lineage == "arcface_torch" and s.config["network"] == "mbf" and s.config["emb_size"] == 512
    assert s.config["batch_size"] == 16 and s.config["num_epoch"] == 2
    assert {t: sorted(v) for t, v in s.verifications.items()} == {t: [21, 42] for t in ("lfw", "cfp_fp", "agedb_30")}
    assert [st for st, _ in s.loss_curve] == [10, 15, 20, 25, 30, 35, 40]  # every 5 steps from the second
    assert s.loss_curve[-1][1] < s.loss_curve[0][1]  # the loss falls on learnable synthetic identities
    # arcface_torch's own training.log says the same
    own = summarize(run / "work" / "training.log")
    assert own.verifications == s.verifications


def test_the_model_is_exported_to_onnx(smoke):
    _, run, _ = smoke
    import numpy as np
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(run / "work" / "model.onnx"))
    x = np.zeros((1, 3, 112, 112), np.float32)
    assert sess.run(None, {"data": x})[0].shape == (1, 512)


def test_verify_reads_the_run(smoke, cli):
    _, run, _ = smoke
    r = cli("log", "summary", run / "work" / "training.log", "--json")
    assert r.code == 0 and r.json()["lineage"] == "arcface_torch"


def test_the_converted_model_holds_on_the_verification_sets(smoke):
    """convert ncnn from the ONNX graph: ncnn fp32 and fp16 within the tolerance of onnxruntime on the synthetic
    sets, whose accuracy is the training log's last verification (the same model, the same protocol)."""
    _, run, _ = smoke
    ev = json.loads((run / "ncnn" / "evaluate.json").read_text())
    assert ev["reference"] == "onnxruntime" and ev["passed"] and not ev["outside"]
    assert ev["engines"] == ["onnxruntime", "ncnn folded", "ncnn folded fp16"]
    s = summarize(run / "stages" / "train.log")
    for row in ev["rows"]:
        assert abs(row["accuracy"] - s.verifications[row["set"]][42][0]) < 1e-5, row
    deal = json.loads((run / "ncnn" / "deploy.json").read_text())
    assert deal["input"]["pixel_range"] == [0.0, 255.0] and not deal["input"]["app_normalises"]
    assert deal["output"]["dim"] == 512 and len(deal["golden"]) == 6
    bench = json.loads((run / "ncnn" / "bench.json").read_text())
    assert {r["engine"] for r in bench["rows"]} == {"ncnn folded", "ncnn folded fp16", "onnxruntime"}


def test_an_interrupted_training_resumes_from_its_saved_epoch(smoke, torch_cpu_prefix, tmp_path):
    """SIGTERM after epoch 1 saved checkpoint_gpu_0.pt (save_all_states=True, the recipe's default); --resume runs
    arcface_torch's own resume=True, which restores weights, partial FC, optimizer and scheduler and continues at
    epoch 2, its log counting from the stage's start. Before the interruption it is the uninterrupted run's (the
    same seed); after it, train_v2.py's reseeded random flips make it differ a little (docs/determinism.md)."""
    import signal
    import time

    work, full, _ = smoke
    env = {**os.environ, "MFNPATCH_UPSTREAM": UPSTREAM, "MFNPATCH_CACHE": str(tmp_path / "cache")}
    threads = json.loads((full / "record.json").read_text())["recipe"]["parameters"]["omp_threads"]
    argv = [sys.executable, "-m", "mfnpatch", "recipe", "run", "mbf", "--profile", "smoke", "--env-prefix",
            str(torch_cpu_prefix), "--tree", str(work / "insightface"), "--set", f"omp_threads={threads}"]  # fmt: skip
    p = subprocess.Popen([*argv, "--run-dir", "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)  # fmt: skip
    state = tmp_path / "run" / "work" / "checkpoint_gpu_0.pt"
    deadline = time.monotonic() + 900
    while not state.is_file():
        assert p.poll() is None and time.monotonic() < deadline, "epoch 1 never saved its state"
        time.sleep(0.5)
    time.sleep(2)  # the save is written whole before epoch 2 starts
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out[-3000:]
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    train = {s["name"]: s for s in rec["stages"]}["train"]
    assert train["status"] == "interrupted" and str(state) in train["checkpoints"]

    r = subprocess.run([*argv, "--resume", "run", "--only", "train"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from the state saved after epoch 1 (step 21) as segment 1" in r.stderr + r.stdout
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    train = {s["name"]: s for s in rec["stages"]}["train"]
    assert train["status"] == "done" and all(c["verdict"] == "pass" for c in train["checks"]), train["checks"]
    (seg,) = train["segments"]
    assert (seg["steps"], seg["start_step"], seg["start_save"]) == ("stage", 21, 1)
    assert seg["argv"][-1] == "resume=True" and seg["lr"] == pytest.approx(0.05)
    seg_log = (tmp_path / "run" / seg["log"]).read_text()
    assert ": resume                   True" in seg_log and "Global Step: 30" in seg_log  # its first Speed line
    assert "Global Step: 20" not in seg_log  # epoch 1 is not trained again
    m = train["metrics"]
    assert m["last_step"] == 42 and all(m["targets"][t]["rounds"] == 2 for t in ("lfw", "cfp_fp", "agedb_30"))
    a = summarize(full / "stages" / "train.log")
    b = summarize(tmp_path / "run" / "stages" / "train.log")
    assert {t: v[21] for t, v in a.verifications.items()} == {t: v[21] for t, v in b.verifications.items()}
    final = {t: x["last"] for t, x in m["targets"].items()}
    full_final = {t: a.verifications[t][42][0] for t in final}
    assert all(abs(final[t] - full_final[t]) <= 0.03 for t in final), (final, full_final)


def test_the_fit_memory_figure_is_mbfs_activations(smoke):
    """45.9 MiB of float32 outputs a 112x112 sample in mbf's training graph (each conv's output, its BatchNorm's
    and its PReLU's; the exported graph folds BatchNorm into the conv, so a conv output counts twice), halved by
    fp16 and plus 10 % is the recipe's 25.3."""
    import numpy as np
    import onnx
    from onnx import shape_inference

    from mfnpatch.recipes.recipe import load_recipe

    _, run, _ = smoke
    g = shape_inference.infer_shapes(onnx.load(str(run / "work" / "model.onnx"))).graph
    sizes = {v.name: int(np.prod([d.dim_value or 1 for d in v.type.tensor_type.shape.dim])) for v in g.value_info}
    values = sum(sizes.values()) + sum(n for name, n in sizes.items() if name.endswith("Conv_output_0"))
    mib = (values + 3 * 112 * 112) * 4 / 2**20
    spec = load_recipe("mbf").recipe.fit
    assert mib == pytest.approx(45.9, abs=0.05) and spec.memory_per_sample_mib == pytest.approx(mib / 2 * 1.1, abs=0.1)


def test_two_seeded_runs_train_the_same_bytes(smoke, torch_cpu_prefix):
    """arcface_torch seeds itself (config seed 2048, setup_seed); with the same thread count, two runs of the
    smoke training on the CPU write byte-identical model.pt and checkpoint_gpu_0.pt and the same log lines."""
    work, full, _ = smoke
    env = {**os.environ, "MFNPATCH_UPSTREAM": UPSTREAM, "MFNPATCH_CACHE": str(work / "cache")}
    threads = json.loads((full / "record.json").read_text())["recipe"]["parameters"]["omp_threads"]
    argv = [sys.executable, "-m", "mfnpatch", "recipe", "run", "mbf", "--profile", "smoke", "--env-prefix",
            str(torch_cpu_prefix), "--tree", "insightface", "--run-dir", "run2", "--set", f"omp_threads={threads}",
            "--set", "arm="]  # fmt: skip  # the whole plan (its data stage makes the data), no ARM check: not compared
    p = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run2 = work / "run2"
    a, b = (json.loads((d / "record.json").read_text()) for d in (full, run2))
    train_a, train_b = ({s["name"]: s for s in r["stages"]}["train"] for r in (a, b))
    assert train_b["status"] == "done"
    assert {Path(k).name: v for k, v in train_a["checkpoints"].items()} == {
        Path(k).name: v for k, v in train_b["checkpoints"].items()
    } and train_a["checkpoints"]  # checkpoint_gpu_0.pt
    assert (full / "work" / "model.pt").read_bytes() == (run2 / "work" / "model.pt").read_bytes()
    what = re.compile(
        r"\[\w+\]\[\d+\]Accuracy-Flip: \S+|Loss [\d.]+ +LearningRate [\d.]+ +Epoch: \d+ +Global Step: \d+"
    )
    lines = [what.findall((d / "work" / "training.log").read_text()) for d in (full, run2)]
    assert lines[0] == lines[1] and len(lines[0]) == 6 + 7  # the Speed values themselves are the machine's
