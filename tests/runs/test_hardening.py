"""Runs under misuse: a refused resume and a second runner write nothing (real processes)."""

from __future__ import annotations

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
