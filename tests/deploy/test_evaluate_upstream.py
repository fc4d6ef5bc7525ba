"""convert evaluate's MXNet row against the pinned src/eval/verification.py itself: the same checkpoint and the
same .bin, through load_bin and test() of the pinned code (with the py3 set), equal to 1e-5 (needs
MFNPATCH_UPSTREAM and MXNet in this interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mfnpatch.resources import data_dir
from mfnpatch.source.patchset import Catalog, select_sets
from mfnpatch.source.tree import prepare_tree
from mfnpatch.source.worktree import apply

UPSTREAM = os.environ.get("MFNPATCH_UPSTREAM", "")  # read before the per-test isolation hides it
pytestmark = [pytest.mark.upstream, pytest.mark.slow]
pytest.importorskip("mxnet")
pytest.importorskip("ncnn")

PINNED = r"""
import sys, json
sys.path.insert(0, 'eval')
import verification
import mxnet as mx
bin_path, prefix, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
data_set = verification.load_bin(bin_path, (112, 112))
sym, arg, aux = mx.model.load_checkpoint(prefix, 0)
model = mx.mod.Module(symbol=sym, context=mx.cpu(), label_names=None)
model.bind(data_shapes=[('data', (batch, 3, 112, 112))])
model.set_params(arg, aux)
acc1, std1, acc2, std2, xnorm, _ = verification.test(data_set, model, batch)
print('RESULT', json.dumps([acc2, std2, xnorm]))
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFNPATCH_CACHE", str(root / "cache"))
        prepared = prepare_tree("4bc8132", root / "insightface", UPSTREAM)
        apply(prepared.tree, select_sets(Catalog.scan(data_dir("patches")), "mfn,py3"))
    return prepared.tree.root


@pytest.mark.parametrize("seed", [0, 1])
def test_the_mxnet_row_is_what_the_pinned_verification_reports(tree, tmp_path, seed):
    import mxnet as mx
    from mfn_symbol import save_checkpoint

    from mfnpatch.datasets.synth import synth
    from mfnpatch.deploy.convert import convert_ncnn
    from mfnpatch.deploy.evaluate import evaluate

    spec = save_checkpoint(mx, str(tmp_path / "ck" / "model-y1"), 1, classes=20, seed=seed)
    convert_ncnn(spec, tmp_path / "ncnn")
    synth(tmp_path / "data", ids=6, per_id=2, pairs=60, seed=seed)
    ev = evaluate(tmp_path / "ncnn", tmp_path / "data", ["lfw", "agedb_30"], ["ncnn folded"])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MXNET_SUBGRAPH_BACKEND": "NONE"}
    for name in ("lfw", "agedb_30"):
        argv = [sys.executable, "-c", PINNED, str(tmp_path / "data" / f"{name}.bin"), str(tmp_path / "ncnn" / "mxnet"),
                "10"]  # fmt: skip
        p = subprocess.run(argv, cwd=tree / "src", env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        acc, std, xnorm = json.loads(p.stdout.split("RESULT", 1)[1])
        row = next(r for r in ev.rows if (r.set, r.engine) == (name, "mxnet"))
        assert row.accuracy == pytest.approx(acc, abs=1e-5) and row.std == pytest.approx(std, abs=1e-5)
        assert row.xnorm == pytest.approx(xnorm, rel=1e-5)
        assert 0.5 < acc < 1.0  # a real measurement, neither chance nor trivial
