"""The patched tree: apply, idempotence, switching sets, drift, atomicity, unapply, status, diff."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import git, relock, snapshot

from mfnpatch.fsutil import git_blob_id
from mfnpatch.source.diff import ApplyFailure
from mfnpatch.source.patchset import Catalog, select_sets
from mfnpatch.source.pin import resolve_pin
from mfnpatch.source.worktree import DriftError, diff, status, unapply


def _pinned(fx, rel: str) -> bytes:
    return git(fx.upstream, "show", f"{fx.sha}:{rel}").encode()


def test_apply_writes_state_and_files(fx):
    o = fx.apply("demo")
    assert o.action == "applied"
    assert o.changed == ["deploy/model_slim.py", "src/image_iter.py", "src/train_softmax.py"]
    text = (fx.dest / "src/train_softmax.py").read_text()
    assert "no_bias=True" in text and "args.network[0]=='r':\n" in text
    state = json.loads((fx.dest / ".mfnpatch/state.json").read_text())
    assert state["schema"] == 1 and state["pin"]["commit"] == fx.sha
    assert [(s["name"], s["version"]) for s in state["sets"]] == [("demo", 1)]
    assert [p["name"] for p in state["patches"]] == ["0001-no-bias.patch", "0002-init.patch", "0003-py3.patch"]
    f = state["files"]["src/train_softmax.py"]
    assert f["blob"] == git_blob_id((fx.dest / "src/train_softmax.py").read_bytes())
    assert f["pinned_blob"] == resolve_pin(fx.short).manifest.files["src/train_softmax.py"].blob
    assert git(fx.dest, "status", "--porcelain").split("\n")[0].startswith(" M ")  # .mfnpatch is ignored
    assert ".mfnpatch" not in git(fx.dest, "status", "--porcelain")


def test_apply_is_idempotent(fx):
    fx.apply("demo")
    before = snapshot(fx.dest)
    o = fx.apply("demo")
    assert o.action == "nothing" and o.changed == []
    assert snapshot(fx.dest) == before


def test_switching_sets_goes_through_the_pin(fx):
    fx.apply("demo")
    o = fx.apply("extra,demo")  # order fixed by 'after': demo first
    assert o.action == "switched" and o.sets == ["demo@1", "extra@1"] and o.previous == ["demo@1"]
    assert "default=10.0" in (fx.dest / "src/train_softmax.py").read_text()
    o = fx.apply("extra")
    assert o.sets == ["extra@1"]
    assert (fx.dest / "src/image_iter.py").read_bytes() == _pinned(fx, "src/image_iter.py")
    text = (fx.dest / "src/train_softmax.py").read_text()
    assert "default=10.0" in text and "no_bias" not in text


def test_check_writes_nothing(fx):
    fx.prepare()
    before = snapshot(fx.dest)
    o = fx.apply("demo", check=True)
    assert o.action == "checked" and len(o.changed) == 3
    assert snapshot(fx.dest) == before


def test_drift_is_refused_then_forced_with_a_saved_copy(fx):
    fx.apply("demo")
    p = fx.dest / "src/train_softmax.py"
    p.write_text(p.read_text() + "# my experiment\n")
    st = status(fx.tree())
    assert st.drifted == ["src/train_softmax.py"] and not st.clean
    before = snapshot(fx.dest)
    with pytest.raises(DriftError) as e:
        fx.apply("demo,extra")
    assert e.value.details == ["src/train_softmax.py: modified outside mfnpatch"]
    assert snapshot(fx.dest) == before
    o = fx.apply("demo,extra", force=True)
    assert o.saved is not None
    assert (o.saved / "src/train_softmax.py").read_text().endswith("# my experiment\n")
    assert "# my experiment" not in p.read_text()
    assert status(fx.tree()).clean


def test_hand_edited_tree_is_diagnosed_or_adopted(fx):
    fx.prepare()
    # The seed's way: edit by hand. Part of the changes -> refused, naming the patch found.
    patches = fx.patches / "demo" / "1"
    git(fx.dest, "apply", str(patches / "0001-no-bias.patch"))
    with pytest.raises(DriftError) as e:
        fx.apply("demo")
    assert e.value.details == [
        "src/train_softmax.py: already contains the changes of demo@1/0001-no-bias.patch (edited by hand?)"
    ]
    # All of them, exactly -> recorded as applied, files untouched.
    git(fx.dest, "apply", str(patches / "0002-init.patch"))
    git(fx.dest, "apply", str(patches / "0003-py3.patch"))
    before = {k: v for k, v in snapshot(fx.dest).items() if not k.startswith(".mfnpatch")}
    o = fx.apply("demo")
    assert o.action == "adopted"
    assert {k: v for k, v in snapshot(fx.dest).items() if not k.startswith(".mfnpatch")} == before
    assert fx.apply("demo").action == "nothing"


def test_unapply_restores_the_pin_byte_for_byte(fx):
    fx.prepare()
    pristine = snapshot(fx.dest)
    fx.apply("demo,extra")
    o = unapply(fx.tree())
    assert o.action == "unapplied" and sorted(o.previous) == ["demo@1", "extra@1"]
    after = snapshot(fx.dest)
    assert {k: v for k, v in after.items() if not k.startswith(".mfnpatch")} == {
        k: v for k, v in pristine.items() if not k.startswith(".mfnpatch")
    }
    assert git(fx.dest, "status", "--porcelain") == ""
    assert unapply(fx.tree()).action == "nothing"


def test_unapply_refuses_to_lose_edits(fx):
    fx.apply("demo")
    p = fx.dest / "deploy/model_slim.py"
    p.write_text("mine\n")
    with pytest.raises(DriftError, match="refusing to discard the edits"):
        unapply(fx.tree())
    assert p.read_text() == "mine\n"
    o = unapply(fx.tree(), force=True)
    assert (o.saved / "deploy/model_slim.py").read_text() == "mine\n"
    assert git(fx.dest, "status", "--porcelain") == ""


def test_created_and_deleted_files(fx):
    m = fx.maker()
    m.write("src/new/helper.py", "x = 1\n")
    m.write("src/train.sh", None)
    from helpers import write_set

    write_set(fx.patches, "files", 1, fx.sha, [("0001-files.patch", m.diff("add and delete"))])
    o = fx.apply("files")
    assert (fx.dest / "src/new/helper.py").read_text() == "x = 1\n"
    assert not (fx.dest / "src/train.sh").exists()
    assert sorted(o.changed) == ["src/new/helper.py", "src/train.sh"]
    st = {f.path: f.state for f in status(fx.tree()).files}
    assert st == {"src/new/helper.py": "created", "src/train.sh": "deleted"}
    unapply(fx.tree())
    assert not (fx.dest / "src/new").exists()
    assert os.stat(fx.dest / "src/train.sh").st_mode & 0o111
    assert git(fx.dest, "status", "--porcelain") == ""


def test_mode_is_kept(fx):
    m = fx.maker()
    m.edit("src/train.sh", "exec python", "exec python3")
    from helpers import write_set

    write_set(fx.patches, "sh", 1, fx.sha, [("0001-sh.patch", m.diff("python3"))])
    fx.apply("sh")
    assert os.stat(fx.dest / "src/train.sh").st_mode & 0o777 == 0o755


@pytest.mark.parametrize("failing", [0, 1, 2])
@pytest.mark.parametrize("start", ["pristine", "applied"])
def test_series_is_all_or_nothing(fx, failing, start):
    """Make each patch of the series fail in turn: the tree stays byte for byte as it was."""
    if start == "applied":
        fx.apply("extra")
    else:
        fx.prepare()
    before = snapshot(fx.dest)
    d = fx.patches / "demo" / "1"
    name = sorted(d.glob("*.patch"))[failing]
    text = name.read_text()
    lines = text.split("\n")
    # corrupt one context line of the first hunk (a context line starts with a space)
    i = next(k for k, ln in enumerate(lines) if ln.startswith(" ") and k > 8)
    lines[i] = " this line is not in the file"
    name.write_text("\n".join(lines))
    relock(d)
    with pytest.raises(ApplyFailure) as e:
        fx.apply("demo,extra")
    assert e.value.patch == f"demo@1/{name.name}"
    assert snapshot(fx.dest) == before


def test_a_failing_write_is_rolled_back(fx, monkeypatch):
    fx.apply("extra")
    before = snapshot(fx.dest)
    real = os.replace
    calls = []

    def flaky(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="No space left"):
        fx.apply("demo,extra")
    monkeypatch.setattr(os, "replace", real)
    assert snapshot(fx.dest) == before
    assert fx.apply("demo,extra").action == "switched"


def test_symlinks_are_never_written_through(fx, tmp_path):
    fx.prepare()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model_slim.py").write_bytes(_pinned(fx, "deploy/model_slim.py"))
    import shutil

    shutil.rmtree(fx.dest / "deploy")
    (fx.dest / "deploy").symlink_to(outside)
    msg = "refused: deploy/model_slim.py goes through a symlink: deploy is a symlink"
    with pytest.raises(ApplyFailure, match=msg) as e:
        fx.apply("demo")
    assert e.value.kind == "unsafe-path"
    assert (outside / "model_slim.py").read_bytes() == _pinned(fx, "deploy/model_slim.py")


def test_patch_set_for_another_commit_is_refused(fx):
    from helpers import write_set

    other = "1" * 40
    text = (fx.patches / "demo/1/0002-init.patch").read_text().replace(fx.sha, other)
    write_set(fx.patches, "alien", 1, other, [("0001-x.patch", text)])
    from mfnpatch.source.pin import PinError

    with pytest.raises(PinError, match=f"alien@1 is made for 1111111, but the tree is at {fx.short}"):
        fx.apply("alien")


def test_diff_is_a_patch_git_accepts(fx, tmp_path):
    fx.apply("demo")
    text = diff(fx.tree())
    assert text.startswith("diff --git a/src/train_softmax.py b/src/train_softmax.py\n")
    (tmp_path / "d.patch").write_text(text)
    # git itself reverses our diff on the patched tree, and it reproduces the pin
    subprocess.run(["git", "apply", "--check", "-R", str(tmp_path / "d.patch")], cwd=fx.dest, check=True)
    subprocess.run(["git", "apply", "-R", str(tmp_path / "d.patch")], cwd=fx.dest, check=True)
    assert git(fx.dest, "status", "--porcelain") == ""


def test_status_reports_other_changes(fx):
    fx.apply("demo")
    (fx.dest / "README.md").write_text("changed\n")
    (fx.dest / "notes.txt").write_text("new\n")
    st = status(fx.tree())
    assert st.clean  # not files mfnpatch manages
    assert st.other_changes == ["M README.md", "?? notes.txt"]


def test_state_of_another_pin_is_refused(fx):
    fx.apply("demo")
    sp = fx.dest / ".mfnpatch/state.json"
    data = json.loads(sp.read_text())
    data["pin"]["commit"] = "2" * 40
    sp.write_text(json.dumps(data))
    from mfnpatch.errors import MfnError

    with pytest.raises(MfnError, match="records pin 2222222"):
        status(fx.tree())
    sp.write_text("{not json")
    with pytest.raises(MfnError, match="unreadable state"):
        status(fx.tree())


def test_selected_sets_load_from_catalog(fx):
    sets = select_sets(Catalog.scan(fx.patches), "extra,demo")
    assert [s.label for s in sets] == ["demo@1", "extra@1"]
    assert Path(sets[0].directory).name == "1"
