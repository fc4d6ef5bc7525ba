"""The second lineage's pin (0159b24, InsightFace's arcface_torch) against the real history: the newest commit
that touched recognition/arcface_torch, fetched and verified like 4bc8132, and of its 1,351 files only the
recipe's directory materialised (needs MFNPATCH_UPSTREAM: a clone or mirror of InsightFace)."""

from __future__ import annotations

import os
import subprocess

import pytest

from mfnpatch.source.pin import resolve_pin
from mfnpatch.source.tree import prepare_tree

UPSTREAM = os.environ.get("MFNPATCH_UPSTREAM", "")  # read before the per-test isolation hides it
pytestmark = pytest.mark.upstream


def test_the_pin_is_the_newest_commit_of_arcface_torch():
    pin = resolve_pin("0159b24")
    git_dir = UPSTREAM if os.path.isdir(os.path.join(UPSTREAM, "objects")) else os.path.join(UPSTREAM, ".git")
    argv = ["git", "--git-dir", git_dir, "log", "-1", "--format=%H", "HEAD", "--", "recognition/arcface_torch"]
    newest = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()  # on the main line
    assert pin.commit == newest and "recognition/arcface_torch" in pin.manifest.note
    mbf = [p for p in pin.manifest.files if p.startswith("recognition/arcface_torch/configs/") and "mbf" in p]
    assert {"recognition/arcface_torch/configs/ms1mv2_mbf.py", "recognition/arcface_torch/configs/ms1mv3_mbf.py",
            "recognition/arcface_torch/configs/glint360k_mbf.py"} <= set(mbf)  # fmt: skip


def test_only_arcface_torch_is_fetched_and_materialised(tmp_path, monkeypatch):
    monkeypatch.setenv("MFNPATCH_CACHE", str(tmp_path / "cache"))
    p = prepare_tree("0159b24", tmp_path / "tree", UPSTREAM, paths=["recognition/arcface_torch"], full=False)
    root = p.tree.root
    assert (root / "recognition/arcface_torch/train_v2.py").is_file()
    assert (root / "recognition/arcface_torch/backbones/mobilefacenet.py").is_file()
    assert not (root / "detection").exists() and not (root / "recognition/partial_fc").exists()
    assert p.tree.paths == ["recognition/arcface_torch"]
    files = [x for x in root.rglob("*") if x.is_file() and ".git" not in x.parts]
    assert 80 <= len(files) < 120  # arcface_torch's 80 files and the root's, not the 1,351 of the commit
