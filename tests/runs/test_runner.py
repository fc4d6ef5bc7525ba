"""recipe run on a fake trainer: stop points, hand-over, expectations, records, resume, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_fake

from mfnpatch.errors import EXIT_INTERRUPTED
from mfnpatch.lineages.mxnet_resume import NEVER
from mfnpatch.logs.parser import summarize_text
from mfnpatch.recipes.recipe import InputRef
from mfnpatch.runs.handover import pick_checkpoint
from mfnpatch.runs.record import RunError, load_record

run = run_fake


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_run_end_to_end(cli, runfx):
    r = run(cli, runfx)
    assert r.code == 0, r.err
    d = r.json()
    assert d["status"] == "passed" and d["schema"] == 2
    st = {s["name"]: s for s in d["stages"]}
    assert [s["status"] for s in d["stages"]] == ["done"] * 4
    # the fake trainer writes a checkpoint every 20 ms, so it may get past 5 before it is stopped; the record says so
    assert st["softmax"]["ended"].startswith("stopped at checkpoint 5 (planned), by mfnpatch")
    assert st["softmax"]["stop"] == {"kind": "checkpoint", "value": 5, "why": "derived: arcface uses checkpoint 5"}
    rd = runfx.run_dir()
    assert st["arcface"]["inputs"] == {"pretrained": f"{rd}/models/model-y1-softmax,5"}
    assert st["arcface"]["argv"][st["arcface"]["argv"].index("--pretrained") + 1] == f"{rd}/models/model-y1-softmax,5"
    assert st["slim"]["inputs"] == {"model": f"{rd}/models/model-y1-arcface,2"}
    # the slim step ran on a copy: the training symbol of the arcface stage still has fc7
    train_sym = json.loads((rd / "models/model-y1-arcface-symbol.json").read_text())
    slim_sym = json.loads((rd / "models/deploy/model-y1-arcface-symbol.json").read_text())
    assert any(n["name"] == "fc7" for n in train_sym["nodes"])
    assert not any(n["name"].startswith("fc7") for n in slim_sym["nodes"])
    assert (rd / "models/deploy/model-y1-arcface-0000.params").is_file()
    # metrics, checks, provenance, logs
    assert st["softmax"]["metrics"]["targets"]["lfw"]["best"] >= 0.8  # 0.8 at step 50, more if it ran on
    assert {c["id"] for c in st["softmax"]["checks"]} >= {"exit", "lfw verified", "lfw best", "train_acc rises"}
    assert all(s["provenance"] and s["log_sha256"] for s in d["stages"])
    assert d["patches"][0]["name"] == "fake" and d["pin"]["commit"] == runfx.sha
    assert d["environment"]["interpreter"]["version"].startswith("3.")
    assert (rd / "stages/softmax.log").read_text().count("Accuracy-Flip") >= 15  # 5 rounds x 3 targets, or more
    report = (rd / "report.md").read_text()
    assert report.startswith("# Run run: PASSED") and "![softmax accuracy](curves-softmax.png)" in report
    assert (rd / "curves-softmax.png").read_bytes()[:4] == b"\x89PNG"
    assert load_record(rd).status == "passed"
    s = cli("recipe", "status", rd)
    assert s.code == 0 and "stopped at checkpoint 5 (planned)" in s.out


@pytest.mark.slow
def test_failed_expectation_stops_the_run(cli, runfx, monkeypatch):
    monkeypatch.setenv("FAKE_CAP", "0.45")
    r = run(cli, runfx)
    assert r.code == 1
    d = r.json()
    st = {s["name"]: s for s in d["stages"]}
    assert st["softmax"]["status"] == "done" and st["softmax"]["passed"] is False
    failed = [c for c in st["softmax"]["checks"] if c["verdict"] != "pass"]
    assert [c["id"] for c in failed] == ["lfw best", "train_acc rises"]  # capped: flat
    assert failed[0]["message"] == "lfw (best, step 20): 0.45, expected >= 0.5"
    assert st["arcface"]["status"] == "pending" and d["status"] == "failed"
    r = run(cli, runfx, "--keep-going", name="kg")
    st = {s["name"]: s for s in r.json()["stages"]}
    assert st["arcface"]["status"] == "done" and st["arcface"]["passed"] is False and st["slim"]["status"] == "done"


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_crash_then_resume(cli, runfx, monkeypatch):
    monkeypatch.setenv("FAKE_CRASH_AT", "5")
    monkeypatch.setenv("FAKE_CRASH_LOSS", "4")
    r = run(cli, runfx)
    assert r.code == 1
    st = {s["name"]: s for s in r.json()["stages"]}
    assert st["arcface"]["status"] == "failed" and st["arcface"]["exit_code"] == 1
    assert st["arcface"]["ended"] == "exited 1: error: KeyError: 'CUDA_VISIBLE_DEVICES'"
    monkeypatch.delenv("FAKE_CRASH_AT")
    softmax_log = (runfx.run_dir() / "stages/softmax.log").read_bytes()
    r = cli(
        "recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--resume", runfx.run_dir(), "--json"
    )
    assert r.code == 0, r.err
    st = {s["name"]: s for s in r.json()["stages"]}
    assert st["arcface"]["status"] == "done"
    assert (runfx.run_dir() / "stages/softmax.log").read_bytes() == softmax_log  # reused, not rerun
    old_logs = list((runfx.run_dir() / "stages").glob("arcface.*.log"))
    assert len(old_logs) == 1 and "KeyError" in old_logs[0].read_text()


@pytest.mark.slow
def test_resume_reuses_and_refuses_changed_provenance(cli, runfx):
    assert run(cli, runfx).code == 0
    rd = runfx.run_dir()
    logs = {p.name: p.stat().st_mtime_ns for p in (rd / "stages").iterdir()}
    r = cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--resume", rd)
    assert r.code == 0 and r.err.count("reused") == 4
    assert {p.name: p.stat().st_mtime_ns for p in (rd / "stages").iterdir()} == logs
    runfx.recipe.write_text(runfx.recipe.read_text().replace('"20,25"', '"20,26"'))
    r = cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--resume", rd)
    assert r.code == 1
    assert "stage data was completed with a different provenance" in r.err
    assert "recipe:" in r.err and "--force" in r.err
    r = cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--resume", rd, "--force", "--json")
    assert r.code == 0
    st = {s["name"]: s for s in r.json()["stages"]}
    assert "20,26" in st["softmax"]["argv"]


@pytest.mark.slow
def test_from_and_only_need_the_inputs(cli, runfx):
    base = ["recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree]
    r = cli(*base, "--run-dir", runfx.run_dir(), "--from", "arcface")
    assert r.code == 1
    assert "stage arcface needs softmax checkpoint 5" in r.err and "--resume" in r.err
    r = cli(*base, "--run-dir", runfx.run_dir("x"), "--only", "nope")
    assert r.code == 1 and "--only nope: recipe fake has no such stage" in r.err
    r = cli(*base, "--run-dir", runfx.run_dir("a"), "--only", "data", "--json")
    assert r.code == 0 and r.json()["status"] == "incomplete"
    assert [s["status"] for s in r.json()["stages"]] == ["done", "pending", "pending", "pending"]
    r = cli(*base, "--run-dir", runfx.run_dir("y"), "--only", "data,nope")
    assert r.code == 1 and "--only nope: recipe fake has no such stage" in r.err
    r = cli(*base, "--run-dir", runfx.run_dir("b"), "--only", "softmax,data", "--json")  # several, in plan order
    assert r.code == 0 and [s["status"] for s in r.json()["stages"]] == ["done", "done", "pending", "pending"]


@pytest.mark.slow
def test_missing_checkpoint_file_is_not_guessed(cli, runfx):
    rd = runfx.run_dir()
    assert run(cli, runfx).code == 0
    (rd / "models/model-y1-softmax-0005.params").unlink()
    # every stage completed with the same provenance: nothing needs the file
    assert cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--resume", rd).code == 0
    rec = load_record(rd).model_dump(by_alias=True)
    rec["stages"][2]["status"] = "failed"  # arcface must run again, and it needs softmax's checkpoint 5
    (rd / "record.json").write_text(json.dumps(rec))
    for p in (rd / "models").glob("model-y1-arcface-*.params"):  # (none of its own to continue from)
        p.unlink()
    r = cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--resume", rd, "--only", "arcface")
    assert r.code == 1
    assert "needs checkpoint 5 of softmax: its log saved it, but" in r.err and "model-y1-softmax-0005.params" in r.err


@pytest.mark.slow
def test_drifted_tree_is_refused(cli, runfx):
    assert run(cli, runfx, name="first").code == 0
    p = runfx.tree / "src/train_softmax.py"
    p.write_text(p.read_text() + "\n# local experiment\n")
    r = run(cli, runfx, name="second")
    assert r.code == 1 and "changed outside mfnpatch" in r.err
    assert not (runfx.run_dir("second") / "record.json").exists()


def test_existing_run_dir_is_not_overwritten(cli, runfx):
    rd = runfx.run_dir()
    rd.mkdir(parents=True)
    (rd / "mine.txt").write_text("keep")
    r = run(cli, runfx)
    assert r.code == 1 and "exists and is not empty" in r.err and (rd / "mine.txt").read_text() == "keep"


def test_checkpoint_choice_from_the_log():
    """Hand-over is a pure function of the source stage's log (no runner needed)."""
    log = "".join(
        f'[lfw][{st}]Accuracy-Flip: {acc:.5f}+-0.01000\nsaving {n}\nINFO:root:Saved checkpoint to "m-{n:04d}.params"\n'
        for n, st, acc in [(1, 10, 0.7), (2, 20, 0.9), (3, 30, 0.8)]
    )
    s = summarize_text(log)
    pick = pick_checkpoint
    assert pick(InputRef(stage="a", checkpoint=2), s, "b") == 2
    assert pick(InputRef(stage="a", step=30), s, "b") == 3
    assert pick(InputRef(stage="a", best="lfw"), s, "b") == 2
    assert pick(InputRef(stage="a", last=True), s, "b") == 3
    with pytest.raises(RunError, match=r"checkpoint 7 of a, which its log never saved \(it saved 1\.\.3\)"):
        pick(InputRef(stage="a", checkpoint=7), s, "b")
    with pytest.raises(RunError, match="has none there"):
        pick(InputRef(stage="a", step=25), s, "b")
    with pytest.raises(RunError, match="no agedb_30 result"):
        pick(InputRef(stage="a", best="agedb_30"), s, "b")


