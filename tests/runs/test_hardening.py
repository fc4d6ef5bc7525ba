"""Runs under misuse: a refused resume and a second runner write nothing (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import run_fake

from mfnpatch.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE


@pytest.mark.slow
def test_a_refused_resume_writes_nothing(cli, runfx, tmp_path):
    assert run_fake(cli, runfx).code == 0
    rd = runfx.run_dir()
    before = {p: p.read_bytes() for p in rd.rglob("*") if p.is_file()}
    r = cli(
        "recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--resume", rd, "--set", "verbose=30"
    )
    assert r.code == EXIT_FAILURE and "with a different provenance" in r.err and "nothing changed" in r.err
    other = tmp_path / "other.yaml"
    other.write_text(runfx.recipe.read_text().replace("name: fake", "name: other"))
    r = cli("recipe", "run", other, "--no-env-check", "--tree", runfx.tree, "--resume", rd)
    assert r.code == EXIT_FAILURE and "is a run of recipe fake, not other" in r.err
    assert {p: p.read_bytes() for p in rd.rglob("*") if p.is_file()} == before
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--resume", rd, "--run-dir", tmp_path / "x")
    assert r.code == EXIT_USAGE and "--resume continues a run in its own directory" in r.err


@pytest.mark.slow
def test_a_second_runner_on_a_running_run_is_refused_and_writes_nothing(cli, runfx):
    """Two real processes: while one runner runs a run, `--resume` of it (or the same --run-dir) is refused at
    once, naming the runner's pid, and the running run's files are left to it."""
    rd = runfx.run_dir()
    argv = [sys.executable, "-m", "mfnpatch", "recipe", "run", str(runfx.recipe), "--no-env-check", "--tree",
            str(runfx.tree), "--set", "verbose=20", "--run-dir", str(rd)]  # fmt: skip
    first = subprocess.Popen(argv, env={**os.environ, "FAKE_DELAY": "0.05"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        log = rd / "stages/softmax.log"
        deadline = time.time() + 60
        while time.time() < deadline and not (log.is_file() and "Saved checkpoint" in log.read_text()):
            time.sleep(0.02)
        assert first.poll() is None, "the first runner ended before the test could race it"
        for extra in (("--resume", rd), ("--run-dir", rd)):
            r = cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, *extra)
            assert r.code == EXIT_FAILURE, r.err
            assert f"is being run by pid {first.pid} on this machine; nothing changed" in r.err, r.err
            assert "recipe status" in r.err and "internal error" not in r.err
        assert first.poll() is None  # the refusals did not disturb the running run
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == EXIT_INTERRUPTED
    r = cli("recipe", "run", runfx.recipe, "--no-env-check", "--tree", runfx.tree, "--set", "verbose=20",
            "--resume", rd)  # fmt: skip
    assert r.code == EXIT_OK, r.err  # the lock went with the first runner


def test_a_stage_cwd_that_is_a_link_planted_in_the_tree_is_refused(cli, runfx, tmp_path):
    text = runfx.recipe.read_text().replace("    kind: tool\n    cwd: src\n", "    kind: tool\n    cwd: deploy\n", 1)
    runfx.recipe.write_text(text)
    assert cli("apply", "-c", runfx.sha[:7], "--series", "fake", "--dest", runfx.tree, "--full").code == EXIT_OK
    outside = tmp_path / "outside"
    outside.mkdir()
    import shutil

    shutil.rmtree(runfx.tree / "deploy")
    (runfx.tree / "deploy").symlink_to(outside)
    r = run_fake(cli, runfx, "--only", "data")
    assert r.code == EXIT_FAILURE and "stage data's cwd" in r.err and "outside" in r.err
    assert not any(outside.iterdir())  # nothing ran there


@pytest.mark.slow
def test_a_copy_to_outside_the_tree_and_the_run_is_refused(cli, runfx, tmp_path):
    outside = tmp_path / "outside"
    r = run_fake(cli, runfx, "--set", f"models_dir={outside}")
    assert r.code == EXIT_FAILURE
    slim = next(s for s in r.json()["stages"] if s["name"] == "slim")
    assert "outside the tree and the run directory: refused" in slim["ended"], slim["ended"]
    assert not (outside / "deploy").exists()


@pytest.fixture
def two_runs(cli, runfx, monkeypatch):
    monkeypatch.setenv("FAKE_RANDOM", "1")  # seeded: the two runs write the same bytes
    for name in ("a", "b"):
        assert run_fake(cli, runfx, "--set", "verbose=20", name=name).code == 0
    return runfx.run_dir("a"), runfx.run_dir("b")


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_compare_cannot_be_fooled_by_a_file_changed_after_the_run(cli, two_runs):
    import json

    a, b = two_runs
    r = cli("compare", a, b, "--no-plot", "--json")
    assert r.code == EXIT_OK, r.json()["first_difference"]
    assert any(x["what"] == "model" and x["same"] for x in r.json()["rows"])
    slimmed = b / "models" / "deploy" / "model-y1-arcface-0000.params"  # written by the slim stage, not a checkpoint
    _flip(slimmed)
    r = cli("compare", a, b, "--no-plot", "--json")
    d = r.json()
    assert r.code == EXIT_FAILURE and not d["identical"]
    assert "model-y1-arcface-0000.params: B: changed since recorded" in d["first_difference"]
    s = cli("recipe", "status", b)
    assert "model-y1-arcface-0000.params (changed since recorded)" in s.out
    _flip(slimmed)  # restored: identical again
    assert cli("compare", a, b, "--no-plot").code == EXIT_OK
    # a hand-edited record cannot make compare read any file of the user's
    rec = json.loads((b / "record.json").read_text())
    secret = b.parent.parent / "secret"
    secret.write_text("private\n")
    rec["stages"][1]["checkpoints"][str(secret)] = "0" * 64
    (b / "record.json").write_text(json.dumps(rec))
    r = cli("compare", a, b, "--no-plot", "--json")
    d = r.json()
    assert r.code == EXIT_FAILURE and "outside the run and its tree: not read" in d["first_difference"]
    import hashlib

    assert hashlib.sha256(b"private\n").hexdigest() not in r.out


@pytest.mark.slow
def test_a_checkpoint_changed_since_recorded_is_not_used_by_a_resume(cli, runfx):
    assert run_fake(cli, runfx, "--only", "softmax").code == 0
    rd = runfx.run_dir()
    _flip(rd / "models" / "model-y1-softmax-0005.params")  # what arcface would start from
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--resume", rd, "--no-env-check", "--from", "arcface")
    assert r.code == EXIT_FAILURE and "checkpoint files of stage softmax changed since the run recorded them" in r.err
    assert "model-y1-softmax-0005.params: sha256" in r.err and "--force" in r.err


# --------------------------------------------------------------------------------------------
# A record's pid is only a number: no signal to a stranger, no "running" for a runner that is gone


LOCKER = """
import fcntl, sys, time
f = open(sys.argv[1], "w")
if sys.argv[2] == "lock":
    fcntl.flock(f, fcntl.LOCK_EX)
