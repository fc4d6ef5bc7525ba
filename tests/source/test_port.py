"""`mfnpatch patches port`: a set carried to later commits of a real git history, one status per patch (clean,
moved, merged, upstream, conflict), --keep-conflicts -> resolve -> --continue, atomic writes, and apply picking the
version made for its commit."""

from __future__ import annotations

import json
import re

import pytest
from helpers import git, snapshot

from mfnpatch.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from mfnpatch.source.patchset import Catalog, load_set

NO_BIAS_OLD = "fc7 = mx.sym.FullyConnected(data=embedding, weight = _weight, bias = _bias, num_hidden=10, name='fc7')"


def later(fx, edits: list[tuple[str, str, str]], message: str) -> str:
    """A real upstream commit after the pin (on top of the fixture's 'after the pin'); returns its SHA."""
    for rel, old, new in edits:
        p = fx.upstream / rel
        text = p.read_text()
        assert text.count(old) == 1, (rel, old)
        p.write_text(text.replace(old, new))
    git(fx.upstream, "commit", "-q", "-am", message)
    return git(fx.upstream, "rev-parse", "HEAD").strip()


def port(cli, fx, to: str, *extra):
    return cli("patches", "port", "demo", "--to", to, "--source", fx.upstream, *extra)


def statuses(cli, fx, to: str) -> dict[str, str]:
    r = port(cli, fx, to, "--dry-run", "--json")
    return {p["patch"]: p["status"] for p in json.loads(r.out)["patches"]}


def test_each_status_from_a_real_history(cli, fx):
    # clean: upstream changed only lines far from every hunk
    clean = later(fx, [("src/train_softmax.py", "if __name__ == '__main__':\n    main()\n",
                        "if __name__ == '__main__':\n    main()\n# end\n")], "a trailing comment")  # fmt: skip
    assert statuses(cli, fx, clean) == {"0001-no-bias.patch": "clean", "0002-init.patch": "clean",
                                        "0003-py3.patch": "clean"}  # fmt: skip
    # moved: lines inserted above every hunk of train_softmax.py
    moved = later(fx, [("src/train_softmax.py", "import mxnet as mx\n", "import mxnet as mx\n" + "# moved\n" * 7)],
                  "seven lines more at the top")  # fmt: skip
    s = statuses(cli, fx, moved)
    assert s["0001-no-bias.patch"] == "moved" and s["0002-init.patch"] == "moved"
    # merged: a context line of 0001's hunk changed, not the lines it changes
    merged = later(fx, [("src/train_softmax.py", "  embedding = None\n", "  embedding = None  # set below\n")],
                   "a comment in 0001's context")  # fmt: skip
    assert statuses(cli, fx, merged)["0001-no-bias.patch"] == "merged"
    # upstream: the commit made 0002's change itself
    upstream = later(fx, [("src/train_softmax.py", "if args.network[0]=='r' or args.network[0]=='y':",
                           "if args.network[0]=='r':")], "y1 uses the uniform init")  # fmt: skip
    assert statuses(cli, fx, upstream)["0002-init.patch"] == "upstream"
    # conflict: the commit changed the very line 0001 changes, differently
    conflict = later(fx, [("src/train_softmax.py", NO_BIAS_OLD, NO_BIAS_OLD.replace("num_hidden=10", "num_hidden=20"))],
                     "more classes")  # fmt: skip
    r = port(cli, fx, conflict, "--dry-run")
    assert r.code == EXIT_FAILURE
    assert re.search(r"conflict +0001-no-bias.patch +the merge conflicts in 1 place", r.out), r.out
    assert "ours (the set):" in r.out and "num_hidden=20" in r.out and "no_bias=True" in r.out
    # every patch is named, also after the conflict
    assert re.search(r"upstream +0002-init.patch .*judged without 0001-no-bias.patch", r.out)
    assert re.search(r"moved +0003-py3.patch", r.out)  # the seven lines at the top are still there