def test_best_checkpoint_ties_earliest_or_latest():
    """may14's fine-tune takes the best-LFW ArcFace checkpoint, the latest of ties (the author's 67 of 57, 58, 67)."""
    log = "".join(
        f'[lfw][{st}]Accuracy-Flip: {acc:.5f}+-0.01000\nsaving {n}\nINFO:root:Saved checkpoint to "m-{n:04d}.params"\n'
        for n, st, acc in [(57, 114000, 0.99517), (58, 116000, 0.99517), (59, 118000, 0.994), (67, 134000, 0.99517)]
    )
    s = summarize_text(log)
    assert pick_checkpoint(InputRef(stage="a", best="lfw"), s, "b") == 57
    assert pick_checkpoint(InputRef(stage="a", best="lfw", tie="latest"), s, "b") == 67
    with pytest.raises(ValueError, match="tie applies to best only"):
        InputRef(stage="a", last=True, tie="latest")


@pytest.mark.slow
def test_interrupt_stops_the_stage_and_keeps_the_record(runfx, tmp_path):
    """SIGTERM to `mfnpatch recipe run`: the trainer's process group is stopped, the stage is recorded
    as interrupted, the record is whole, and the exit code is 130."""
    env = {**os.environ, "FAKE_DELAY": "0.05"}
    rd = runfx.run_dir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mfnpatch", "recipe", "run", str(runfx.recipe), "--no-env-check", "--tree",
         str(runfx.tree), "--run-dir", str(rd), "--set", "verbose=20"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = rd / "stages/softmax.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.is_file() and "saving 1" in log.read_text()):
        time.sleep(0.05)
    assert log.is_file(), proc.communicate()
    trainer_pids = _pids_running("train_softmax.py", runfx.tree)
    assert trainer_pids
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted by SIGTERM" in err and "--resume" in err
    rec = load_record(rd)
    st = {s.name: s for s in rec.stages}
    assert rec.status == "interrupted" and st["softmax"].status == "interrupted"
    assert st["arcface"].status == "pending"
    time.sleep(0.2)
    assert not (set(trainer_pids) & set(_pids_running("train_softmax.py", runfx.tree)))
    # and it can be continued
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mfnpatch",
            "recipe",
            "run",
            str(runfx.recipe),
            "--no-env-check",
            "--tree",
            str(runfx.tree),
            "--resume",
            str(rd),
            "--set",
            "verbose=20",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert load_record(rd).status == "passed"


