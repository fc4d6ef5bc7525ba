"""The mbf recipe (the PyTorch lineage: InsightFace's arcface_torch at 0159b24) for real on the CPU: the smoke
profile end to end in the torch-cpu environment, on the real pinned code with the mbf and torch-cpu patch sets
(about 2 minutes on 2 cores). Needs MFNPATCH_UPSTREAM and a torch-cpu environment (made from its lock by the
torch_cpu_prefix fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
