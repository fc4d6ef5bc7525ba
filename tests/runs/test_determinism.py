"""Same inputs, same numbers: the run seed reaches the stages through the start-up hook, the record keeps
checkpoint hashes, and `mfnpatch compare` tells identical runs from different ones."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_fake as run

from mfnpatch.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from mfnpatch.recipes.expand import expand
from mfnpatch.recipes.recipe import RecipeError, load_recipe
from mfnpatch.runs.determinism import HOOK_DIR, seed_env


def _py(code: str, env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


DRAW = "import random, numpy; print(random.random(), numpy.random.rand(), hash('mfnpatch'))"


def test_the_hook_seeds_random_numpy_and_string_hashing():
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MFNPATCH_SEED", "PYTHONHASHSEED")}
    a = _py(DRAW, {**base, **seed_env(3, base)})
    assert a == _py(DRAW, {**base, **seed_env(3, base)})
    assert a != _py(DRAW, {**base, **seed_env(4, base)})
    # unseeded: the interpreter starts from the clock, as the pinned code alone does
    assert seed_env(None, base) == {}
    assert _py(DRAW, {"PYTHONHASHSEED": "random"}) != _py(DRAW, {"PYTHONHASHSEED": "random"})


@pytest.mark.slow
def test_the_hook_seeds_mxnet_when_it_is_imported():
    pytest.importorskip("mxnet")
    code = "import mxnet as mx; print(mx.nd.random.uniform(shape=(4,)).asnumpy().tolist())"
    env = seed_env(11, dict(os.environ))
    assert _py(code, env) == _py(code, env)
    assert _py(code, env) != _py(code, seed_env(12, dict(os.environ)))


def test_the_hook_keeps_the_sitecustomize_it_shadows_and_the_pythonpath(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['SHADOWED_RAN'] = '1'\n")
    (other / "mymod.py").write_text("X = 42\n")
    env = seed_env(5, {"PYTHONPATH": str(other)})
    assert env["PYTHONPATH"] == f"{HOOK_DIR}{os.pathsep}{other}"
    out = _py("import os, mymod; print(os.environ.get('SHADOWED_RAN'), mymod.X)", env)
    assert out == "1 42"


def test_the_seed_is_a_setting_of_every_plan():
    plan = expand(load_recipe("may16"), "smoke")
    assert plan.seed == 0 and plan.to_dict()["seed"] == 0
    assert expand(load_recipe("may16"), None, {"seed": "7"}).seed == 7
    assert expand(load_recipe("may16"), None, {"seed": "none"}).seed is None
    with pytest.raises(RecipeError, match="--set seed=x: not an integer"):
        expand(load_recipe("may16"), None, {"seed": "x"})
    # the commands are the seed's token for token: the seed travels in the environment, not in argv
    seeded, unseeded = (expand(load_recipe("may16"), "seed", {"seed": s}) for s in ("0", "none"))
    assert [s.tokens() for s in seeded.stages] == [s.tokens() for s in unseeded.stages]


def test_plan_shows_the_seed(cli):
    r = cli("recipe", "plan", "may16", "--set", "seed=9")
    assert r.code == 0 and "run seed 9: MFNPATCH_SEED=9" in r.out


# --------------------------------------------------------------------------------------------
# Runs on the fake trainer (it draws from Python's random, as the real code's shuffle does)


@pytest.fixture
def randomized(monkeypatch):
    monkeypatch.setenv("FAKE_RANDOM", "1")


def _run(cli, runfx, name: str, *extra: str):
    r = run(cli, runfx, "--run-dir", runfx.run_dir(name), "--set", "verbose=20", *extra)
    assert r.code == 0, r.err
    return runfx.run_dir(name), r.json()


STOPS = {"softmax": 100, "arcface": 40}  # the fake recipe's stop points (checkpoints 5 and 2, every 20 steps)


def _ver_lines(run_dir: Path, stage: str) -> list[str]:
    """Verification lines up to the stage's stop point (the fake trainer, fast, goes on until it is stopped)."""
    text = (run_dir / f"stages/{stage}.log").read_text()
    lines = [ln for ln in text.splitlines() if "Accuracy-Flip" in ln]
    return [ln for ln in lines if int(ln.split("][")[1].split("]")[0]) <= STOPS[stage]]


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_two_seeded_runs_are_identical_and_compare_says_so(cli, runfx, randomized, tmp_path):
    a, da = _run(cli, runfx, "a")
    b, db = _run(cli, runfx, "b")
    assert da["seed"] == 0 and da["determinism"]["deterministic"] is True
    for stage in ("softmax", "arcface"):
        assert _ver_lines(a, stage) == _ver_lines(b, stage) and _ver_lines(a, stage)
    planned = {"model-y1-softmax": 5, "model-y1-arcface": 2}  # checkpoints up to each stop point

    def hashes(d):
        out = {}
        for s in d["stages"]:
            for k, v in s["checkpoints"].items():
                name = Path(k).name
                prefix, _, rest = name.rpartition("-")
                if rest == "symbol.json" or int(rest.split(".")[0]) <= planned[prefix]:
                    out[name] = v
        return out

    ha, hb = hashes(da), hashes(db)
    assert ha == hb and len(ha) == 5 + 2 + 2  # params 1..5 and 1..2, two symbols
    png = tmp_path / "cmp.png"
    r = cli("compare", a, b, "--plot", png, "--json")
    d = r.json()
    assert r.code == EXIT_OK and d["identical"] and d["first_difference"] is None, d["first_difference"]
    assert {x["what"] for x in d["rows"]} >= {"provenance", "verification", "checkpoint", "context"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (a / "report.md").read_text()
    assert "determinism: **deterministic**, seed 0" in report and "Checkpoints (sha256)" in report
    # a run directory copied elsewhere is still the same run: its files are read where it is now
    import shutil

    moved = tmp_path / "elsewhere" / a.name
    shutil.copytree(a, moved)
    r = cli("compare", moved, b, "--no-plot", "--json")
    d = r.json()
    assert r.code == EXIT_OK and d["identical"], d["first_difference"]
    assert f"A: recorded at {a}; its files are read where the run is now, {moved}" in d["notes"]
    # a flipped byte in one of B's checkpoints: different, and named
    params = sorted(p for p in (b / "models").glob("model-y1-arcface-0002.params"))
    assert params
    data = bytearray(params[0].read_bytes())
    data[0] ^= 0x01
    params[0].write_bytes(bytes(data))
    r = cli("compare", a, b, "--no-plot")
    assert r.code == EXIT_FAILURE
    # the file changed on disk comes first (its bytes are not the record's), then the checkpoint row itself
    assert "the first: arcface: <run>/models/model-y1-arcface-0002.params: B: changed since recorded" in r.err
    assert "2 difference(s)" in r.err
    assert "on disk" in r.out and "B: changed" in r.out  # the row that says it (the table wraps its cells)


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_unseeded_runs_differ_and_compare_names_the_first_difference(cli, runfx, randomized):
    a, da = _run(cli, runfx, "a", "--set", "seed=none")
    b, _ = _run(cli, runfx, "b", "--set", "seed=none")
    assert da["seed"] is None and da["determinism"]["deterministic"] is False
    assert _ver_lines(a, "softmax") != _ver_lines(b, "softmax")
    r = cli("compare", a, b, "--no-plot", "--json")
    d = r.json()
    # the first verification value that differs (each value draws one of 100 noise levels: two runs can agree
    # on a single value by chance, not on all of them)
    assert r.code == EXIT_FAILURE and re.match(r"softmax: (lfw|cfp_fp|agedb_30) at step \d+: ", d["first_difference"])
    assert sum(not x["same"] for x in d["rows"] if x["what"] == "verification") >= 5
    # within a tolerance as wide as the fake trainer's noise, the values agree; the checkpoints still differ
    d = cli("compare", a, b, "--no-plot", "--tolerance", "0.002", "--json").json()
    assert all(r["same"] for r in d["rows"] if r["what"] == "verification")
    assert d["first_difference"].startswith("softmax: checkpoint ")
    assert "**not deterministic**" in (a / "report.md").read_text()


@pytest.mark.slow
def test_another_seed_gives_other_numbers_and_the_provenance_says_why(cli, runfx, randomized):
    a, _ = _run(cli, runfx, "a")
    b, _ = _run(cli, runfx, "b", "--set", "seed=1")
    d = cli("compare", a, b, "--no-plot", "--json").json()
    seed_row = next(r for r in d["rows"] if r["key"] == "seed")
    assert (seed_row["a"], seed_row["b"], seed_row["same"]) == (0, 1, False)
    assert d["first_difference"] == "provenance seed: 0 in A, 1 in B"


@pytest.mark.slow
def test_compare_a_run_with_a_bare_log(cli, runfx, randomized, tmp_path):
    a, _ = _run(cli, runfx, "a")
    log = tmp_path / "my-softmax.log"
    log.write_bytes((a / "stages/softmax.log").read_bytes())
    r = cli("compare", log, a, "--stage", "softmax", "--no-plot", "--json")
    assert r.code == EXIT_OK, r.out
    assert any("no provenance" in n for n in r.json()["notes"])
    edited = tmp_path / "edited.log"
    edited.write_text(log.read_text().replace("[lfw][40]Accuracy-Flip: ", "[lfw][40]Accuracy-Flip: 0.1", 1))
    r = cli("compare", edited, a, "--stage", "softmax", "--no-plot")
    assert r.code == EXIT_FAILURE and "softmax: lfw at step 40:" in r.err


def test_compare_refuses_what_it_cannot_compare(cli, tmp_path):
    d = tmp_path / "notarun"
    d.mkdir()
    r = cli("compare", d, d)
    assert r.code == EXIT_FAILURE and "not a run directory" in r.err
    r = cli("compare", tmp_path / "missing", d)
    assert r.code == EXIT_FAILURE and "no such run directory or log file" in r.err
    log = tmp_path / "x.log"
    log.write_text("[lfw][2000]Accuracy-Flip: 0.99+-0.01\n")
    r = cli("compare", log, log, "--tolerance", "-1")
    assert r.code == EXIT_USAGE and "--tolerance -1.0: must be a finite number >= 0" in r.err
    assert json.loads(cli("compare", log, log, "--no-plot", "--json").out)["identical"] is True


def test_compare_runs_of_different_total_batch_at_equal_samples_seen(cli, tmp_path):
    """A at total batch 1024 and B at 512 (half the GPUs): B's step 4000 has seen what A's step 2000 has, so that is
    the row they share; the note says so."""

    def log(name: str, batch: int, per: int, steps: dict[int, float]) -> Path:
        p = tmp_path / name
        lines = [f"Called with argument: Namespace(batch_size={batch}, ctx_num={batch // per}, loss_type=4, "
                 f"network='y1', per_batch_size={per})"]  # fmt: skip
        lines += [f"[lfw][{s}]Accuracy-Flip: {a:1.5f}+-0.01000" for s, a in steps.items()]
        p.write_text("\n".join(lines) + "\n")
        return p

    a = log("a.log", 1024, 512, {2000: 0.99, 4000: 0.995})
    b = log("b.log", 512, 512, {4000: 0.99, 8000: 0.995})
    d = cli("compare", a, b, "--stage", "arcface", "--no-plot", "--json").json()
    assert d["identical"] is True
    rows = [r for r in d["rows"] if r["what"] == "verification"]
    assert [(r["key"], r["a"], r["b"]) for r in rows] == [("lfw at step 2000", 0.99, 0.99),
                                                            ("lfw at step 4000", 0.995, 0.995)]  # fmt: skip
    assert any("total batch 1024 in A, 512 in B: verifications compared at equal samples seen" in n
               for n in d["notes"])  # fmt: skip
