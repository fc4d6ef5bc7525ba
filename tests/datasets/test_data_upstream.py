"""`data build` output read by the pinned code itself: a few steps of train_softmax.py on it, and its
verification.py loading the built .bin (needs MFNPATCH_UPSTREAM and MXNet in this interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import face_jpeg

from mfnpatch.datasets.build import build
from mfnpatch.datasets.check import check_dataset
from mfnpatch.resources import data_dir
from mfnpatch.source.patchset import Catalog, select_sets
from mfnpatch.source.tree import prepare_tree
from mfnpatch.source.worktree import apply

UPSTREAM = os.environ.get("MFNPATCH_UPSTREAM", "")  # read before the per-test isolation hides it
pytestmark = [pytest.mark.upstream, pytest.mark.slow]
pytest.importorskip("mxnet")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFNPATCH_CACHE", str(root / "cache"))
        prepared = prepare_tree("4bc8132", root / "insightface", UPSTREAM)
        apply(prepared.tree, select_sets(Catalog.scan(data_dir("patches")), "mfn,py3"))
    faces = root / "faces"
    for i in range(4):
        (faces / f"person{i}").mkdir(parents=True)
        for j in range(20):
            (faces / f"person{i}" / f"{j:03d}.jpg").write_bytes(face_jpeg(100 * i + j))
    build(faces, root / "ds", pairs_per_set=20, targets=["lfw"])
    assert check_dataset(root / "ds", ["lfw"]).ok
    return prepared.tree.root, root / "ds"


def _env() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MXNET_SUBGRAPH_BACKEND": "NONE"}


def test_the_pinned_trainer_trains_on_a_built_dataset(built, tmp_path):
    tree, ds = built
    argv = [sys.executable, "-u", "train_softmax.py", "--network", "y1", "--ckpt", "2", "--loss-type", "0",
            "--per-batch-size", "4", "--emb-size", "128", "--data-dir", str(ds), "--prefix", str(tmp_path / "model"),
            "--verbose", "2", "--max-steps", "4", "--target", "lfw"]  # fmt: skip
    p = subprocess.run(argv, cwd=tree / "src", env=_env(), capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "header0 label [41. 45.]" in out and "id2range 4" in out  # 40 training images, 4 identities
    assert "num_classes 4" in out
    assert "[lfw][2]Accuracy-Flip:" in out and "[lfw][4]Accuracy-Flip:" in out
    assert (tmp_path / "model-0001.params").is_file()


def test_the_pinned_verification_loads_a_built_bin(built):
    tree, ds = built
    code = (
        "import sys; sys.path.insert(0, 'eval'); import verification\n"
        f"data_list, issame = verification.load_bin({str(ds / 'lfw.bin')!r}, (112, 112))\n"
        "print('shape', tuple(data_list[0].shape), 'pairs', len(issame), 'same', sum(issame))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=tree / "src", env=_env(), capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "shape (40, 3, 112, 112) pairs 20 same 10" in p.stdout
