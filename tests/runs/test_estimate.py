"""recipe estimate: the measurement's arithmetic on events with known arrival times, and real probes of the fake
trainer through the CLI (a throwaway directory, the table, the saved estimate that recipe run shows as its ETA)."""

from __future__ import annotations

import json

import pytest

from mfnpatch.logs.events import Config, Speed, Verification
from mfnpatch.runs.estimate import Probe, measure, stage_seconds


def ev_speed(step: int, sps: float) -> Speed:
    return Speed(0, None, 0, step - 1, sps, {"acc": 0.1}, step)


def ev_ver(step: int, target: str = "lfw") -> Verification:
    return Verification(0, None, target, step, 0.9, 0.01, None, 1.0)


def test_measure_takes_the_clean_speedometer_lines_and_times_a_round():
    # batch 512 at 500 samples/s: 1.024 s a step. The run starts at t=0, its first step at t=30 (the start),
    # Speedometer lines every 20 steps; a verification round at step 50 takes 60 s (lines at 60 dip).
    step_s = 512 / 500
    events = [(0.5, Config(0, None, {"batch_size": 512}))]
    t = 30.0
    for step in (20, 40):
        events.append((t + step * step_s, ev_speed(step, 500.0 if step > 20 else 300.0)))
    t_round_start = 30 + 50 * step_s
    events += [(t_round_start + 50, ev_ver(50, "lfw")), (t_round_start + 60, ev_ver(50, "cfp_fp"))]
    for step in (60, 80, 100):
        events.append((30 + step * step_s + 60, ev_speed(step, 200.0 if step == 60 else 500.0)))
    p = measure(events, 0.0, 30 + 100 * step_s + 60, 100, "stopped")
    # the first line holds the start, the line at 60 holds the round: 40, 80 and 100 are clean -> median 500
    assert p.total_batch == 512 and p.samples_per_sec == 500.0 and "3 line(s)" in p.how
    assert p.verification_seconds == pytest.approx(60.0, abs=1e-6)
    assert p.startup_seconds == pytest.approx(30.0, abs=1e-6)
    # a stage of 2000 steps with 2 rounds: 30 + 2000 x 1.024 + 2 x 60
    assert stage_seconds(2000, 2, p) == pytest.approx(30 + 2000 * step_s + 120)


def test_measure_falls_back_to_the_wall_clock():
    # two Speedometer lines, the second after a round: no clean line; 20 steps of 0.5 s between them, a 10 s round
    events = [(0.0, Config(0, None, {"batch_size": 16})), (12.0, ev_speed(21, 30.0)), (22.5, ev_ver(21)),
              (32.5, ev_speed(41, 20.0))]  # fmt: skip
    p = measure(events, 0.0, 33.0, 42, "stopped")
    assert p.how == "wall clock between Speedometer lines" and p.verification_seconds == pytest.approx(10.5)
    # (32.5 - 12 - 10.5) s for 20 steps of 16 samples
    assert p.samples_per_sec == pytest.approx(20 * 16 / 10.0)
    assert stage_seconds(None, 0, p) is None
    assert stage_seconds(10, 0, Probe(10, None, None, "", None, None, 1.0, "")) is None


FIT = """fit:
  total_batch: 16
  gpus: gpus
  per_gpu_batch: per_batch_size
  steps: []
"""