print("ready", flush=True)
time.sleep(120)
"""


def _stranger(*argv: str) -> subprocess.Popen:
    """A live process of this user's whose command line says what it is given (to pass for a runner)."""
    p = subprocess.Popen([sys.executable, "-c", LOCKER, *argv], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_only_the_runs_own_runner_is_taken_for_its_runner(tmp_path):
    from mfnpatch.runs.liveness import identify, run_lock_path, start_ticks

    rd = tmp_path / "run"
    rd.mkdir()
    lock = run_lock_path(rd)
    sleeper = subprocess.Popen(["sleep", "120"])
    unlocked = _stranger(str(lock), "no", "mfnpatch", "recipe", "run")
    holder = _stranger(str(lock), "lock", "mfnpatch", "recipe", "run")
    try:
        for pid in (0, 1, -5, None, True, os.getpid()):
            assert not identify(rd, pid).alive
        seen = identify(rd, sleeper.pid)
        assert not seen.alive and "is now 'sleep 120'" in seen.why
        seen = identify(rd, unlocked.pid, start_ticks(unlocked.pid))
        assert not seen.alive and "does not hold the run's lock" in seen.why
        seen = identify(rd, holder.pid, (start_ticks(holder.pid) or 0) - 1)  # the runner that started then is gone
        assert not seen.alive and "is now another process, started later" in seen.why
        seen = identify(rd, holder.pid, start_ticks(holder.pid), "another-boot")
        assert not seen.alive and "rebooted" in seen.why
        assert identify(rd, holder.pid, start_ticks(holder.pid)).alive  # every count checked: this is the runner
        holder.kill()
        holder.wait()
        seen = identify(rd, holder.pid, None)
        assert not seen.alive and seen.why == f"runner pid {holder.pid} gone"
    finally:
        for p in (sleeper, unlocked, holder):
            p.kill()
            p.wait()


def _running_record(rd, pid: int, started: int | None) -> None:
    """A finished run's record edited to say its runner (``pid``) is still running its first stage."""
    rec = json.loads((rd / "record.json").read_text())
    rec["status"], rec["finished"] = "running", None
    rec["executor"].update(pid=pid, pid_started=started)
    rec["stages"][0]["status"] = "running"
    (rd / "record.json").write_text(json.dumps(rec))


@pytest.mark.slow
def test_cancel_never_signals_a_process_that_is_not_the_runs_runner(cli, runfx):
    from mfnpatch.runs.liveness import run_lock_path, start_ticks

    assert run_fake(cli, runfx).code == 0
    rd = runfx.run_dir()
    stranger = _stranger(str(run_lock_path(rd)) + ".other", "lock", "mfnpatch", "recipe", "run")
    try:
        for pid, started in ((stranger.pid, start_ticks(stranger.pid)), (stranger.pid, None), (1, None), (0, None)):
            _running_record(rd, pid, started)
            r = cli("recipe", "cancel", rd)
            assert r.code == 2 and "nothing signalled" in r.out and "sent SIGTERM" not in r.out, r.out
            assert stranger.poll() is None  # alive, never signalled
            s = cli("recipe", "status", rd)
            assert s.code == EXIT_INTERRUPTED and f"interrupted (runner pid {pid} gone" in s.out, s.out
            assert "--resume" in s.err
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.slow
def test_status_of_a_runner_killed_outright_says_interrupted_and_follow_ends(runfx, cli):
    rd = runfx.run_dir()
    argv = [sys.executable, "-m", "mfnpatch", "recipe", "run", str(runfx.recipe), "--no-env-check", "--tree",
            str(runfx.tree), "--set", "verbose=20", "--run-dir", str(rd)]  # fmt: skip
    proc = subprocess.Popen(argv, env={**os.environ, "FAKE_DELAY": "0.05"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    log = rd / "stages/softmax.log"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.is_file() and "Saved checkpoint" in log.read_text()):
        time.sleep(0.02)
    s = cli("recipe", "status", rd)
    assert s.code == EXIT_OK and ": running" in s.out  # the live runner is seen as this run's runner
    proc.kill()
    proc.wait()
    s = cli("recipe", "status", rd)
    assert s.code == EXIT_INTERRUPTED and f"interrupted (runner pid {proc.pid} gone)" in s.out, s.out
    assert "softmax    interrupted" in s.out
    follow = subprocess.run([sys.executable, "-m", "mfnpatch", "recipe", "status", str(rd), "--follow",
                             "--interval", "0.2"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert follow.returncode == EXIT_INTERRUPTED and f"runner pid {proc.pid} gone" in follow.stdout
    d = cli("recipe", "status", rd, "--json").json()
    assert d["status"] == "running" and d["seen_status"].startswith("interrupted") and d["runner"]["alive"] is False
    c = cli("recipe", "cancel", rd)
    assert c.code == 2 and "nothing signalled" in c.out
