"""Stage-aware verdicts: which stage a log ran, the seed's one-sided targets, resumed runs, and the dated
recipes against the runs they describe."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import REFERENCE
from samples import ALL3, make_log, rounds

from mfnpatch.errors import EXIT_FAILURE, EXIT_OK
from mfnpatch.logs.parser import summarize
from mfnpatch.recipes.expand import expand
from mfnpatch.recipes.recipe import load_recipe
from mfnpatch.verify.stagematch import detect_stage
from mfnpatch.verify.verify import verify

SEED_POST = REFERENCE.parent / "seed" / "000_73caa59ccc6a3554.txt"
ARCFACE = REFERENCE / "blog-arcface_loss_test2.log"
SOFTMAX = REFERENCE / "blog-softmax_loss_test2.log"
needs_reference = pytest.mark.skipif(
    not ARCFACE.is_file(), reason=f"the blog's complete logs are not at {REFERENCE} (tests-only data)"
)
SEED = "seed-2018-05-09-arcface-test2"


def checks(v) -> dict[str, str]:
    return {c.id: c.verdict for c in v.checks}


# --------------------------------------------------------------------------------------------
# The rules


def test_at_least_is_a_floor_and_doing_better_passes(tmp_path):
    """softmax: "lfw上99+" (at least 0.99): 0.99033 passes, 0.98900 fails; better is never a failure."""
    good = make_log(tmp_path / "good.log", "softmax", rounds({"lfw": [0.98, 0.99033], "cfp_fp": [0.8, 0.85],
                                                              "agedb_30": [0.85, 0.88]}))  # fmt: skip
    v = verify(good, None)
    assert v.stage == "softmax" and v.verdict == "pass"
    c = next(c for c in v.checks if c.id == "lfw best")
    assert (c.actual, c.step, c.target) == (0.99033, 4000, "lfw")
    assert "at least 0.99" in c.rule and "a floor; better passes" in c.rule
    bad = make_log(tmp_path / "bad.log", "softmax", rounds({"lfw": [0.98, 0.989], "cfp_fp": [0.8, 0.85],
                                                            "agedb_30": [0.85, 0.88]}))  # fmt: skip
    v = verify(bad, None)
    assert v.verdict == "fail" and [c.id for c in v.failures()] == ["lfw best"]


def test_about_passes_from_value_minus_tolerance_up_and_notes_above_the_band(tmp_path, cli):
    """ArcFace: LFW about 0.9955 (tolerance 0.002 in may16) and AgeDB-30 at least 0.95."""

    def arc(lfw: float, name: str) -> Path:
        return make_log(tmp_path / name, "arcface", rounds({"lfw": [0.99, lfw], "cfp_fp": [0.88, 0.89],
                                                            "agedb_30": [0.94, 0.951]}))  # fmt: skip

    v = verify(arc(0.9940, "in.log"), None)
    assert v.match.signature.label == "may16/arcface" and v.verdict == "pass"
    assert "about 0.9955 ± 0.002" in next(c for c in v.checks if c.id == "lfw best").rule
    assert verify(arc(0.9930, "below.log"), None).verdict == "fail"
    above = arc(0.9990, "above.log")
    v = verify(above, None)
    c = next(c for c in v.checks if c.id == "lfw best")
    assert v.verdict == "pass" and c.verdict == "pass" and "above the band" in c.message
    r = cli("verify", "--log", above)
    assert r.code == EXIT_OK and "note" in r.out and "above the band" in r.out


def test_a_target_never_measured_is_unmeasured_and_exits_1(tmp_path, cli):
    log = make_log(tmp_path / "noagedb.log", "arcface", rounds({"lfw": [0.99, 0.995], "cfp_fp": [0.88, 0.89]}))
    v = verify(log, None)
    assert v.verdict == "unmeasured" and checks(v)["agedb_30 best"] == "unmeasured"
    r = cli("verify", "--log", log, "--json")
    d = r.json()
    assert r.code == EXIT_FAILURE and d["verdict"] == "unmeasured" and d["stage"] == "arcface"
    c = next(c for c in d["checks"] if c["id"] == "agedb_30 best")
    assert c["verdict"] == "unmeasured" and c["found"] is None and c["target"] == "agedb_30" and c["rule"]
    lfw = next(c for c in d["checks"] if c["id"] == "lfw best")
    assert {k: lfw[k] for k in ("target", "verdict", "found", "at_step")} == {
        "target": "lfw", "verdict": "pass", "found": 0.995, "at_step": 4000}  # fmt: skip
    assert lfw["expected"].startswith(">= 0.9935") and "about 0.9955" in lfw["rule"]


# --------------------------------------------------------------------------------------------
# Which stage


def test_stage_detected_from_the_logged_arguments(tmp_path):
    for stage in ("softmax", "arcface", "finetune"):
        log = make_log(tmp_path / f"{stage}.log", stage, rounds({t: [0.9] for t in ALL3}))
        m = detect_stage(summarize(log))
        assert (m.signature.recipe, m.stage, m.differences, m.resumed) == ("may16", stage, [], None), m.how
    # a finetune with the seed's lr 0.001 but another margin_s: still the finetune, the difference named
    log = make_log(tmp_path / "m.log", "finetune", rounds({t: [0.9] for t in ALL3}), margin_s=96.0)
    m = detect_stage(summarize(log))
    assert m.stage == "finetune" and m.differences == ["margin_s 96.0 in the log, 128.0 in the recipe"]
    # the softmax of the 5-07 run (lr steps never reached) is may09's, equally may11's and may14's
    log = make_log(tmp_path / "s.log", "softmax", rounds({t: [0.9] for t in ALL3}), lr_steps="800000,1200000")
    m = detect_stage(summarize(log))
    assert m.signature.label == "may09/softmax" and m.also == ["may11/softmax", "may14/softmax"]


def test_a_log_that_matches_no_stage(tmp_path, cli):
    sphere = make_log(tmp_path / "sphere.log", "arcface", rounds({"lfw": [0.995]}), loss_type=2)
    m = detect_stage(summarize(sphere))
    assert m.signature is None and "matches no recipe stage" in m.how and "loss_type 2" in m.how
    r = cli("verify", "--log", sphere)
    assert r.code == EXIT_FAILURE and "nothing to verify against: matches no recipe stage" in r.err
    # with a reference it is still checked against it, and says the stage is unknown
    r = cli("verify", "--log", sphere, "--reference", SEED, "--json")
    assert r.json()["stage"] is None and r.json()["verdict"] == "unmeasured"


def test_explicit_stage_and_recipe_override_detection(tmp_path, cli):
    log = make_log(tmp_path / "soft.log", "softmax", rounds({"lfw": [0.99, 0.996], "cfp_fp": [0.8, 0.9],
                                                             "agedb_30": [0.9, 0.955]}))  # fmt: skip
    d = cli("verify", "--log", log, "--stage", "arcface", "--recipe", "may16", "--json").json()
    assert d["stage"] == "arcface" and d["match"]["how"] == "given with --stage arcface"
    assert "loss_type 0 in the log, 4 in the recipe" in d["match"]["differences"]
    assert {c["id"] for c in d["checks"]} >= {"lfw best", "agedb_30 best"}  # ArcFace's targets now
    d = cli("verify", "--log", log, "--recipe", "may14", "--json").json()
    assert (d["match"]["recipe"], d["stage"]) == ("may14", "softmax")
    r = cli("verify", "--log", log, "--stage", "nosuch")
    assert r.code == EXIT_FAILURE and "--stage nosuch: no training stage of that name" in r.err


# --------------------------------------------------------------------------------------------
# Resumed runs


def test_resumed_run_steps_are_mapped_before_the_step_comparison(tmp_path):
    """An ArcFace run continued from its own checkpoint 40: its step 32000 is stage step 112000. Its own
    step 112000 (a later point of the stage) must not be compared with the reference's step 112000."""
    good = {"lfw": 0.99517, "cfp_fp": 0.88457, "agedb_30": 0.95067}
    bad = {"lfw": 0.97, "cfp_fp": 0.80, "agedb_30": 0.90}
    log = make_log(tmp_path / "resumed.log", "arcface", [(32000, good), (112000, bad)],
                   pretrained="/data/output/model-y1-arcface,40", lr_steps="40000,100000,125000,150000")  # fmt: skip
    v = verify(log, SEED)
    assert v.match.resumed is not None and v.match.offset == 80000
    assert any("log step s is stage step s + 80000" in f for f in v.findings)
    assert checks(v)["lfw@112000"] == "pass" and checks(v)["cfp_fp@112000"] == "pass"
    assert next(c for c in v.checks if c.id == "lfw@112000").actual == 0.99517
    # in stage steps its lr steps are may11's exactly (the 5-11 run continued test2 this way)
    assert v.match.signature.label == "may11/arcface" and v.match.differences == []
    # the same run, unmapped, would compare its step 112000: the bad values fail
    v = verify(log, SEED, start_step=0)
    assert checks(v)["lfw@112000"] == "fail"


