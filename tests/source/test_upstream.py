"""The bundled patch sets on the real InsightFace at 4bc8132 (needs MFNPATCH_UPSTREAM: a clone or mirror).

Skipped with that reason when MFNPATCH_UPSTREAM is unset.
"""

from __future__ import annotations

import ast
import os
import py_compile
import re
import warnings
from pathlib import Path

import pytest
from helpers import git, snapshot

from mfnpatch.fsutil import git_blob_id
from mfnpatch.resources import data_dir
from mfnpatch.source.patchset import Catalog, select_sets
from mfnpatch.source.pin import resolve_pin
from mfnpatch.source.tree import prepare_tree
from mfnpatch.source.worktree import apply, status, unapply

pytestmark = pytest.mark.upstream

PIN = "4bc8132"
# Every file train_softmax.py imports on the y1 path, and the slim step.
RECIPE_FILES = [
    "src/train_softmax.py",
    "src/image_iter.py",
    "src/common/face_image.py",
    "src/common/face_preprocess.py",
    "src/eval/verification.py",
    *[
        f"src/symbols/{n}.py"
        for n in (
            "fresnet",
            "finception_resnet_v2",
            "fmobilenet",
            "fmobilenetv2",
            "fmobilefacenet",
            "fxception",
            "fdensenet",
            "fdpn",
            "fnasnet",
            "spherenet",
            "symbol_utils",
        )
    ],
    "deploy/model_slim.py",
]


def upstream() -> str:
    return os.environ["MFNPATCH_REAL_UPSTREAM"]


def patched(tmp_path: Path, series: str):
    prepared = prepare_tree(PIN, tmp_path / "insightface", upstream())
    outcome = apply(prepared.tree, select_sets(Catalog.scan(data_dir("patches")), series))
    return prepared.tree, outcome


def lines_of(tree, rel="src/train_softmax.py") -> list[str]:
    return (tree.root / rel).read_text().split("\n")


def fc7_wd_mult_default(path: Path) -> float:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            if node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--fc7-wd-mult":
                return next(ast.literal_eval(k.value) for k in node.keywords if k.arg == "default")
    raise AssertionError("--fc7-wd-mult not found")


def test_pinned_lines_before_patching(tmp_path):
    tree = prepare_tree(PIN, tmp_path / "insightface", upstream()).tree
    ls = lines_of(tree)
    assert len(ls) - 1 == 486
    assert ls[178] == "  if args.loss_type==0: #softmax"
    assert ls[179] == "    _bias = mx.symbol.Variable('fc7_bias', lr_mult=2.0, wd_mult=0.0)"
    assert "bias = _bias" in ls[180]
    assert ls[362] == "    if args.network[0]=='r' or args.network[0]=='y':"
    assert fc7_wd_mult_default(tree.root / "src/train_softmax.py") == 1.0


def test_mfn(tmp_path):
    tree, o = patched(tmp_path, "mfn")
    assert o.action == "applied" and o.changed == ["src/train_softmax.py"] and not o.moved
    ls = lines_of(tree)
    # pinned lines 179-181: the softmax branch, fc7 without bias (the seed's lines, token for token)
    assert ls[178:182] == [
        "  if args.loss_type==0: #softmax",
        "    #_bias = mx.symbol.Variable('fc7_bias', lr_mult=2.0, wd_mult=0.0)",
        "    # fc7 = mx.sym.FullyConnected(data=embedding, weight = _weight, bias = _bias, "
        "num_hidden=args.num_classes, name='fc7')",
        "    fc7 = mx.sym.FullyConnected(data=embedding, weight = _weight, no_bias=True, "
        "num_hidden=args.num_classes, name='fc7')",
    ]
    # pinned line 363 (one line later now): y1 falls through to the uniform initializer
    assert ls[363] == "    if args.network[0]=='r':"
    assert "rnd_type='uniform'" in ls[368]
    assert fc7_wd_mult_default(tree.root / "src/train_softmax.py") == 10.0
    assert not any(re.search(r"fc7_bias'", ln) and not ln.lstrip().startswith("#") for ln in ls)


def test_engine_agrees_with_git_apply(tmp_path):
    """Our result is byte for byte what `git apply` makes of the same series."""
    tree, _ = patched(tmp_path, "mfn,py3")
    ref = tmp_path / "ref"
    git(tmp_path, "clone", "-q", "--no-checkout", str(tree.root), str(ref))
    git(ref, "checkout", "-q", "--detach", resolve_pin(PIN).commit)
    for s in select_sets(Catalog.scan(data_dir("patches")), "mfn,py3"):
        for p in s.patches:
            git(ref, "apply", "--whitespace=nowarn", str(s.directory / p.name))
    ours = {k: v for k, v in snapshot(tree.root).items() if not k.startswith(".mfnpatch")}
    assert ours == snapshot(ref)