def test_a_port_writes_the_next_version_and_apply_picks_it(cli, fx):
    moved = later(fx, [("src/train_softmax.py", "import mxnet as mx\n", "import mxnet as mx\n" + "# moved\n" * 7)],
                  "seven lines more at the top")  # fmt: skip
    before_pins = sorted(p.name for p in fx.pins.iterdir())
    r = port(cli, fx, moved)
    assert r.code == EXIT_OK, r.out + r.err
    assert f"recorded the pin {fx.pins / (moved[:7] + '.yaml')}" in r.out and f"wrote demo@2 for {moved[:7]}" in r.out
    assert sorted(p.name for p in fx.pins.iterdir()) == sorted([*before_pins, f"{moved[:7]}.yaml"])
    new = load_set(fx.patches / "demo" / "2")  # SHA256SUMS, series and headers all valid
    assert new.manifest.applies_to == moved and [p.name for p in new.patches] == [
        "0001-no-bias.patch", "0002-init.patch", "0003-py3.patch"]  # fmt: skip
    h = new.patches[0].header.fields
    assert h["Applies-To"] == moved and h["Description"] == "softmax fc7 without bias"
    assert h["Ported-From"] == f"demo@1 0001-no-bias.patch at {fx.sha} (moved, mfnpatch patches port)"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", h["Last-Update"])
    assert "@@ -2" in new.patches[0].text or "@@ -" in new.patches[0].text
    # apply takes the version made for the commit it is given, at fuzz 0 and without an offset
    r = cli("apply", "--commit", moved[:7], "--series", "demo", "--source", fx.upstream, "--dest", fx.dest)
    assert r.code == EXIT_OK and "applied demo@2" in r.out and "offset" not in r.out, r.out + r.err
    text = (fx.dest / "src/train_softmax.py").read_text()
    assert "no_bias=True" in text and "if args.network[0]=='r':" in text and "# moved" in text
    r = cli("apply", "--commit", fx.short, "--series", "demo", "--source", fx.upstream, "--dest", fx.root / "old")
    assert r.code == EXIT_OK and "applied demo@1" in r.out
    listing = cli("patches", "list").out
    assert f"demo@1  for {fx.short}" in listing and f"demo@2 (latest) for {moved[:7]}" in listing


def test_a_patch_already_upstream_is_dropped_from_the_new_version(cli, fx):
    upstream = later(fx, [("src/train_softmax.py", "if args.network[0]=='r' or args.network[0]=='y':",
                           "if args.network[0]=='r':")], "y1 uses the uniform init")  # fmt: skip
    r = port(cli, fx, upstream)
    assert r.code == EXIT_OK, r.out + r.err
    new = load_set(fx.patches / "demo" / "2")
    assert [p.name for p in new.patches] == ["0001-no-bias.patch", "0003-py3.patch"]
    assert "dropped (already upstream): 0002-init.patch" in (fx.patches / "demo/2/set.yaml").read_text()


def test_a_set_without_a_version_for_the_commit_is_a_clear_error(cli, fx):
    moved = later(fx, [("src/train_softmax.py", "import mxnet as mx\n", "import mxnet as mx\n# one\n")], "one more")
    r = port(cli, fx, moved, "--dry-run")  # records nothing, writes nothing: the commit stays unpinned
    assert r.code == EXIT_OK and "dry run: nothing written" in r.out and not (fx.patches / "demo/2").exists()
    git(fx.upstream, "rev-parse", "HEAD")
    from helpers import write_pin

    write_pin(fx.pins, fx.upstream, moved)
    r = cli("apply", "--commit", moved[:7], "--series", "demo", "--source", fx.upstream, "--dest", fx.dest)
    assert r.code == EXIT_FAILURE
    assert f"patch set demo has no version made for {moved[:7]} (versions: 1 for {fx.short})" in r.err
    assert f"hint: carry it there: mfnpatch patches port demo --to {moved}" in r.err
    r = port(cli, fx, moved[:7] + "ffff")  # neither pinned nor 40 digits
    assert r.code == EXIT_FAILURE and "give the full 40-digit SHA" in r.err and "git rev-parse" in r.err
    r = cli("patches", "port", "demo")
    assert r.code == EXIT_USAGE and "needs a SET and --to COMMIT" in r.err


