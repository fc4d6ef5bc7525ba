"""verify under hostile logs: no false PASS. Accuracies no run prints, two runs in one log, a configuration line
that names nothing to compare, and log paths that are not files — each made for real and verified."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from samples import make_log, rounds

from mfnpatch.errors import EXIT_FAILURE, MfnError
from mfnpatch.logs.parser import summarize
from mfnpatch.verify.stagematch import detect_stage
from mfnpatch.verify.verify import verify

GOOD = {"lfw": [0.99, 0.9950], "cfp_fp": [0.88, 0.89], "agedb_30": [0.94, 0.951]}


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_a_good_arcface_log_passes(tmp_path):  # the baseline the attacks below start from
    assert verify(make_log(tmp_path / "good.log", "arcface", rounds(GOOD)), None).verdict == "pass"


@pytest.mark.parametrize("value", ["nan", "inf", "-1.5", "1e308", "1.0000001"])
def test_an_accuracy_outside_0_1_is_a_malformed_line_never_evidence(tmp_path, cli, value):
    log = make_log(tmp_path / "a.log", "arcface", rounds(GOOD))
    text = log.read_text().replace("[lfw][4000]Accuracy-Flip: 0.99500", f"[lfw][4000]Accuracy-Flip: {value}")
    text += f"[2018-05-09 02:28:45]  [lfw][6000]Accuracy-Flip: {value}+-0.001\n"
    text += f"[2018-05-09 02:28:45]  [6000]Accuracy-Highest: {value}\n"
    log.write_text(text)
    s = summarize(log)
    assert s.verifications["lfw"] == {2000: pytest.approx(s.verifications["lfw"][2000])}  # only the real line
    assert s.malformed_lines == 3 and all("is not in [0, 1]" in m for m in s.malformed)
    assert s.malformed[0].startswith("line ") and f"[lfw] Accuracy-Flip {value}" in s.malformed[0]
    v = verify(log, None)
    assert v.verdict == "fail" and v.checks[0].id == "well-formed" and v.checks[0].verdict == "fail"
    assert "lfw best" in {c.id for c in v.checks}  # judged on the real lines only: 0.99 is not about 0.9955
    r = cli("verify", "--log", log, "--json")
    d = strict_json(r.out)
    assert r.code == EXIT_FAILURE and d["verdict"] == "fail" and not d["passed"]
    r = cli("log", "summary", log, "--json")
    d = strict_json(r.out)
    assert d["malformed_lines"] == 3 and d["verifications"]["lfw"] == [d["verifications"]["lfw"][0]]
    r = cli("log", "summary", log)
    assert "malformed: 3 line(s) hold values no run prints" in r.out


def test_a_diverged_runs_nan_xnorm_is_reported_not_malformed(tmp_path, cli):
    log = make_log(tmp_path / "a.log", "arcface", rounds(GOOD))
    log.write_text(log.read_text().replace("[lfw][4000]XNorm: 11.147283", "[lfw][4000]XNorm: nan"))
    s = summarize(log)
    assert s.malformed_lines == 0 and s.verifications["lfw"][4000][2] != s.verifications["lfw"][4000][2]
    d = strict_json(cli("log", "summary", log, "--json").out)
    assert d["verifications"]["lfw"][1]["xnorm"] is None


def test_two_runs_interleaved_are_several_runs_and_nothing_is_judged(tmp_path, cli):
    soft_rounds = rounds({"lfw": [0.99, 0.991], "cfp_fp": [0.8, 0.85], "agedb_30": [0.85, 0.88]})
    soft = make_log(tmp_path / "s.log", "softmax", soft_rounds).read_text().splitlines()
    arc = make_log(tmp_path / "a.log", "arcface", rounds(GOOD)).read_text().splitlines()
    mixed = tmp_path / "mixed.log"
    lines = [x for pair in zip(soft, arc, strict=False) for x in pair] + soft[len(arc) :] + arc[len(soft) :]
    mixed.write_text("\n".join(lines) + "\n")
    s = summarize(mixed)
    assert s.several_runs and s.several_runs.startswith("2 'Called with argument' lines (lines 3, 4)")
    v = verify(mixed, None)
    assert v.verdict == "unmeasured" and [c.id for c in v.checks] == ["one-run"]
    assert "several runs" in v.checks[0].message and "nothing judged" in v.checks[0].message
    r = cli("verify", "--log", mixed)
    assert r.code == EXIT_FAILURE and "several runs" in r.out + r.err and "PASS" not in r.out + r.err
    assert "stage: unknown" in r.out or "not detected" in r.out
    # the same two runs without their configuration lines, judged as a named stage: the steps go back
    bare = tmp_path / "bare.log"
    bare.write_text("\n".join(x for x in soft + arc if "Called with argument" not in x) + "\n")
    s = summarize(bare)
    assert s.configs == [] and any("[lfw][2000] verified after [lfw][4000]" in b for b in s.backwards)
    v = verify(bare, None, stage="softmax")
    assert v.verdict == "unmeasured" and [c.id for c in v.checks] == ["one-run"]
    assert "steps go backwards (line " in v.checks[0].message


def test_a_reference_of_several_runs_is_refused(tmp_path):
    log = make_log(tmp_path / "a.log", "arcface", rounds(GOOD))
    twice = tmp_path / "twice.log"
    twice.write_text(log.read_text() * 2)
    with pytest.raises(MfnError, match="reference .*twice.log is not one run's log: 2 'Called with argument' lines"):
        verify(log, str(twice))


def test_a_configuration_naming_nothing_compared_is_no_match(tmp_path, cli):
    log = make_log(tmp_path / "a.log", "arcface", rounds(GOOD))
    text = log.read_text()
    start = text.index("Namespace(")
    end = text.index(")\n", start) + 1
    empty = tmp_path / "empty-ns.log"
    empty.write_text(text[:start] + "Namespace(foo=1, bar='x')" + text[end:])
    m = detect_stage(summarize(empty))
    assert m.signature is None and "has no loss_type or network" in m.how and "--stage" in m.how
    r = cli("verify", "--log", empty)
    assert r.code != 0 and "PASS" not in r.out + r.err and "nothing to verify against" in r.err
    # only the defining arguments: a match, but never "exact, every compared argument equal"
    thin = tmp_path / "thin.log"
    thin.write_text(text[:start] + "Namespace(loss_type=4, network='y1', pretrained='/o/model-y1-softmax,60')"
                    + text[end:])  # fmt: skip
    m = detect_stage(summarize(thin))
    assert m.stage == "arcface" and m.unread and "lacks lr" in m.how and not m.to_dict()["exact"]
    assert "exactly" not in " ".join(verify(thin, None).findings)


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "unreadable"])
def test_a_log_path_that_is_not_a_file_is_named_for_what_it_is(tmp_path, cli, kind):
    path = {"directory": tmp_path, "device": Path("/dev/zero")}.get(kind, tmp_path / "x.log")
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file: an unreadable log cannot be made here")
        path.write_text("x\n")
        path.chmod(0)
    said = {"directory": "is a directory, not a log file", "fifo": "is a FIFO (named pipe), not a log file",
            "device": "is a device, not a log file",
            "unreadable": "cannot read the log: Permission denied"}[kind]  # fmt: skip
    for args in (("log", "summary", path), ("verify", "--log", path, "--stage", "arcface")):
        r = cli(*args)
        assert r.code == EXIT_FAILURE and said in r.err and "no such log file" not in r.err, r.err
    assert cli("log", "summary", tmp_path / "absent.log").err.count("no such log file") == 1