def test_resumed_run_whose_start_cannot_be_known_is_unmeasured(tmp_path, cli):
    good = {"lfw": 0.99517, "cfp_fp": 0.88457, "agedb_30": 0.95067}
    log = make_log(tmp_path / "r.log", "arcface", [(110000, good), (112000, good)], verbose=None,
                   pretrained="/data/output/model-y1-arcface,40")  # fmt: skip
    v = verify(log, SEED)
    assert v.match.offset is None and v.verdict == "unmeasured"
    assert {checks(v)[f"{t}@112000"] for t in ALL3} == {"unmeasured"}
    assert "where they start is unknown" in next(c for c in v.checks if c.id == "lfw@112000").message
    d = cli("verify", "--log", log, "--reference", SEED, "--start-step", "0", "--json").json()
    assert {c["verdict"] for c in d["checks"] if c["id"].endswith("@112000")} == {"pass"}


def test_a_finetune_from_arcface_is_not_a_resumed_run(tmp_path):
    """The seed's fine-tune writes to the ArcFace prefix and starts from arcface,100: a stage of its own."""
    log = make_log(tmp_path / "ft.log", "finetune", rounds({t: [0.9] for t in ALL3}))
    m = detect_stage(summarize(log))
    assert m.stage == "finetune" and m.resumed is None and m.offset == 0