@pytest.mark.slow
def test_estimate_probes_the_fake_trainer_and_run_shows_it(cli, runfx, monkeypatch):
    monkeypatch.setenv("FAKE_IMAGES", "2000")  # 125 batches an epoch: Speedometer lines every 20 steps
    monkeypatch.setenv("FAKE_DELAY", "0.005")
    r = cli("recipe", "estimate", runfx.recipe, "--tree", runfx.tree, "--probe-steps", "100", "--price", "3",
            "--json")  # fmt: skip
    assert r.code == 0, r.err
    d = r.json()
    assert [s["stage"] for s in d["stages"]] == ["softmax", "arcface"]
    for s in d["stages"]:
        c = s["cold"]
        # a probe never runs longer than its stage (then its time is the stage's); no warm probe for a short stage
        assert c["steps"] == s["steps"] and s["warm"] is None and "no warm probe" in s["note"]
        assert s["seconds"] == pytest.approx(c["wall_seconds"], abs=0.1)
    soft, arc = d["stages"]
    c = soft["cold"]
    assert c["total_batch"] == 16 and c["samples_per_sec"] > 0 and c["verification_seconds"] is not None
    assert soft["steps"] == 50 and soft["rounds"] == 5  # stopped at checkpoint 5 of --verbose 10
    assert arc["steps"] == 20 and d["seconds"] == pytest.approx(soft["seconds"] + arc["seconds"], abs=0.2)
    assert d["cost"] == pytest.approx(d["hours"] * 1 * 3, abs=0.01)
    # the whole plan takes seconds: estimating it costs more, and it says so
    assert d["probe_seconds"] > 0 and "run it instead" in d["note"]
    assert not list(runfx.root.glob("runs/*")), "the probes ran in a throwaway directory"
    text = cli("recipe", "estimate", runfx.recipe, "--tree", runfx.tree, "--probe-steps", "40", "--no-warm").out
    assert "softmax" in text and "total" in text and "recipe run shows it as its ETA" in text
    # recipe run of the same plan on this machine: the ETA from the start, in the record and the report
    rr = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--run-dir", runfx.run_dir(), "--no-env-check",
             "--json")  # fmt: skip
    assert rr.code == 0, rr.err
    est = rr.json()["recipe"]["estimate"]
    assert est["seconds"] > 0 and set(est["stages"]) == {"softmax", "arcface"}
    assert "estimate (recipe estimate of" in (runfx.run_dir() / "report.md").read_text()
    json.dumps(est)


def test_the_pytorch_lineages_stage_is_probed_and_counted_as_train_v2_runs(tmp_path):
    """mbf's train stage ends by itself: its steps are num_image // total batch x num_epoch (smoke: 336 // 16 x 2),
    its rounds every `verbose` override, and a probe gets its own output directory and a round halfway, as
    key=value overrides (train_v2.py takes no --prefix)."""
    from mfnpatch.recipes.expand import expand
    from mfnpatch.recipes.recipe import load_recipe
    from mfnpatch.runs.estimate import probe_argv
    from mfnpatch.runs.handover import total_steps, verbose_of

    smoke = next(s for s in expand(load_recipe("mbf"), "smoke").stages if s.name == "train")
    assert total_steps(smoke) == 42 and verbose_of(smoke.argv) == 21
    real = next(s for s in expand(load_recipe("mbf")).stages if s.name == "train")
    assert total_steps(real) == 5822653 // 1024 * 40 == 227440  # the published log's total_step
    assert verbose_of(real.argv) == 2000
    argv = probe_argv(smoke, tmp_path / "probe", 20)
    assert argv[-2:] == [f"output={tmp_path / 'probe'}", "verbose=10"]
    assert not [a for a in argv[:-2] if a.startswith(("output=", "verbose="))] and "--prefix" not in argv


@pytest.mark.slow
def test_a_probe_stops_at_its_time_budget(cli, runfx, monkeypatch):
    """A slow trainer (0.2 s a step): each probe stops at --budget and is measured on what it printed by then."""
    import time

    monkeypatch.setenv("FAKE_IMAGES", "2000")
    monkeypatch.setenv("FAKE_DELAY", "0.2")
    t = time.monotonic()
    r = cli("recipe", "estimate", runfx.recipe, "--tree", runfx.tree, "--probe-steps", "400", "--budget", "6",
            "--no-warm", "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert time.monotonic() - t < 60  # two stages of at most 6 s each, and their starts
    soft, arc = r.json()["stages"]  # 50 steps (10 s) and 20 steps (4 s) of 0.2 s
    assert "the probe's time budget (6 s)" in soft["cold"]["ended"] and soft["cold"]["samples_per_sec"]
    assert soft["seconds"] > 6  # estimated from its speed, not its (cut) wall time
    assert "(planned)" in arc["cold"]["ended"]