def test_a_conflict_writes_nothing_then_keep_resolve_continue(cli, fx, tmp_path):
    conflict = later(fx, [("src/train_softmax.py", NO_BIAS_OLD, NO_BIAS_OLD.replace("num_hidden=10", "num_hidden=20"))],
                     "more classes")  # fmt: skip
    before = snapshot(fx.patches), snapshot(fx.pins)
    r = port(cli, fx, conflict)
    assert r.code == EXIT_FAILURE and "nothing written" in r.out
    assert (snapshot(fx.patches), snapshot(fx.pins)) == before
    kept = tmp_path / "kept"
    r = port(cli, fx, conflict, "--keep-conflicts", kept)
    assert r.code == EXIT_FAILURE and f"mfnpatch patches port --continue {kept}" in r.out
    assert (snapshot(fx.patches), snapshot(fx.pins)) == before
    marked = kept / "src/train_softmax.py"
    text = marked.read_text()
    assert "<<<<<<< demo@1 0001-no-bias.patch" in text and f">>>>>>> {conflict[:7]}" in text
    r = cli("patches", "port", "--continue", kept)  # markers still there
    assert r.code == EXIT_FAILURE and f"{marked}:" in r.err and "conflict markers are still there" in r.err
    # resolve: the set's no-bias line with upstream's 20 classes
    resolved = re.sub(r"<<<<<<< .*?\n(.*?)=======\n.*?>>>>>>> .*?\n",
                      lambda m: m.group(1).replace("num_hidden=10", "num_hidden=20"), text, flags=re.S)  # fmt: skip
    marked.write_text(resolved)
    r = cli("patches", "port", "--continue", kept)
    assert r.code == EXIT_OK, r.out + r.err
    assert re.search(r"resolved +0001-no-bias.patch", r.out) and re.search(r"clean +0002-init.patch", r.out)
    new = load_set(fx.patches / "demo" / "2")
    assert new.patches[0].header.fields["Ported-From"].endswith("(resolved, mfnpatch patches port)")
    r = cli("apply", "--commit", conflict[:7], "--series", "demo", "--source", fx.upstream, "--dest", fx.dest)
    assert r.code == EXIT_OK, r.err
    assert "no_bias=True, num_hidden=20" in (fx.dest / "src/train_softmax.py").read_text()
    assert not (kept / ".mfnpatch-port").exists()  # the port is finished


@pytest.fixture
def kept_port(cli, fx, tmp_path):
    """A port stopped at a conflict, its state kept in DIR for --continue (and the conflicting file resolved)."""
    conflict = later(fx, [("src/train_softmax.py", NO_BIAS_OLD, NO_BIAS_OLD.replace("num_hidden=10", "num_hidden=20"))],
                     "more classes")  # fmt: skip
    kept = tmp_path / "kept"
    assert port(cli, fx, conflict, "--keep-conflicts", kept).code == EXIT_FAILURE
    marked = kept / "src/train_softmax.py"
    marked.write_text(re.sub(r"<<<<<<< .*?\n(.*?)=======\n.*?>>>>>>> .*?\n", r"\1", marked.read_text(), flags=re.S))
    return kept


@pytest.mark.parametrize(
    "attack",
    ["climb", "absolute", "resolved-climb", "link-in-dir", "state-dir-link", "corrupt", "empty", "types", "deep"],
)
def test_continue_validates_and_confines_its_state(cli, fx, kept_port, tmp_path, attack):
    """A hand-edited or damaged .mfnpatch-port/state.json: a clear error naming the file, exit 1, and nothing
    written outside DIR (nor into patches/ or pins/)."""
    state_file = kept_port / ".mfnpatch-port" / "state.json"
    state = json.loads(state_file.read_text())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.py").write_text("keep me\n")
    if attack == "climb":
        state["files"] = ["../outside/victim.py"]
    elif attack == "absolute":
        state["files"] = [str(outside / "victim.py")]
    elif attack == "resolved-climb":
        state["resolved"] = {"0001-no-bias.patch": {"src/train_softmax.py": "../../outside/victim.py"}}
    elif attack == "link-in-dir":
        (kept_port / "lnk").symlink_to(outside)
        state["files"] = ["lnk/victim.py"]
    elif attack == "state-dir-link":
        real = kept_port / ".mfnpatch-port"
        (outside / "state").mkdir()
        for f in real.iterdir():
            f.rename(outside / "state" / f.name)
        real.rmdir()
        real.symlink_to(outside / "state")
    if attack in ("climb", "absolute", "resolved-climb", "link-in-dir"):
        state_file.write_text(json.dumps(state))
    elif attack == "corrupt":
        state_file.write_text('{"set": "demo", "files": [')
    elif attack == "empty":
        state_file.write_text("")
    elif attack == "types":
        state_file.write_text(json.dumps({**state, "files": "src/train_softmax.py", "version": "1"}))
    elif attack == "deep":
        state_file.write_text("[" * 100_000 + "]" * 100_000)
    before = snapshot(fx.patches), snapshot(fx.pins), snapshot(outside)
    r = cli("patches", "port", "--continue", kept_port)
    assert r.code == EXIT_FAILURE, (r.code, r.out, r.err)
    assert "state.json" in r.err and ("refused" in r.err or "damaged" in r.err), r.err
    assert "internal error" not in r.err and "Traceback" not in r.err
    assert (snapshot(fx.patches), snapshot(fx.pins), snapshot(outside)) == before
    assert not list(outside.rglob("resolved"))


