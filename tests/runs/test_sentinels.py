"""Sentinels in a real run of the fake trainer: each stops the stage within its first minutes, cleanly (its last
checkpoint kept), says which and why in the record, the report and the output, and the run exits 1;
--no-sentinels and a recipe's `off` run on."""

from __future__ import annotations

import json

import pytest
from helpers import run_fake

pytestmark = pytest.mark.slow  # real runs of the fake recipe


def _chance_on(runfx) -> None:
    """The fake recipe turns the chance sentinel off (its trainer starts near chance): this run's recipe does not."""
    text = runfx.recipe.read_text().replace("sentinels: {chance: off}\n", "")
    runfx.recipe.write_text(text)


def _stage(r, name="softmax") -> dict:
    return {s["name"]: s for s in r.json()["stages"]}[name]


def test_chance_stops_the_stage_and_says_why(cli, runfx, monkeypatch, tmp_path):
    _chance_on(runfx)
    monkeypatch.setenv("FAKE_CAP", "0.5")  # verification at 0.5 on every target, as a run that learns nothing
    hold = tmp_path / "hold"  # the trainer waits after round 2's checkpoint: only the sentinel ends it, however
    hold.touch()  # late a loaded machine hands the runner its lines
    monkeypatch.setenv("FAKE_HOLD", str(hold))
    monkeypatch.setenv("FAKE_HOLD_FROM", "2")
    r = run_fake(cli, runfx)
    assert r.code == 1, r.err
    s = _stage(r)
    assert s["status"] == "failed" and s["end"] == "sentinel"
    trip = s["sentinel"]
    assert trip["sentinel"] == "chance" and trip["step"] == 20 and "round 2" in trip["why"]
    assert "data check" in trip["hint"] and "py3" in trip["hint"]
    assert s["ended"].startswith("stopped by mfnpatch: the chance sentinel fired")
    assert set(s["sentinels"]) == {"chance", "train_acc", "nonfinite", "lr", "stall"}
    assert _stage(r, "arcface")["status"] == "pending" and r.json()["status"] == "failed"
    rd = runfx.run_dir()
    # stopped cleanly: the checkpoints it saved are whole, the last one kept
    saved = sorted(rd.glob("models/model-y1-softmax-*.params"))
    assert saved and json.loads((rd / "models/model-y1-softmax-symbol.json").read_text())["nodes"]
    assert (rd / "stages/softmax.log").read_text().count("Accuracy-Flip") == 2 * 3  # two rounds of 3 targets
    report = (rd / "report.md").read_text()
    assert "**Stopped by the `chance` sentinel** at step 20" in report and "Likeliest causes" in report
    text = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--run-dir", runfx.run_dir("txt"), "--no-env-check")
    assert text.code == 1 and "likeliest causes" in text.out + text.err


def test_no_sentinels_and_a_recipes_off_run_on(cli, runfx, monkeypatch):
    _chance_on(runfx)
    monkeypatch.setenv("FAKE_CAP", "0.5")
    r = run_fake(cli, runfx, "--no-sentinels", name="off")
    s = _stage(r)
    assert s["end"] == "stopped" and s["sentinel"] is None and s["sentinels"] == {}
    assert "Sentinels watched: none" in (runfx.run_dir("off") / "report.md").read_text()
    runfx.recipe.write_text(runfx.recipe.read_text().replace("environment: cpu\n", "environment: cpu\nsentinels: "
                                                             "{chance: off}\n", 1))  # fmt: skip
    s = _stage(run_fake(cli, runfx, name="recipe-off"))
    assert s["end"] == "stopped" and "chance" not in s["sentinels"] and "stall" in s["sentinels"]


@pytest.mark.parametrize(
    "env,sentinel,why",
    [
        ({"FAKE_NAN_AT": "30"}, "nonfinite", "training acc is nan"),
        ({"FAKE_LR_FACTOR": "10"}, "lr", "the plan schedules 0.001"),
        ({"FAKE_SLOW_AT": "300", "FAKE_IMAGES": "2000"}, "stall", "in a row"),
    ],
)
def test_each_sentinel_stops_a_run(cli, runfx, monkeypatch, env, sentinel, why):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # long enough for an lr-batch-epoch line (every 1000 steps) and for a baseline of Speedometer lines
    r = run_fake(cli, runfx, "--set", "verbose=250")
    assert r.code == 1, r.err
    s = _stage(r)
    assert s["end"] == "sentinel" and s["sentinel"]["sentinel"] == sentinel and why in s["sentinel"]["why"]
    assert s["status"] == "failed" and s["checks"] == []