# --------------------------------------------------------------------------------------------
# The blog's complete logs


@needs_reference
def test_the_blog_logs_get_the_seeds_verdict(cli):
    d = cli("verify", "--log", SOFTMAX, "--json").json()
    assert (d["stage"], d["match"]["recipe"], d["match"]["exact"], d["verdict"]) == ("softmax", "may09", True, "pass")
    lfw = next(c for c in d["checks"] if c["id"] == "lfw best")
    assert (lfw["found"], lfw["at_step"]) == (0.99033, 42000)  # "lfw上99+"
    d = cli("verify", "--log", ARCFACE, "--json").json()
    assert (d["stage"], d["match"]["recipe"], d["match"]["exact"], d["verdict"]) == ("arcface", "may09", True, "pass")
    assert {c["id"]: c["verdict"] for c in d["checks"]}["lfw@112000"] == "pass"
    # against the ArcFace excerpt the softmax run still fails (as before), and says the stages differ
    r = cli("verify", "--log", SOFTMAX, "--reference", SEED, "--json")
    assert r.code == EXIT_FAILURE and any("the reference is a arcface log" in f for f in r.json()["findings"])


def test_verify_help_states_the_rules(cli):
    r = cli("verify", "--help")
    assert r.code == 0
    for text in ("a floor", "better passes", "value - tolerance", "above the band", "unmeasured", "--stage",
                 "--start-step"):  # fmt: skip
        assert text in r.out, text


# --------------------------------------------------------------------------------------------
# The dated recipes against the runs they describe