def test_an_interrupted_write_leaves_patches_and_pins_as_they_were(cli, fx, monkeypatch):
    moved = later(fx, [("src/train_softmax.py", "import mxnet as mx\n", "import mxnet as mx\n# one\n")], "one more")
    before = snapshot(fx.patches)
    import mfnpatch.source.port as port_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(port_mod, "_check_new_version", interrupted)
    r = port(cli, fx, moved)
    assert r.code == EXIT_INTERRUPTED
    assert snapshot(fx.patches) == before and not list(fx.patches.rglob(".*port*"))
    assert Catalog.scan(fx.patches).versions["demo"] == [1]


# --------------------------------------------------------------------------------------------
# The real InsightFace history (MFNPATCH_UPSTREAM)


@pytest.mark.upstream
def test_mfn_ported_to_90547bdc_applies_at_fuzz_0_with_the_three_edits(cli, tmp_path, monkeypatch):
    import os
    import shutil

    from mfnpatch.resources import data_dir

    source = os.environ["MFNPATCH_REAL_UPSTREAM"]
    for d, var in (("patches", "MFNPATCH_PATCHES"), ("insightface_pin", "MFNPATCH_PINS")):
        shutil.copytree(data_dir(d), tmp_path / d)
        monkeypatch.setenv(var, str(tmp_path / d))
    to = "90547bdcc4cd2cbf934366773b9decc2990e9dc2"
    r = cli("patches", "port", "mfn", "--to", to, "--source", source)
    assert r.code == EXIT_OK, r.out + r.err
    r = cli("apply", "--commit", "90547bd", "--series", "mfn", "--source", source, "--dest", tmp_path / "tree")
    assert r.code == EXIT_OK and "applied mfn@2 at 90547bd" in r.out and "offset" not in r.out, r.out + r.err
    text = (tmp_path / "tree/src/train_softmax.py").read_text()
    assert "no_bias=True, num_hidden=args.num_classes, name='fc7')" in text  # 0001
    assert "if args.network[0]=='r':" in text or "if args.network[0]=='r' :" in text  # 0002: y1 gets uniform init
    assert "'--fc7-wd-mult', type=float, default=10.0" in text  # 0003


@pytest.mark.upstream
def test_mfn_and_py3_to_22a07198_name_each_patch_with_a_status(cli, tmp_path, monkeypatch):
    import os

    source = os.environ["MFNPATCH_REAL_UPSTREAM"]
    to = "22a071985aa0af15f8366760ae8cbadb8ba23762"
    for name, count in (("mfn", 3), ("py3", 6)):
        r = cli("patches", "port", name, "--to", to, "--source", source, "--dry-run", "--json")
        d = json.loads(r.out)
        assert len(d["patches"]) == count and all(
            p["status"] in ("clean", "moved", "merged", "upstream", "conflict") for p in d["patches"]
        )
        assert r.code == (EXIT_OK if d["ok"] else EXIT_FAILURE)
    mfn = json.loads(cli("patches", "port", "mfn", "--to", to, "--source", source, "--dry-run", "--json").out)
    assert mfn["patches"][0]["status"] == "conflict" and not mfn["ok"]  # upstream's own --fc7-no-bias (8883bf95)
    assert "if args.fc7_no_bias:" in mfn["patches"][0]["conflicts"][0]["theirs"]
