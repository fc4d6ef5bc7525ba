"""A third lineage from tests/support/third_lineage.py (its trainer, its log format, its Lineage), registered with
nothing changed in mfnpatch: recipe plan, recipe run, recipe estimate, log summary, verify and compare on it."""

from __future__ import annotations

import json

import pytest
import third_lineage


@pytest.fixture
def caffe(runfx):
    lin = third_lineage.register()
    p = runfx.root / "caffe.yaml"
    p.write_text(third_lineage.recipe(runfx.sha[:7]))
    try:
        yield lin, p
    finally:
        third_lineage.unregister()


def _run(cli, runfx, recipe, name):
    return cli("recipe", "run", recipe, "--tree", runfx.tree, "--run-dir", runfx.run_dir(name), "--json",
               "--no-env-check")  # fmt: skip


def test_plan_says_what_the_lineage_reads_and_cannot_do(cli, caffe):
    _, recipe = caffe
    text = cli("recipe", "plan", recipe).out
    assert "lineage caffe_mfn" in text
    assert "trainer caffe_mfn: total batch 64 (2 x 32), verification every 10 steps" in text
    assert "no resume: its solver state is not read" in text


def test_run_verify_and_compare_a_third_lineage(cli, runfx, caffe):
    _, recipe = caffe
    r = _run(cli, runfx, recipe, "run")
    assert r.code == 0, r.err
    rec = json.loads((runfx.run_dir() / "record.json").read_text())
    assert rec["recipe"]["lineage"] == "caffe_mfn"
    (train,) = rec["stages"]
    assert train["status"] == "done" and all(c["verdict"] == "pass" for c in train["checks"]), train["checks"]
    lfw = train["metrics"]["targets"]["lfw"]
    assert (lfw["best"], lfw["best_step"], lfw["rounds"]) == (0.9, 40, 4)
    log = runfx.run_dir() / "stages" / "train.log"
    assert cli("log", "summary", log, "--json").json()["lineage"] == "caffe_mfn"
    v = cli("verify", "--log", log, "--recipe", recipe, "--json")
    assert v.code == 0 and v.json()["stage"] == "train" and v.json()["verdict"] == "pass", v.out + v.err
    assert _run(cli, runfx, recipe, "run2").code == 0
    c = cli("compare", runfx.run_dir(), runfx.run_dir("run2"), "--json", "--no-plot")
    assert c.code == 0 and c.json()["identical"], c.out + c.err
    row = next(r for r in c.json()["rows"] if r["what"] == "provenance" and r["key"] == "lineage")
    assert row["a"] == row["b"] == "caffe_mfn"  # compare says the lineage by its one name


def test_an_interrupted_stage_of_a_lineage_without_resume_says_so_and_reruns(cli, runfx, caffe, monkeypatch):
    _, recipe = caffe
    assert _run(cli, runfx, recipe, "run").code == 0
    rec_path = runfx.run_dir() / "record.json"
    rec = json.loads(rec_path.read_text())
    rec["stages"][0]["status"] = "interrupted"  # as a killed run leaves it
    rec_path.write_text(json.dumps(rec))
    r = cli("recipe", "run", recipe, "--tree", runfx.tree, "--resume", runfx.run_dir(), "--no-env-check")
    assert r.code == 0, r.err
    assert "stage train cannot be resumed (its solver state is not read): it runs again from its start" in r.err


def test_estimate_probes_its_trainer(cli, runfx, caffe):
    _, recipe = caffe
    r = cli("recipe", "estimate", recipe, "--tree", runfx.tree, "--probe-steps", "4", "--no-warm", "--json")
    assert r.code == 0, r.out + r.err
    (row,) = r.json()["stages"]
    assert (row["stage"], row["steps"], row["rounds"]) == ("train", 40, 4)  # the lineage's facts of the command
    assert row["cold"]["ended"] == "stopped at step 4 (planned), by mfnpatch"  # its probe command, run