DATED = ("may09", "may11", "may14")
SOURCE = re.compile(r"^(?P<file>[\w./-]+):(?P<line>\d+): (?P<quote>.+?)(?: \((?:derived|and) .*\))?$")


def _source_file(name: str) -> Path | None:
    """A cited file, where it is on this machine: the seed's post, the blog logs in ../shared/reference, or
    the author's other logs in $MFNPATCH_BLOG_LOGS (a checkout of moli232777144/mobilefacenet-mxnet's logs)."""
    if name == "seed":
        return SEED_POST if SEED_POST.is_file() else None
    base = Path(name).name
    cands = [REFERENCE / f"blog-{base}"]
    if os.environ.get("MFNPATCH_BLOG_LOGS"):
        cands.append(Path(os.environ["MFNPATCH_BLOG_LOGS"]) / base)
    return next((c for c in cands if c.is_file()), None)


@pytest.mark.parametrize("name", DATED)
def test_every_number_of_a_dated_recipe_has_a_source(name, cli):
    loaded = load_recipe(name)
    plan = expand(loaded)
    sources = plan.sources()
    numeric = [k for k, v in plan.parameters.items() if k in sources or (isinstance(v, int | float) and k not in (
        "synth_ids", "synth_per_id", "synth_pairs"))]  # fmt: skip
    numeric += [k for k in plan.parameters if k.endswith("_lr_steps")]
    missing = sorted(set(numeric) - set(sources))
    assert not missing, f"{name}: parameters without a source: {missing}"
    for k, src in sources.items():
        if src.startswith("derived:"):
            assert re.search(r"[\w/-]+\.log:\d+", src), (k, src)
            continue
        m = SOURCE.match(src)
        assert m, f"{name}.{k}: source {src!r} is not FILE:LINE: QUOTE"
        value = plan.parameters[k]
        if value is not None and "(derived" not in src:  # the quote says the value itself
            assert all(part in src for part in str(value).split(",")), (k, value, src)
    r = cli("recipe", "plan", name)
    assert r.code == 0 and "sources (where each number comes from)" in r.out
    assert cli("recipe", "plan", name, "--json").json()["sources"] == sources


@pytest.mark.parametrize("name", DATED)
def test_the_cited_lines_say_what_the_recipe_says(name):
    checked, absent = 0, set()
    for k, src in expand(load_recipe(name)).sources().items():
        for cite in re.finditer(r"([\w./-]+(?:\.log)?|seed):(\d+): ([^()]+?)(?= \(|$)", src):
            f = _source_file(cite.group(1))
            if f is None:
                absent.add(cite.group(1))
                continue
            line = f.read_text(encoding="utf-8").splitlines()[int(cite.group(2)) - 1]
            assert cite.group(3).strip() in line, f"{name}.{k}: {f.name}:{cite.group(2)} says {line!r}"
            checked += 1
    if not checked:
        pytest.skip(f"none of the cited files is on this machine ({', '.join(sorted(absent))})")


def test_the_dated_recipes_keep_may16s_command_form():
    """Training commands token for token as may16's (the seed's), only the values differ."""

    def form(name):
        plan = expand(load_recipe(name))
        return {s.name: [a for a in s.argv if a.startswith("-")] for s in plan.stages if s.kind == "train"}

    final = form("may16")
    for name in DATED:
        assert form(name) == final, name


def test_may14_fine_tune_starts_from_the_best_lfw_checkpoint_latest_of_ties():
    plan = expand(load_recipe("may14"))
    ref = plan.stage("finetune").inputs["pretrained"].ref
    assert (ref.stage, ref.best, ref.tie) == ("arcface", "lfw", "latest")
    assert [plan.parameters[k] for k in ("finetune_checkpoint", "arcface_lr_steps")] == [
        40, "220000,260000,280000,300000"]  # fmt: skip
    for name in ("may09", "may11", "may16"):
        assert expand(load_recipe(name)).parameters["finetune_checkpoint"] == 40, name
