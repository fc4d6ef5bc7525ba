"""Pin manifests, commit prefixes, fetching one commit through the cache, creating verified trees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import git

from mfnpatch.fsutil import git_blob_id
from mfnpatch.resources import data_dir
from mfnpatch.source.pin import (
    NetworkError,
    Pin,
    PinError,
    PinManifest,
    load_pins,
    resolve_pin,
    resolve_source,
)


def _pin(commit: str, subject: str = "s") -> Pin:
    m = PinManifest(
        schema=1, name="x", upstream="u", commit=commit, date="2018-04-27", subject=subject, tree="0" * 40, files={}
    )
    return Pin(m, Path(f"{commit[:7]}.yaml"))


def test_bundled_pin_is_4bc8132():
    pins = load_pins(data_dir("insightface_pin"))
    assert sorted(p.commit for p in pins) == ["0159b24d44cbc91abbd07b7a6fab0ba923a7fddf",  # arcface_torch (mbf)
                                              "4bc813215a4603474c840c85fa2113f5354c7180"]  # fmt: skip
    m = next(p for p in pins if p.commit.startswith("4bc8132")).manifest
    assert m.tree == "8c9d7e1cb2cea320940bdf12db4d86927ee762f3"
    assert m.upstream == "https://github.com/deepinsight/insightface.git"
    assert m.date.startswith("2018-04-27")
    assert len(m.files) == 95
    assert "src/train_softmax.py" in m.files and "deploy/model_slim.py" in m.files


def test_commit_prefixes():
    a, b = _pin("abcd" + "1" * 36), _pin("abce" + "2" * 36)
    assert resolve_pin("abcd", [a, b]) is a
    assert resolve_pin("ABCD111", [a, b]) is a
    assert resolve_pin(a.commit, [a, b]) is a
    with pytest.raises(PinError, match="ambiguous") as e:
        resolve_pin("abc" + "d", [a, _pin("abcd" + "3" * 36)])
    assert "give more digits" in e.value.hint
    with pytest.raises(PinError, match="not a commit id"):
        resolve_pin("abc", [a, b])
    with pytest.raises(PinError, match="commit 1234567 is not pinned") as e:
        resolve_pin("1234567", [a, b])
    assert "abcd111 (2018-04-27, 's'); abce222" in e.value.hint


def test_source_precedence(fx, monkeypatch, tmp_path):
    pin = resolve_pin(fx.short)
    assert resolve_source(None, pin) == ("https://example.invalid/insightface.git", "pin manifest")
    monkeypatch.setenv("MFNPATCH_UPSTREAM", str(fx.upstream))
    assert resolve_source(None, pin) == (fx.upstream.resolve().as_uri(), "MFNPATCH_UPSTREAM")
    assert resolve_source("https://h/x.git", pin) == ("https://h/x.git", "--source")
    assert resolve_source("git@host:a/b.git", pin)[0] == "git@host:a/b.git"
    with pytest.raises(PinError, match="--source /no/such/dir: no such file or directory"):
        resolve_source("/no/such/dir", pin)


def test_fetches_one_commit_only_and_verifies_it(fx):
    p = fx.prepare()
    assert p.created and p.fetch is not None and not p.fetch.from_cache
    cache = Path(os.environ["MFNPATCH_CACHE"]) / "git"
    assert git(cache, "rev-parse", "--is-shallow-repository").strip() == "true"
    assert git(cache, "rev-list", "--all").split() == [fx.sha]
    # The tree: HEAD at the pin, every file equal to its pinned blob, state dir ignored by git.
    assert git(fx.dest, "rev-parse", "HEAD").strip() == fx.sha
    pin = resolve_pin(fx.short)
    for rel, entry in pin.manifest.files.items():
        assert git_blob_id((fx.dest / rel).read_bytes()) == entry.blob, rel
    assert os.stat(fx.dest / "src/train.sh").st_mode & 0o111
    assert "/.mfnpatch/" in (fx.dest / ".git/info/exclude").read_text()


def test_second_apply_needs_no_source(fx, tmp_path):
    fx.prepare()
    gone = fx.upstream.with_name("moved-away")
    fx.upstream.rename(gone)
    p = fx.prepare(dest=tmp_path / "second", source=str(gone))  # path exists, but it is never read
    assert p.fetch.from_cache
    shutil.rmtree(gone)
    # an existing tree needs neither cache nor source
    shutil.rmtree(Path(os.environ["MFNPATCH_CACHE"]))
    p = fx.prepare(dest=tmp_path / "second", source="/nonexistent")
    assert not p.created and p.fetch is None


@pytest.mark.parametrize("kind", ["bare-mirror", "file-url", "clone"])
def test_sources(fx, tmp_path, kind):
    if kind == "bare-mirror":
        src = tmp_path / "mirror.git"
        git(tmp_path, "clone", "-q", "--mirror", str(fx.upstream), str(src))
        source = str(src)
    elif kind == "file-url":
        source = fx.upstream.resolve().as_uri()
    else:
        src = tmp_path / "clone"
        git(tmp_path, "clone", "-q", str(fx.upstream), str(src))
        source = str(src)
    p = fx.prepare(source=source)
    assert p.created and git(fx.dest, "rev-parse", "HEAD").strip() == fx.sha


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if "mfnpatch-tmp" in p.name]


def test_network_failure_says_so_and_leaves_nothing(fx, tmp_path):
    from mfnpatch.source.tree import prepare_tree

    with pytest.raises(NetworkError) as e:
        prepare_tree(fx.short, fx.dest, "http://127.0.0.1:9/insightface.git")
    assert "network or host is unreachable" in e.value.message
    assert "--source" in e.value.hint and "MFNPATCH_UPSTREAM" in e.value.hint
    assert not fx.dest.exists() and not _leftovers(fx.dest.parent)


def test_source_without_the_commit(fx, tmp_path):
    from mfnpatch.source.tree import prepare_tree

    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    (other / "f").write_text("x")
    git(other, "add", "f")
    git(other, "commit", "-qm", "x")
    with pytest.raises(PinError, match=f"does not have commit {fx.sha}"):
        prepare_tree(fx.short, fx.dest, str(other))
    not_git = tmp_path / "plain"
    not_git.mkdir()
    with pytest.raises(PinError, match="is not a git repository"):
        prepare_tree(fx.short, fx.dest, str(not_git))
    assert not fx.dest.exists() and not _leftovers(fx.dest.parent)


def test_commit_and_tree_must_agree(fx):
    from mfnpatch.source.tree import prepare_tree

    path = next(fx.pins.glob("*.yaml"))
    text = path.read_text()
    real_tree = resolve_pin(fx.short).manifest.tree
    path.write_text(text.replace(real_tree, "f" * 40))
    with pytest.raises(PinError, match=f"has tree {real_tree}, but .* pins tree f{{40}}"):
        prepare_tree(fx.short, fx.dest, str(fx.upstream))
    assert not fx.dest.exists()


def test_dest_must_be_a_pinned_checkout(fx, tmp_path):
    from mfnpatch.source.tree import prepare_tree

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x").write_text("mine")
    with pytest.raises(PinError, match="is not a git checkout of a pinned commit"):
        prepare_tree(fx.short, plain, str(fx.upstream))
    assert (plain / "x").read_text() == "mine"
    moved = tmp_path / "moved"
    git(tmp_path, "clone", "-q", str(fx.upstream), str(moved))
    with pytest.raises(PinError, match="which is not pinned"):
        prepare_tree(fx.short, moved, str(fx.upstream))
    # A user's own full clone, checked out at the pin, is used in place.
    git(moved, "checkout", "-q", "--detach", fx.sha)
    p = prepare_tree(fx.short, moved, str(fx.upstream))
    assert not p.created and p.tree.pin.commit == fx.sha
    with pytest.raises(PinError, match="not its top"):
        prepare_tree(fx.short, moved / "src", str(fx.upstream))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_tree(fx.short, empty, str(fx.upstream)).created


def test_pin_record_roundtrip(fx, tmp_path, cli):
    out = tmp_path / "p.yaml"
    r = cli("pin", "record", "--source", fx.upstream, "--commit", fx.sha, "-o", out)
    assert r.code == 0, r.err
    assert out.read_text() == next(fx.pins.glob("*.yaml")).read_text().replace(
        "https://example.invalid/insightface.git", "https://github.com/deepinsight/insightface.git"
    )
    r = cli("pin", "record", "--source", fx.upstream, "--commit", fx.short, "-o", out)
    assert r.code == 1 and "give the full 40-digit SHA" in r.err


def test_each_pin_has_its_own_default_tree_and_paths():
    from mfnpatch.source.pin import default_dest, load_pins

    pins = load_pins()
    dests = [p.manifest.dest for p in pins]
    assert len(set(dests)) == len(dests)  # two lineages never share a default tree
    assert default_dest("4bc8132") == Path("insightface") and default_dest("0159b24") == Path("insightface-0159b24")
    assert resolve_pin("4bc8132").manifest.paths == ["src", "deploy/*"]
    assert resolve_pin("0159b24").manifest.paths == ["recognition/arcface_torch"]


def test_a_tree_of_another_pin_is_named_with_both_commits(fx, cli, tmp_path, monkeypatch):
    from helpers import make_upstream, write_pin

    assert cli("apply", "-c", fx.short, "--series", "demo", "--source", fx.upstream, "--dest", fx.dest).code == 0
    up2, sha2 = make_upstream(tmp_path / "up2", history=3)
    write_pin(fx.pins, up2, sha2, name="other")
    r = cli("apply", "-c", sha2[:7], "--source", up2, "--dest", fx.dest)
    assert r.code == 1 and f"holds InsightFace at {fx.short}, not at {sha2[:7]}" in r.err, r.err
    assert "is " + sha2[:7] + " is" not in r.err and "--dest" in r.err