def _pids_running(needle: str, under: Path) -> list[int]:
    """Processes whose command line has ``needle`` and whose working directory is under ``under`` (this
    test's tree): a training run elsewhere on the machine is not this test's business."""
    root = Path(under).resolve()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle.encode() in (d / "cmdline").read_bytes():
                    cwd = Path(os.readlink(d / "cwd"))
                    if cwd == root or root in cwd.parents:
                        out.append(int(d.name))
            except OSError:
                pass
    return out


@pytest.mark.slow
def test_env_prefix_is_where_the_stages_run(cli, runfx, tmp_path):
    """--env-prefix puts the environment's bin/ first on the stages' PATH: `python` is its python."""
    prefix = tmp_path / "someenv"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    text = runfx.recipe.read_text().replace('python: {default: "${python_exe}"}', "python: {default: python}")
    runfx.recipe.write_text(text)
    r = run(cli, runfx, "--env-prefix", prefix)
    assert r.code == 0, r.err
    d = r.json()
    assert d["environment"]["prefix"] == str(prefix)
    assert d["environment"]["interpreter"]["path"] == str(prefix / "bin" / "python")
    assert d["stages"][1]["argv"][0] == "python"


@pytest.mark.slow
def test_interrupted_stage_continues_from_its_last_checkpoint(runfx):
    """SIGTERM after softmax saved a checkpoint, then --resume: softmax continues from that checkpoint as a
    resumed segment (new prefix, the lr in force, lr steps shifted), the merged log has the lr changes at
    the stage's own steps 20 and 25, and arcface starts from checkpoint 5, wherever its files are."""
    rd = runfx.run_dir()
    # verbose 20: checkpoint 5 is step 100, so the resumed segment still sees Speedometer print twice
    base = [sys.executable, "-m", "mfnpatch", "recipe", "run", str(runfx.recipe), "--no-env-check", "--tree",
            str(runfx.tree), "--set", "verbose=20"]  # fmt: skip
    proc = subprocess.Popen(
        [*base, "--run-dir", str(rd)], env={**os.environ, "FAKE_DELAY": "0.05"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = rd / "stages/softmax.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.is_file() and "Saved checkpoint" in log.read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.communicate(timeout=60) and proc.returncode == EXIT_INTERRUPTED
    saved = summarize_text(log.read_text()).checkpoints
    n = max(k for k, c in saved.items() if c.get("path"))
    assert 1 <= n < 5
    r = subprocess.run([*base, "--resume", str(rd)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"softmax: resumed from checkpoint {n} (step {20 * n}) as segment 1" in r.stderr
    rec = load_record(rd)
    sm = rec.stage("softmax")
    assert sm.status == "done" and sm.passed and len(sm.segments) == 1
    seg = sm.segments[0]
    models = rd / "models"
    assert seg.pretrained == f"{models}/model-y1-softmax,{n}" and seg.prefix == f"{models}/model-y1-softmax-r1"
    lr = 0.1 * 0.1 ** sum(1 for s in (20, 25) if s <= 20 * n)
    assert seg.lr == pytest.approx(lr) and seg.lr_steps == ([s - 20 * n for s in (20, 25) if s > 20 * n] or [NEVER])
    assert seg.start_step == 20 * n and seg.start_save == n and seg.log == "stages/softmax.r1.log"
    assert sm.argv[sm.argv.index("--prefix") + 1] == f"{models}/model-y1-softmax"  # segment 0's, as planned
    # merged: checkpoints 1..5 at steps 10..50, lr changes where an uninterrupted run has them
    cks = sm.metrics.checkpoints
    assert all(cks[str(k)].step == 20 * k for k in range(1, 6))
    assert sm.ended.startswith("stopped at checkpoint 5 (planned), by mfnpatch")
    from mfnpatch.runs.summaries import stage_summary

    merged = stage_summary(rd, sm)
    assert sorted(merged.lr_changes) == [20, 25]
    assert merged.lr_changes[20] == pytest.approx(0.01) and merged.lr_changes[25] == pytest.approx(0.001)
    assert {c.id for c in sm.checks if c.verdict == "pass"} >= {"lfw verified", "train_acc rises"}
    # no checkpoint of segment 0 was overwritten; arcface got checkpoint 5 from the segment that wrote it
    assert not (models / f"model-y1-softmax-{5:04d}.params").exists() or n == 5
    assert rec.stage("arcface").inputs["pretrained"] == f"{models}/model-y1-softmax-r1,{5 - n}"
    report = (rd / "report.md").read_text()
    assert "resumed from checkpoint" in report and "momentum restarts" in report


@pytest.mark.slow
def test_runner_killed_hard_takes_its_trainer_along_and_resume_continues(runfx):
    """kill -9 of the runner (OOM killer, a closed laptop lid): the trainer gets SIGTERM from the kernel
    (no orphan keeps writing checkpoints), and --resume continues the stage the record left 'running'."""
    rd = runfx.run_dir()
    base = [sys.executable, "-m", "mfnpatch", "recipe", "run", str(runfx.recipe), "--no-env-check", "--tree",
            str(runfx.tree), "--set", "verbose=20"]  # fmt: skip
    proc = subprocess.Popen([*base, "--run-dir", str(rd)], env={**os.environ, "FAKE_DELAY": "0.05"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = rd / "stages/softmax.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.is_file() and "Saved checkpoint" in log.read_text()):
        time.sleep(0.02)
    trainers = _pids_running("train_softmax.py", runfx.tree)
    assert trainers
    proc.kill()
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and set(trainers) & set(_pids_running("train_softmax.py", runfx.tree)):
        time.sleep(0.1)
    assert not set(trainers) & set(_pids_running("train_softmax.py", runfx.tree))
    assert load_record(rd).stage("softmax").status == "running"  # nothing could record the end
    r = subprocess.run([*base, "--resume", str(rd)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    sm = load_record(rd).stage("softmax")
    assert sm.status == "done" and len(sm.segments) == 1 and "resumed from checkpoint" in r.stderr


@pytest.mark.slow
def test_recipe_cancel_stops_a_local_run_started_elsewhere(runfx, cli):
    """`recipe cancel RUN` from another terminal: the runner gets SIGTERM, stops the trainer, records the
    stage as interrupted and exits 130; a second cancel has nothing to do (exit 2)."""
    rd = runfx.run_dir()
    argv = [sys.executable, "-m", "mfnpatch", "recipe", "run", str(runfx.recipe), "--no-env-check", "--tree",
            str(runfx.tree), "--set", "verbose=20", "--run-dir", str(rd)]  # fmt: skip
    proc = subprocess.Popen(argv, env={**os.environ, "FAKE_DELAY": "0.05"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    log = rd / "stages/softmax.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.is_file() and "Saved checkpoint" in log.read_text()):
        time.sleep(0.02)
    trainers = _pids_running("train_softmax.py", runfx.tree)
    assert trainers
    r = cli("recipe", "cancel", rd)
    assert r.code == 0 and f"sent SIGTERM to the runner (pid {proc.pid})" in r.out, r.out + r.err
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert not set(trainers) & set(_pids_running("train_softmax.py", runfx.tree))
    rec = load_record(rd)
    assert rec.status == "interrupted" and rec.stage("softmax").status == "interrupted"
    assert rec.stage("arcface").status == "pending" and not (rd / "stages/arcface.log").exists()
    assert f"--resume {rd}" in err  # how to continue
    assert cli("recipe", "cancel", rd).code == 2


def test_a_schema_1_record_still_reads(tmp_path):
    """A real record of a smoke run written before schema 2: its stages' ends are read once from their words."""
    import shutil

    from mfnpatch.runs.record import SCHEMA, parse_record

    src = Path(__file__).resolve().parents[1] / "data" / "records" / "may16-smoke-schema1.json"
    data = json.loads(src.read_text())
    assert data["schema"] == 1 and all("end" not in s for s in data["stages"])
    for variant in (data, {k: v for k, v in data.items() if k != "datasets"}):  # also from before datasets
        rec = parse_record(variant, src)
        assert rec.schema_ == SCHEMA == 2 and rec.status == "passed"
        ends = {s.name: s.end for s in rec.stages}
        assert ends == {"data": "exited", "softmax": "stopped", "arcface": "stopped", "finetune": "stopped",
                        "slim": "exited", "convert": "exited", "bench": "exited"}  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(src, run / "record.json")
    assert load_record(run).stage("softmax").stop.value == 2
    (run / "record.json").write_text(json.dumps({**data, "schema": 9}))
    with pytest.raises(RunError, match="record schema 9, which this mfnpatch does not read"):
        load_record(run)