def test_mfn_py3_compiles_and_has_no_python2_left(tmp_path):
    tree, o = patched(tmp_path, "mfn,py3")
    assert o.sets == ["mfn@1", "py3@1"] and not o.moved
    warnings.simplefilter("ignore", SyntaxWarning)  # fdpn.py's `is 'proj'` is a warning, not an error
    for rel in RECIPE_FILES:
        py_compile.compile(str(tree.root / rel), cfile=str(tmp_path / "c.pyc"), doraise=True)
    for rel in (
        "src/train_softmax.py",
        "src/image_iter.py",
        "src/eval/verification.py",
        "src/common/face_preprocess.py",
    ):
        code = [ln for ln in (tree.root / rel).read_text().split("\n") if not ln.lstrip().startswith("#")]
        assert not any("xrange(" in ln for ln in code), rel
    assert ".iteritems()" not in (tree.root / "deploy/model_slim.py").read_text()
    ver = (tree.root / "src/eval/verification.py").read_text()
    assert "encoding='bytes'" in ver and "kind='slinear'" not in ver
    train = (tree.root / "src/train_softmax.py").read_text()
    assert "os.environ.get('CUDA_VISIBLE_DEVICES', '')" in train
    assert "self.imgidx = list(range(1, int(header.label[0])))" in (tree.root / "src/image_iter.py").read_text()


def test_py3_alone_reports_offsets(tmp_path):
    _, o = patched(tmp_path, "py3")
    moved = {(h.patch, h.offset) for h in o.moved}
    assert moved == {("py3@1/0001-xrange.patch", -1), ("py3@1/0005-cuda-visible-devices-unset.patch", -1)}


def test_unapply_is_byte_exact(tmp_path):
    tree, _ = patched(tmp_path, "mfn,py3")
    unapply(tree)
    pin = resolve_pin(PIN)
    for rel, entry in pin.manifest.files.items():
        assert git_blob_id((tree.root / rel).read_bytes()) == entry.blob, rel
    assert git(tree.root, "status", "--porcelain") == ""
    assert status(tree).state is None


@pytest.mark.slow
def test_a_plain_apply_gives_a_tree_the_seeds_softmax_command_runs_in(tmp_path, cli):
    """The mission's first command with nothing else: `apply --commit 4bc8132` (the py3 set, to run here) holds all
    of src/ and deploy/'s files, says so, and the seed's own softmax command (CPU, a small synthetic dataset) starts
    training in it: it imports face_image (src/common) and fmobilefacenet (src/symbols) and ends its first epoch."""
    import signal
    import subprocess
    import sys
    import time

    from mfnpatch.datasets.synth import synth

    dest = tmp_path / "insightface"
    r = cli("apply", "--commit", PIN, "--series", "mfn,py3", "--source", upstream(), "--dest", dest)
    assert r.code == 0, r.err
    assert "tree holds: deploy/*, src and the files at the root" in r.out
    for rel in ("src/common/face_image.py", "src/symbols/fmobilefacenet.py", "src/eval/verification.py",
                "deploy/model_slim.py"):  # fmt: skip
        assert (dest / rel).is_file(), rel
    assert not (dest / "deploy" / "mtcnn-model").exists()  # deploy/'s own files only
    synth(tmp_path / "data", ids=4, per_id=4, pairs=20)
    argv = [sys.executable, "-u", "train_softmax.py", "--network", "y1", "--ckpt", "2", "--loss-type", "0",
            "--lr-steps", "30,35", "--wd", "0.00004", "--fc7-wd-mult", "10", "--per-batch-size", "4",
            "--emb-size", "128", "--data-dir", str(tmp_path / "data"), "--prefix", str(tmp_path / "m" / "model"),
            "--verbose", "1000"]  # fmt: skip
    (tmp_path / "m").mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(argv, cwd=dest / "src", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)  # fmt: skip
    seen, deadline = [], time.time() + 600
    try:
        assert p.stdout is not None
        for line in p.stdout:
            seen.append(line)
            if "Train-acc=" in line or time.time() > deadline:
                break
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    text = "".join(seen)
    assert "INFO:root:Epoch[0] Train-acc=" in text, text[-2000:]
    assert "ModuleNotFoundError" not in text and "ImportError" not in text
