"""Verdicts on the shapes real-world training logs take (made here from the pinned code's line formats, never copies
of anyone's log): a stage started from another run's checkpoint, the seed's total batch on several GPUs, another
experiment that passes the floors, lines from modified scripts, a log whose head was cut, an excerpt pasted into
an issue thread."""

from __future__ import annotations

from samples import ALL3, make_log, rounds

from mfnpatch.logs.parser import summarize
from mfnpatch.verify.stagematch import detect_stage

GOOD_ARCFACE = {"lfw": [0.990, 0.993, 0.995], "cfp_fp": [0.90, 0.92, 0.93], "agedb_30": [0.94, 0.95, 0.957]}


def _arc(path, **kw):
    return make_log(path, "arcface", rounds(GOOD_ARCFACE, start=108000, every=4000), **kw)


def test_a_stage_started_from_another_runs_checkpoint_is_no_resume(tmp_path, cli):
    """--pretrained names the softmax run's model (…/model-y1-test/model,70), its own --prefix is another run's
    (…/model-y1-test2/model): the same file name, two runs. A new ArcFace stage, counted from step 0."""
    log = _arc(tmp_path / "a.log", pretrained="/data/output/model-y1-test/model,70", prefix="model-y1-test2/model")
    m = detect_stage(summarize(log))
    assert m.stage == "arcface" and m.resumed is None and m.offset == 0
    assert "a new stage started from another run's model" in m.start and "resuming means the same prefix" in m.start
    d = cli("verify", "--log", log, "--json").json()
    assert d["match"]["resumed"] is None and "another run's model" in d["match"]["start"]
    assert d["verdict"] == "pass", d["checks"]
    assert any(f.startswith("start: a new stage started") for f in d["findings"])
    assert d["experiment"]["same_as_seed"]  # the pretrained file's name is not a setting


def test_a_run_resuming_its_own_prefix_is_a_resume(tmp_path):
    log = _arc(tmp_path / "r.log", pretrained="/data/output/model-y1-arcface,30", prefix="model-y1-arcface")
    m = detect_stage(summarize(log))
    assert m.stage == "arcface" and m.resumed is not None and m.offset == 60000
    assert m.start.startswith("resumed: --pretrained /data/output/model-y1-arcface,30 is a checkpoint of its own")


def test_four_gpus_times_128_is_the_seeds_total_batch(tmp_path, cli):
    log = _arc(tmp_path / "g.log")
    log.write_text(
        log.read_text().replace("per_batch_size=512", "per_batch_size=128").replace("ctx_num=1", "ctx_num=4")
    )
    m = detect_stage(summarize(log))
    assert m.stage == "arcface" and not any("per_batch_size" in x or "total batch" in x for x in m.differences)
    assert "total batch 512 = the seed's, on 4 GPU(s) x 128" in m.notes
    d = cli("verify", "--log", log, "--json").json()
    assert d["experiment"] == {"same_as_seed": True, "differs": []}
    assert "total batch 512 = the seed's, on 4 GPU(s) x 128" in d["findings"]


def test_another_experiment_that_passes_the_floors_says_so(tmp_path, cli):
    """512-d embedding, wd 1e-7, total batch 280, fine-tuned to the seed's numbers: PASS, but not the seed's
    experiment, in the verdict line and in --json."""
    log = make_log(tmp_path / "f.log", "finetune", rounds({"lfw": [0.995, 0.9955], "cfp_fp": [0.93, 0.94],
                                                           "agedb_30": [0.958, 0.961]}))  # fmt: skip
    text = log.read_text().replace("emb_size=128", "emb_size=512").replace("wd=4e-05", "wd=1e-07")
    log.write_text(text.replace("per_batch_size=512", "per_batch_size=280").replace("batch_size=512", "batch_size=280"))
    d = cli("verify", "--log", log, "--json").json()
    assert d["stage"] == "finetune" and d["verdict"] == "pass"
    exp = d["experiment"]
    assert not exp["same_as_seed"]
    assert any(x.startswith("emb_size 512") for x in exp["differs"]) and any(x.startswith("wd 1e-07") for x in
                                                                             exp["differs"])  # fmt: skip
    assert any(x.startswith("total batch 280 (1 GPU(s) x 280)") for x in exp["differs"])
    r = cli("verify", "--log", log)
    assert r.code == 0 and "PASS" in r.out and "not the seed's experiment (wd, emb_size, total batch differ)" in r.out


def test_lines_of_modified_scripts_and_pasted_excerpts_are_read(tmp_path, cli):
    base = _arc(tmp_path / "x.log").read_text().splitlines()
    # a common local change: Accuracy-Highest(LFW); and an excerpt quoted in an issue thread, in a fence
    lines = base[:2] + ["```"] + [f"> {ln}" for ln in base[2:]] + ["```", "[112000]Accuracy-Highest(LFW): 0.99500"]
    lines.append("my own debug print 42 xyz")
    log = tmp_path / "pasted.log"
    log.write_text("\n".join(lines) + "\n")
    s = summarize(log)
    assert s.targets()["lfw"].best_accuracy == 0.995 and s.highest == (112000, 0.995)
    assert s.unknown_lines == 1 and s.unknown_sample == "my own debug print 42 xyz"
    d = cli("verify", "--log", log, "--json").json()
    assert d["stage"] == "arcface" and d["verdict"] == "pass"
    assert any("1 line(s) of the log were not recognised" in f and "my own debug print" in f for f in d["findings"])


def test_a_log_whose_head_was_cut_says_what_would_decide_its_stage(tmp_path, cli):
    cut = _arc(tmp_path / "cut.log").read_text().splitlines()[2:]  # no 'Called with argument' line
    log = tmp_path / "cut.log"
    log.write_text("\n".join(cut) + "\n")
    r = cli("verify", "--log", log)
    assert r.code == 1 and "no 'Called with argument' line" in r.err and "--stage" in r.err
    d = cli("verify", "--log", log, "--stage", "arcface", "--recipe", "may16", "--json").json()
    assert d["stage"] == "arcface" and {c["id"] for c in d["checks"]} >= {f"{t} verified" for t in ALL3} - {"x"}
