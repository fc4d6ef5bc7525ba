"""Fetching less: fixture upstreams served over file:// with uploadpack.allowFilter on and off (real git): a cold
apply fetches the commit's trees and only the blobs of the directories its sets touch; a source that refuses
filters sends the whole commit, said once; widening fetches only the missing blobs; a set that touches a path
outside the sparse set fetches it first; a tampered cache is set aside; --full gives the whole tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mfnpatch.source.partial import BadPath, cone_blobs, covered, missing, normalise, patterns, set_paths


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout


def cache_objects(cache: Path) -> set[str]:
    """Every object id the cache's repository holds."""
    out = git(cache / "git", "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    return set(out.split())


def test_paths_and_what_they_hold():
    assert normalise(["src/", "src/eval", "deploy/*", "deploy/*"]) == ["deploy/*", "src"]
    assert normalise(["src/eval/*", "src"]) == ["src"] and normalise(["deploy", "deploy/*"]) == ["deploy"]
    for bad in ("../etc", "a/../../b", "a/*/b", "a\nb"):
        with pytest.raises(BadPath):
            normalise([bad])
    assert set_paths(["src/train_softmax.py", "src/eval/verification.py", "deploy/model_slim.py", "README.md"]) == [
        "deploy/*", "src/*", "src/eval/*"]  # fmt: skip
    paths = ["recognition/arcface_torch", "deploy/*"]
    assert covered("README.md", paths) and covered("recognition/arcface_torch/configs/mbf.py", paths)
    assert covered("deploy/model_slim.py", paths) and not covered("deploy/mtcnn-model/det1.params", paths)
    assert not covered("recognition/README.md", paths) and not covered("src/a.py", paths)
    assert patterns(["src", "deploy/*"]) == ["/*", "!/*/", "/src/", "/deploy/*", "!/deploy/*/"]


def test_a_cold_apply_fetches_only_the_touched_directories(cli, fx, tmp_path):
    r = cli("apply", "--commit", fx.short, "--series", "demo", "--source", str(fx.upstream), "--dest", str(fx.dest),
            "--json")  # fmt: skip
    assert r.code == 0, r.err
    f = r.json()["fetch"]
    assert "refuses" not in (f["note"] or "")
    # demo touches src/ and deploy/: models/ is neither fetched nor checked out
    assert (fx.dest / "src" / "train_softmax.py").is_file() and (fx.dest / "deploy" / "model_slim.py").is_file()
    assert not (fx.dest / "models").exists()
    import git as gitpython

    cache = Path(fx.root).parent / "cache"  # MFNPATCH_CACHE of the test (tests/conftest.py: tmp_path/cache)
    repo = gitpython.Repo(cache / "git")
    blobs = cone_blobs(repo, fx.sha, None)
    lacking = missing(repo, fx.sha)
    assert blobs["models/det1-0001.params"] in lacking
    assert not lacking & {blobs["src/train_softmax.py"], blobs["deploy/model_slim.py"], blobs["README.md"]}
    s = cli("status", "--dest", str(fx.dest), "--json").json()
    assert s["paths"] == ["deploy/*", "src/*"] and s["clean"]  # the files of the directories demo touches
    text = cli("status", "--dest", str(fx.dest)).out
    assert "files    deploy/*, src/* (and the files at the root)" in text


def test_widening_fetches_only_the_missing_blobs(cli, fx):
    assert cli("apply", "--commit", fx.short, "--series", "demo", "--source", str(fx.upstream), "--dest",
               str(fx.dest)).code == 0  # fmt: skip
    cache = Path(fx.root).parent / "cache"
    before = cache_objects(cache)
    r = cli("apply", "--commit", fx.short, "--paths", "models", "--source", str(fx.upstream), "--dest", str(fx.dest),
            "--json")  # fmt: skip
    assert r.code == 2, r.err  # the sets were applied already: nothing to do but widening
    added = cache_objects(cache) - before
    import git as gitpython

    blobs = cone_blobs(gitpython.Repo(cache / "git"), fx.sha, None)
    assert added == {blobs["models/det1-0001.params"]}  # exactly the one blob models/ lacked
    assert (fx.dest / "models" / "det1-0001.params").read_bytes() == bytes(range(256)) * 8
    assert cli("status", "--dest", str(fx.dest), "--json").json()["paths"] == ["deploy/*", "models", "src/*"]
    r = cli("apply", "--commit", fx.short, "--full", "--source", str(fx.upstream), "--dest", str(fx.dest), "--json")
    assert r.code == 2 and cli("status", "--dest", str(fx.dest), "--json").json()["paths"] is None


def test_a_set_touching_a_path_outside_the_sparse_set_fetches_it_first(cli, tmp_path, monkeypatch):
    from helpers import PatchMaker, make_upstream, write_pin, write_set

    up, sha = make_upstream(tmp_path / "up", extra_files={"tools/check.py": b"print('check')\n"})
    write_pin(tmp_path / "pins", up, sha)
    m = PatchMaker(up, sha, tmp_path / "m1")
    m.edit("src/image_iter.py", "for c in xrange(", "for c in range(")
    write_set(tmp_path / "patches", "a", 1, sha, [("0001-a.patch", m.diff("py3"))])
    m = PatchMaker(up, sha, tmp_path / "m2")
    m.edit("tools/check.py", "print('check')", "print('checked')")
    write_set(tmp_path / "patches", "b", 1, sha, [("0001-b.patch", m.diff("tools"))], opt_in=True)
    monkeypatch.setenv("MFNPATCH_PINS", str(tmp_path / "pins"))
    monkeypatch.setenv("MFNPATCH_PATCHES", str(tmp_path / "patches"))
    dest = tmp_path / "tree"
    assert cli("apply", "--commit", sha[:7], "--series", "a", "--source", str(up), "--dest", str(dest)).code == 0
    assert (dest / "src" / "image_iter.py").is_file() and not (dest / "tools").exists()
    r = cli("apply", "--commit", sha[:7], "--series", "a,b", "--source", str(up), "--dest", str(dest))
    assert r.code == 0, r.err
    assert (dest / "tools" / "check.py").read_text() == "print('checked')\n"
    assert cli("status", "--dest", str(dest), "--json").json()["paths"] == ["src/*", "tools/*"]
    assert cli("unapply", "--dest", str(dest)).code == 0
    assert (dest / "tools" / "check.py").read_text() == "print('check')\n"


def test_a_source_that_refuses_filters_sends_the_whole_commit_said_once(cli, fx):
    git(fx.upstream, "config", "uploadpack.allowFilter", "false")
    r = cli("apply", "--commit", fx.short, "--series", "demo", "--source", str(fx.upstream), "--dest", str(fx.dest))
    assert r.code == 0, r.err
    assert r.err.count("refuses partial fetches: the whole commit was fetched (depth 1)") == 1
    assert "(partial:" not in r.out
    # the tree is still sparse (its blobs all in the cache): nothing more to fetch when it is widened
    assert not (fx.dest / "models").exists()
    git(fx.upstream, "config", "uploadpack.allowFilter", "true")
    r = cli("apply", "--commit", fx.short, "--paths", "models", "--source", str(fx.upstream), "--dest", str(fx.dest),
            "--json")  # fmt: skip
    assert r.code == 2, r.err
    assert (fx.dest / "models" / "det1-0001.params").is_file()


def test_a_materialised_file_that_is_not_its_pinned_blob_is_a_corrupt_cache(cli, fx):
    """What a tampered cache object would give: a file whose content is not the blob the pin names. (The cache's
    packs tampered with, truncated or missing their HEAD: tests/source/test_hardening.py, now through this
    partial fetch.)"""
    import git as gitpython

    from mfnpatch.source.pin import CorruptCache, resolve_pin, verify_files

    assert cli("apply", "--commit", fx.short, "--series", "demo", "--source", str(fx.upstream), "--dest",
               str(fx.dest)).code == 0  # fmt: skip
    repo, pin = gitpython.Repo(fx.dest), resolve_pin(fx.short)
    verify_files(repo, pin, ["deploy/*", "src/*"], exclude=["deploy/*", "src/*"])  # nothing new to check
    (fx.dest / "README.md").write_text("tampered\n")
    with pytest.raises(CorruptCache, match="README.md: content is not blob"):
        verify_files(repo, pin, ["deploy/*", "src/*"])
