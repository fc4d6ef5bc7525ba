"""A corpus of awkward patches, each with the exact message a user sees (tests/golden/apply/*.txt).

Regenerate after an intended wording change with MFNPATCH_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import git, header, write_set

from mfnpatch.errors import EXIT_FAILURE, EXIT_OK


def run_apply(fx, cli, series="case", *extra):
    return cli("apply", "-c", fx.short, "--series", series, "--source", fx.upstream, "--dest", fx.dest, *extra)


INIT_OLD = "    if args.network[0]=='r' or args.network[0]=='y':\n"
INIT_NEW = "    if args.network[0]=='r':\n"


def test_offset_is_reported_and_recorded(fx, cli, golden):
    m = fx.maker()
    m.edit("src/train_softmax.py", "import os\nimport sys\n", "")
    m.diff("made for a file two lines shorter")
    m.edit("src/train_softmax.py", INIT_OLD, INIT_NEW)
    write_set(fx.patches, "case", 1, fx.sha, [("0001-init.patch", m.diff("init"))])
    r = run_apply(fx, cli)
    assert r.code == EXIT_OK, r.err
    golden("apply/offset", r.out, fx)
    state = json.loads((fx.dest / ".mfnpatch/state.json").read_text())
    assert state["patches"][0]["hunks"][0]["offset"] == 2
    r = cli("status", "--dest", fx.dest)
    assert "src/train_softmax.py #1 offset +2" in r.out


def test_fuzz_needed_then_opted_in(fx, cli, golden):
    m = fx.maker()
    m.edit("src/train_softmax.py", "    if len(cvd)>0:", "    if len(cvd) > 0:")  # the hunk's first context line
    m.diff("a context line differs from the pin")
    m.edit("src/train_softmax.py", INIT_OLD, INIT_NEW)
    write_set(fx.patches, "case", 1, fx.sha, [("0001-init.patch", m.diff("init"))])
    r = run_apply(fx, cli)
    assert r.code == EXIT_FAILURE
    golden("apply/fuzz-needed", r.err, fx)
    assert not (fx.dest / ".mfnpatch").exists()
    r = run_apply(fx, cli, "case", "--fuzz", "1")
    assert r.code == EXIT_OK, r.err
    golden("apply/fuzz-accepted", r.out, fx)
    state = json.loads((fx.dest / ".mfnpatch/state.json").read_text())
    assert state["fuzz"] == 1 and state["patches"][0]["hunks"][0]["fuzz"] == 1
    assert INIT_NEW in (fx.dest / "src/train_softmax.py").read_text()
    # the same series without --fuzz is a different request: it is recomputed and fails again
    assert run_apply(fx, cli).code == EXIT_FAILURE


def test_already_applied_by_hand(fx, cli, golden):
    fx.prepare()
    git(fx.dest, "apply", str(fx.patches / "demo/1/0001-no-bias.patch"))
    r = run_apply(fx, cli, "demo")
    assert r.code == EXIT_FAILURE
    golden("apply/already-applied", r.err, fx)


def test_reversed(fx, cli, golden):
    m = fx.maker()
    m.edit("src/train_softmax.py", INIT_OLD, INIT_NEW)
    m.diff("the change")
    m.edit("src/train_softmax.py", INIT_NEW, INIT_OLD)
    write_set(fx.patches, "case", 1, fx.sha, [("0001-init.patch", m.diff("made backwards"))])
    r = run_apply(fx, cli)
    assert r.code == EXIT_FAILURE
    golden("apply/reversed", r.err, fx)


def test_crlf(fx, cli, golden):
    m = fx.maker()
    m.edit("src/train_softmax.py", INIT_OLD, INIT_NEW)
    text = m.diff("init")
    head, body = text.split("diff --git", 1)
    write_set(fx.patches, "case", 1, fx.sha, [("0001-init.patch", head + "diff --git" + body.replace("\n", "\r\n"))])
    r = run_apply(fx, cli)
    assert r.code == EXIT_FAILURE
    golden("apply/crlf", r.err, fx)


@pytest.mark.parametrize(
    "case,minus,plus",
    [
        ("dotdot", "a/../outside.py", "b/../outside.py"),
        ("absolute", "/etc/passwd", "/etc/passwd"),
    ],
)
def test_paths_outside_the_tree(fx, cli, golden, case, minus, plus):
    text = header(fx.sha) + f"--- {minus}\n+++ {plus}\n@@ -1 +1 @@\n-a\n+b\n"
    write_set(fx.patches, "case", 1, fx.sha, [("0001-evil.patch", text)])
    r = run_apply(fx, cli)
    assert r.code == EXIT_FAILURE
    golden(f"apply/{case}", r.err, fx)
    assert not (fx.dest.parent / "outside.py").exists()


def test_symlink_escape(fx, cli, golden, tmp_path):
    fx.prepare()
    outside = tmp_path / "elsewhere"
    shutil.copytree(fx.dest / "deploy", outside)
    shutil.rmtree(fx.dest / "deploy")
    (fx.dest / "deploy").symlink_to(outside)
    before = (outside / "model_slim.py").read_bytes()
    r = run_apply(fx, cli, "demo")
    assert r.code == EXIT_FAILURE
    golden("apply/symlink-escape", r.err, fx)
    assert (outside / "model_slim.py").read_bytes() == before


def test_malformed_hunk(fx, cli, golden):
    text = (fx.patches / "demo/1/0002-init.patch").read_text()
    lines = text.split("\n")
    i = next(k for k, ln in enumerate(lines) if ln.startswith("@@"))
    del lines[i + 1]  # a hunk one context line short of its @@ counts
    write_set(fx.patches, "case", 1, fx.sha, [("0001-broken.patch", "\n".join(lines))])
    r = run_apply(fx, cli)
    assert r.code == EXIT_FAILURE
    golden("apply/malformed-hunk", r.err, fx)


def test_mismatch_shows_expected_and_found(fx, cli, golden):
    m = fx.maker()
    m.edit("src/train_softmax.py", "lr_mult=2.0, wd_mult=0.0", "lr_mult=3.0, wd_mult=0.0")
    m.diff("the patch was made on a different file")
    m.edit(
        "src/train_softmax.py",
        "    _bias = mx.symbol.Variable('fc7_bias', lr_mult=3.0",
        "    #_bias = mx.symbol.Variable('fc7_bias', lr_mult=3.0",
    )
    write_set(fx.patches, "case", 1, fx.sha, [("0001-bias.patch", m.diff("comment the bias"))])
    r = run_apply(fx, cli)
    assert r.code == EXIT_FAILURE
    golden("apply/mismatch", r.err, fx)


def test_missing_file(fx, cli, golden):
    m = fx.maker()
    m.write("src/not_pinned.py", "a = 1\n")
    m.diff("a file the pin does not have")
    m.edit("src/not_pinned.py", "a = 1", "a = 2")
    write_set(fx.patches, "case", 1, fx.sha, [("0001-missing.patch", m.diff("edit it"))])
    r = run_apply(fx, cli)
    assert r.code == EXIT_FAILURE
    golden("apply/missing-file", r.err, fx)


def test_patch_edited_after_its_release(fx, cli, golden):
    p = fx.patches / "demo/1/0002-init.patch"
    p.write_text(p.read_text().replace("uniform init for y1", "uniform init for y1 (edited)"))
    r = run_apply(fx, cli, "demo")
    assert r.code == EXIT_FAILURE
    golden("apply/edited-after-release", r.err, fx)


def test_unknown_commit_and_set(fx, cli, golden):
    r = cli("apply", "-c", "deadbee", "--source", fx.upstream, "--dest", fx.dest)
    assert r.code == EXIT_FAILURE
    golden("apply/unknown-commit", r.err, fx)
    r = run_apply(fx, cli, "demo,nope")
    assert r.code == EXIT_FAILURE
    golden("apply/unknown-set", r.err, fx)


def test_network_failure(fx, cli, golden):
    r = cli(
        "apply", "-c", fx.short, "--series", "demo", "--source", "http://127.0.0.1:9/insightface.git", "--dest", fx.dest
    )
    assert r.code == EXIT_FAILURE
    golden("apply/network", r.err, fx)
    assert not fx.dest.exists()


def test_git_metadata(fx, cli, golden):
    diff = "--- /dev/null\n+++ b/.git/config\n@@ -0,0 +1,2 @@\n+[core]\n+\tfsmonitor = touch pwned\n"
    write_set(fx.patches, "case", 1, fx.sha, [("0001-evil.patch", header(fx.sha) + diff)])
    r = run_apply(fx, cli, "case", "--force")
    assert r.code == EXIT_FAILURE
    golden("apply/git-metadata", r.err, fx)


def test_option_like_source(fx, cli, golden, tmp_path):
    r = cli("apply", "-c", fx.short, "--source", "--upload-pack=touch pwned;://x", "--dest", fx.dest)
    assert r.code == EXIT_FAILURE
    golden("apply/option-like-source", r.err, fx)


def test_state_escape(fx, cli, golden):
    fx.apply("demo")
    path = fx.dest / ".mfnpatch/state.json"
    state = json.loads(path.read_text())
    state["files"] = {"../outside.py": next(iter(state["files"].values()))}
    path.write_text(json.dumps(state, indent=2))
    r = cli("unapply", "--dest", fx.dest)
    assert r.code == EXIT_FAILURE
    golden("apply/state-escape", r.err, fx)
