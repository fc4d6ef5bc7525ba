"""recipe run checks every training stage's data before the first stage starts (or right after the stage that
makes it), keeps its fingerprint in the record, shows it in compare, and refuses --resume on changed data."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import face_jpeg, write_dataset

from mfnpatch.runs.record import load_record

DATA = '    data: {dir: "${data_dir}", variant: "${data_variant}"}\n'


def with_data(rf, made_here: bool = True, variant: str = "synthetic"):
    """The fake recipe whose training stages declare their data; its data stage writes a real (synthetic)
    dataset, or is left out (``made_here=False``: data_dir is given)."""
    text = rf.recipe.read_text()
    start = text.index("  data:\n    title: a dataset directory")
    end = text.index("  softmax:\n")
    synth = (
        "  data:\n    title: a synthetic dataset\n    kind: tool\n    cwd: src\n"
        '    command: ["${python}", -m, mfnpatch, data, synth, -o, "${data_dir}", --ids, "3", --per-id, "2", '
        '--pairs, "20"]\n'
        '    outputs: {data: "${data_dir}"}\n'
    )
    text = text[:start] + (synth if made_here else "") + text[end:]
    for out in ('    outputs: {checkpoint: "${models_dir}/model-y1-softmax"}\n',
                '    outputs: {checkpoint: "${models_dir}/model-y1-arcface"}\n'):  # fmt: skip
        text = text.replace(out, out + DATA)
    text = text.replace("  verbose: {default: 10, type: int}\n",
                        f"  verbose: {{default: 10, type: int}}\n  data_variant: {{default: {variant}}}\n")  # fmt: skip
    rf.recipe.write_text(text)


def run(cli, rf, *extra, name="run"):
    return cli("recipe", "run", rf.recipe, "--tree", rf.tree, "--run-dir", rf.run_dir(name), "--no-env-check", *extra)


def test_a_broken_data_dir_is_refused_before_anything_starts(cli, runfx, tmp_path):
    with_data(runfx, made_here=False)
    bad = write_dataset(tmp_path / "faces")
    data = bytearray((bad / "train.rec").read_bytes())
    (bad / "train.rec").write_bytes(bytes(data[:-500]))  # truncated
    r = run(cli, runfx, "--set", f"data_dir={bad}", "--set", "data_variant=any")
    assert r.code == 1 and "Traceback" not in r.err
    assert "the data of stages softmax, arcface failed its check" in r.err and "train.rec is truncated" in r.err
    assert "hint:" in r.err and "nothing was started" in r.err
    assert not runfx.run_dir().exists()  # no record, no stages
    assert not runfx.tree.exists()  # not even the tree was fetched


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_another_variant_than_the_recipe_expects_is_refused_with_the_way_on(cli, runfx, tmp_path):
    with_data(runfx, made_here=False, variant="ms1m-ibug")
    d = write_dataset(tmp_path / "faces")
    r = run(cli, runfx, "--set", f"data_dir={d}")
    assert r.code == 1
    assert "not MS1M-IBUG (faces_ms1m_112x112, 85164 identities)" in r.err and "--set data_variant=any" in r.err
    assert not runfx.run_dir().exists()
    r = run(cli, runfx, "--set", f"data_dir={d}", "--set", "data_variant=any", "--json", "--only", "softmax")
    assert r.code == 0, r.err
    ds = r.json()["datasets"]
    assert len(ds) == 1 and ds[0]["check"] == "passed" and ds[0]["stages"] == ["softmax", "arcface"]
    assert ds[0]["fingerprint"]["images"] == 9 and ds[0]["expected_variant"] == "any"


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_data_a_stage_makes_is_checked_once_made_and_fingerprinted(cli, runfx):
    with_data(runfx)
    r = run(cli, runfx, "--json", "--only", "data")
    assert r.code == 0, r.err
    rec = load_record(runfx.run_dir())
    (ds,) = rec.datasets
    assert ds.check == "passed" and ds.made_by == "data" and ds.variant == "mfnpatch synthetic"
    fp = ds.fingerprint
    assert fp.identities == 3 and fp.images == 6 and set(fp.files) >= {"property", "train.idx", "train.rec", "lfw.bin"}
    assert fp.files["train.rec"].how == "fast-1" and fp.files["train.idx"].sha256
    data_checks = [c for c in rec.stage("data").checks if c.id == "data check"]
    assert data_checks and data_checks[0].verdict == "pass"
    report = (runfx.run_dir() / "report.md").read_text()
    assert "- data of softmax, arcface:" in report and "passed" in report


def test_data_a_stage_made_badly_fails_that_stage(cli, runfx, tmp_path):
    with_data(runfx)
    text = runfx.recipe.read_text()
    # the fake recipe's original data stage: a directory with only a property file
    text = text.replace(
        '["${python}", -m, mfnpatch, data, synth, -o, "${data_dir}", --ids, "3", --per-id, "2", --pairs, "20"]',
        '["${python}", -c, "import os, sys; os.makedirs(sys.argv[1]); open(os.path.join(sys.argv[1], \'property\'), '
        "'w').write('3,112,112')\", \"${data_dir}\"]",
    )
    runfx.recipe.write_text(text)
    r = run(cli, runfx, "--json")
    assert r.code == 1
    rec = load_record(runfx.run_dir())
    assert rec.stage("data").passed is False and rec.stage("softmax").status == "pending"
    check = next(c for c in rec.stage("data").checks if c.id == "data check")
    assert check.verdict == "fail" and "train.rec" in check.message and "missing" in check.message
    assert rec.datasets[0].check == "failed"


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_no_data_check_is_recorded(cli, runfx, tmp_path):
    with_data(runfx, made_here=False)
    r = run(cli, runfx, "--set", f"data_dir={tmp_path / 'nowhere'}", "--no-data-check", "--json", "--only", "softmax")
    assert r.code == 0, r.err
    (ds,) = load_record(runfx.run_dir()).datasets
    assert ds.check == "skipped" and ds.summary == "--no-data-check" and ds.fingerprint is None
    assert "**not checked** (--no-data-check)" in (runfx.run_dir() / "report.md").read_text()


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_compare_shows_a_dataset_difference_first(cli, runfx, tmp_path):
    with_data(runfx, made_here=False)
    d1 = write_dataset(tmp_path / "a")
    d2 = tmp_path / "b"
    shutil.copytree(d1, d2)
    sets = ["--only", "softmax", "--set", "data_variant=any"]
    assert run(cli, runfx, "--set", f"data_dir={d1}", *sets, name="one").code == 0
    assert run(cli, runfx, "--set", f"data_dir={d2}", *sets, name="two").code == 0
    c = cli("compare", runfx.run_dir("one"), runfx.run_dir("two"), "--no-plot", "--json").json()
    rows = [r for r in c["rows"] if r["what"] == "dataset"]
    assert rows and rows[0]["same"] and c["rows"][0]["what"] == "dataset"
    write_dataset(d2, labels={2: 1})  # another labelling of the same images
    assert run(cli, runfx, "--set", f"data_dir={d2}", *sets, "--no-data-check", name="three").code == 0
    r = cli("compare", runfx.run_dir("one"), runfx.run_dir("three"), "--no-plot", "--json")
    got = r.json()
    assert r.code == 1 and got["first_difference"].startswith("the data of softmax, arcface: not checked in B")


@pytest.mark.slow  # over 5 s: real runs of the fake recipe
def test_resume_on_changed_data_is_refused_naming_what_changed(cli, runfx, tmp_path):
    with_data(runfx, made_here=False)
    d = write_dataset(tmp_path / "faces")
    sets = ["--set", f"data_dir={d}", "--set", "data_variant=any"]
    r = run(cli, runfx, *sets, "--only", "softmax")
    assert r.code == 0, r.err
    before = (runfx.run_dir() / "record.json").read_bytes()
    write_dataset(d, image={5: face_jpeg(55)})  # another face in place of one
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--resume", runfx.run_dir(), "--no-env-check",
            *sets)  # fmt: skip
    assert r.code == 1
    assert "the training data changed since this run started; refusing to resume" in r.err
    assert "train.idx sha256" in r.err and "train.rec" in r.err and "lfw.bin" not in r.err
    assert (runfx.run_dir() / "record.json").read_bytes() == before  # a refused resume writes nothing
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--resume", runfx.run_dir(), "--no-env-check",
            "--force", "--json", *sets)  # fmt: skip
    assert r.code == 0, r.err

    def digest(record: dict) -> str:
        return record["datasets"][0]["fingerprint"]["files"]["train.rec"]["digest"]

    assert digest(json.loads(r.out)) != digest(json.loads(before))
