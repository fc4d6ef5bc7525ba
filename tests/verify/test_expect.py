"""Verdicts against a reference log and a patch set; expected results as data; reports and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import REFERENCE
from samples import PY3_RUN

from mfnpatch.errors import EXIT_FAILURE, EXIT_OK, MfnError
from mfnpatch.logs.expected import load_expected, resolve_reference
from mfnpatch.logs.parser import summarize
from mfnpatch.resources import data_dir
from mfnpatch.source.patchset import Catalog, select_sets
from mfnpatch.verify.verify import verify

ARCFACE = REFERENCE / "blog-arcface_loss_test2.log"
SOFTMAX = REFERENCE / "blog-softmax_loss_test2.log"
needs_reference = pytest.mark.skipif(
    not ARCFACE.is_file(), reason=f"the blog's complete logs are not at {REFERENCE} (tests-only data)"
)
SEED = "seed-2018-05-09-arcface-test2"


def bundled_sets(spec: str):
    return select_sets(Catalog.scan(data_dir("patches")), spec)


def test_expected_results_are_the_seeds():
    e = load_expected()
    ref = e.references[SEED]
    assert ref.step == 112000
    assert {k: (m.accuracy, m.std) for k, m in ref.metrics.items()} == {
        "lfw": (0.99517, 0.0045),
        "cfp_fp": (0.88457, 0.01533),
        "agedb_30": (0.95067, 0.00907),
    }
    assert e.targets["arcface"].metrics["lfw"].about == 0.9955
    assert e.targets["finetune"].metrics["agedb_30"].about == 0.96
    assert e.results["2018-05-14-test2-4"].metrics["agedb_30"].best == 0.96033
    assert e.results["2018-05-14-test2-5"].metrics["agedb_30"].best == 0.9615
    assert (e.results["paper"].metrics["lfw"].best, e.results["paper"].metrics["agedb_30"].best) == (0.9955, 0.9607)
    assert e.bench.threads[4].avg == 61.43 and e.bench.threads[8].avg == 28.87
    for entry in e.results.values():
        assert entry.source


def test_bundled_reference_log_says_what_the_yaml_says():
    e = load_expected()
    for name, ref in e.references.items():
        path, shown = resolve_reference(name)
        s = summarize(path)
        assert shown == name and s.lines == 16
        for target, m in ref.metrics.items():
            assert s.verifications[target][ref.step][:2] == (m.accuracy, m.std)


def test_unknown_reference(tmp_path):
    with pytest.raises(MfnError, match="neither a file nor a bundled reference") as e:
        resolve_reference("seed-1999")
    assert SEED in e.value.hint


@needs_reference
def test_blog_arcface_log_passes_against_the_seed_excerpt(cli, tmp_path):
    r = cli("verify", "--log", ARCFACE, "--reference", SEED, "--json")
    assert r.code == EXIT_OK, r.err
    d = r.json()
    # the stage's own checks (may09's arcface: three targets verified) and the reference's six
    assert d["passed"] and d["counts"] == {"pass": 9, "fail": 0, "unmeasured": 0, "n/a": 0}
    assert (d["stage"], d["verdict"], d["match"]["recipe"], d["match"]["exact"]) == ("arcface", "pass", "may09", True)
    ids = [c["id"] for c in d["checks"] if c["group"] == "reference"]
    assert ids == ["lfw@112000", "cfp_fp@112000", "agedb_30@112000", "best lfw", "best cfp_fp", "best agedb_30"]
    assert any("configuration not compared" in f for f in d["findings"])


@needs_reference
def test_an_edited_log_fails_naming_target_step_value_and_expected(cli, tmp_path):
    edited = tmp_path / "edited.log"
    edited.write_bytes(
        ARCFACE.read_bytes().replace(b"[lfw][112000]Accuracy-Flip: 0.99517", b"[lfw][112000]Accuracy-Flip: 0.99017")
    )
    md = tmp_path / "report.md"
    r = cli("verify", "--log", edited, "--reference", SEED, "--markdown", md)
    assert r.code == EXIT_FAILURE
    msg = "lfw at step 112000: 0.99017, expected 0.99517 ± 0.00450 (reference seed-2018-05-09-arcface-test2)"
    assert msg in r.err
    text = md.read_text()
    assert text.startswith("# Verification: FAIL") and "| lfw@112000 | **FAIL** | 0.99517 ± 0.00450 | 0.99017 |" in text
    assert msg in text


def test_missing_steps_and_targets_are_unmeasured_not_passed(tmp_path):
    log = tmp_path / "short.log"
    log.write_text("[lfw][112000]Accuracy-Flip: 0.99517+-0.00450\n[cfp_fp][112000]Accuracy-Flip: 0.88457+-0.01533\n")
    v = verify(log, SEED)
    verdicts = {c.id: c.verdict for c in v.checks}
    assert verdicts["lfw@112000"] == "pass" and verdicts["agedb_30@112000"] == "unmeasured"
    assert verdicts["best agedb_30"] == "unmeasured"
    assert not v.passed
    early = tmp_path / "early.log"
    early.write_text("[lfw][2000]Accuracy-Flip: 0.99517+-0.00450\n")
    v = verify(early, SEED)
    assert {c.id: c.verdict for c in v.checks}["lfw@112000"] == "unmeasured" and not v.passed


def test_tolerance_flag_is_absolute(tmp_path):
    log = tmp_path / "l.log"
    log.write_text(
        "[lfw][112000]Accuracy-Flip: 0.99400+-0.00450\n[cfp_fp][112000]Accuracy-Flip: 0.88457+-0.01533\n"
        "[agedb_30][112000]Accuracy-Flip: 0.95067+-0.00907\n"
    )
    assert verify(log, SEED).passed  # |0.994 - 0.99517| <= 0.0045
    v = verify(log, SEED, tolerance=0.001)
    assert not v.passed and [c.id for c in v.failures()] == ["lfw@112000", "best lfw"]


def test_an_empty_reference_is_an_error(tmp_path):
    ref = tmp_path / "ref.log"
    ref.write_text("nothing here\n")
    with pytest.raises(MfnError, match="has no verification lines"):
        verify(ref, str(ref))


@needs_reference
def test_config_differences_are_findings(tmp_path):
    v = verify(SOFTMAX, str(ARCFACE))
    training = [f for f in v.findings if "(training setting)" in f]
    assert "config loss_type: 0 in the log, 4 in the reference (training setting)" in training
    assert any(f.startswith("config prefix:") and "(location setting)" in f for f in v.findings)
    assert not v.passed  # the softmax run has no steps beyond 42000


def _symbol(tmp_path: Path, with_bias: bool) -> str:
    nodes = [{"op": "null", "name": "data", "inputs": []}, {"op": "null", "name": "fc7_weight", "inputs": []}]
    if with_bias:
        nodes.append({"op": "null", "name": "fc7_bias", "inputs": []})
    nodes.append({"op": "FullyConnected", "name": "fc7", "attrs": {"no_bias": str(not with_bias)}, "inputs": []})
    prefix = tmp_path / ("with" if with_bias else "without") / "model-y1-softmax"
    prefix.parent.mkdir()
    (Path(str(prefix) + "-symbol.json")).write_text(
        json.dumps({"nodes": nodes, "arg_nodes": [0], "heads": [[3, 0, 0]]})
    )
    return str(prefix)


def test_patch_evidence_from_config_python_and_symbol(tmp_path):
    log = tmp_path / "softmax.log"
    log.write_text(PY3_RUN)
    v = verify(log, None, sets=bundled_sets("mfn,py3"), checkpoint=_symbol(tmp_path, with_bias=False))
    got = {c.id: (c.verdict, c.required) for c in v.checks if c.group == "patches"}
    assert got == {
        "mfn@1/0001-fc7-no-bias.patch": ("pass", True),
        "mfn@1/0002-y1-uniform-init.patch": ("unmeasured", False),
        "mfn@1/0003-fc7-wd-mult-default-10.patch": ("pass", True),
        "py3@1": ("pass", True),
    }
    # the patch checks pass; the stage it ran (the smoke softmax: lfw only, once) is not fully measured
    assert v.stage == "softmax" and v.verdict == "unmeasured"
    assert {c.id for c in v.failures()} == {"cfp_fp verified", "agedb_30 verified"}
    v = verify(log, None, sets=bundled_sets("mfn"), checkpoint=_symbol(tmp_path, with_bias=True))
    bad = {c.id: c.message for c in v.failures() if c.group == "patches"}
    assert "has fc7_bias" in bad["mfn@1/0001-fc7-no-bias.patch"]
    assert any("Python 3" in f and "py3" in f for f in v.findings)
    # no checkpoint anywhere: reported as not checked, not failed
    v = verify(log, None, sets=bundled_sets("mfn"))
    c = next(c for c in v.checks if c.id == "mfn@1/0001-fc7-no-bias.patch")
    assert (c.verdict, c.required) == ("unmeasured", False) and "no checkpoint symbol found" in c.message
    # a run that forgot the flag without the patch
    forgot = tmp_path / "forgot.log"
    forgot.write_text(PY3_RUN.replace("fc7_wd_mult=10.0", "fc7_wd_mult=1.0"))
    v = verify(forgot, None, sets=bundled_sets("mfn"))
    assert [c.id for c in v.failures() if c.group == "patches"] == ["mfn@1/0003-fc7-wd-mult-default-10.patch"]
    assert any("fc7_wd_mult 1.0 in the log, 10.0 in the recipe" in f for f in v.findings)


@needs_reference
def test_python2_log_contradicts_the_py3_set():
    v = verify(ARCFACE, None, sets=bundled_sets("py3"))
    (c,) = [c for c in v.checks if c.group == "patches"]
    assert c.verdict == "fail" and "written by Python 2" in c.message


def test_nothing_to_verify(cli, tmp_path):
    """No configuration line (so no stage), no reference, no patch sets: nothing to judge by."""
    log = tmp_path / "l.log"
    log.write_text("[lfw][2000]Accuracy-Flip: 0.99517+-0.00450\n")
    r = cli("verify", "--log", log)
    assert r.code == EXIT_FAILURE and "nothing to verify against" in r.err and "--stage" in r.err


def test_log_summary_json_and_plot(cli, tmp_path):
    log = tmp_path / "run.log"
    log.write_text(PY3_RUN)
    d = cli("log", "summary", log, "--json").json()
    assert d["targets"]["lfw"]["best_step"] == 40 and d["python"] == 3
    assert d["checkpoints"][1] == {"number": 2, "step": 40, "path": "/tmp/m/model-y1-softmax-0002.params"}
    human = cli("log", "summary", log)
    assert human.code == 0 and "lfw" in human.out and "checkpoints: 2 saved" in human.out
    png = tmp_path / "out" / "curves.png"
    r = cli("log", "plot", log, "-o", png, "--reference", SEED)
    assert r.code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    empty = tmp_path / "empty.log"
    empty.write_text("hello\n")
    r = cli("log", "plot", empty, "-o", tmp_path / "x.png")
    assert r.code == EXIT_FAILURE and "nothing to plot" in r.err and not (tmp_path / "x.png").exists()
