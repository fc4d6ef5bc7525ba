"""The PyTorch lineage's patch sets at 0159b24 against the real history (needs MFNPATCH_UPSTREAM): mbf and the
opt-in torch-cpu apply cleanly, touch only recognition/arcface_torch, leave the GPU computation alone, and
(slow, with the torch-cpu environment) make train_v2.py train mbf on the CPU for real, its log read by the one
parser, and torch2onnx export a model that onnxruntime runs as PyTorch does."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from unidiff import PatchSet

from mfnpatch.logs.parser import summarize
from mfnpatch.resources import data_dir
from mfnpatch.source.patchset import load_set

UPSTREAM = os.environ.get("MFNPATCH_UPSTREAM", "")  # read before the per-test isolation hides it
pytestmark = pytest.mark.upstream
ROOT = Path(__file__).resolve().parents[2]


def apply(cli, dest: Path, series: str):
    """As the mbf recipe does: the sets' own directories, and the whole of arcface_torch (backbones, configs)."""
    return cli("apply", "--commit", "0159b24", "--series", series, "--source", UPSTREAM, "-d", dest,
               "--paths", "recognition/arcface_torch")  # fmt: skip


def test_mbf_and_torch_cpu_apply_to_the_pin(cli, tmp_path):
    dest = tmp_path / "tree"
    r = apply(cli, dest, "mbf,torch-cpu")
    assert r.code == 0, r.err
    assert "applied mbf@1, torch-cpu@1 at 0159b24: 6 file(s) changed" in r.out
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == [
        "CODE_OF_CONDUCT.md", "README.md", "recognition", "requirements.txt"]  # fmt: skip
    assert [p.name for p in (dest / "recognition").iterdir()] == ["arcface_torch"]
    again = apply(cli, dest, "mbf,torch-cpu")
    assert again.code == 2  # already so
    st = cli("status", "--dest", dest, "--json").json()
    assert st["applied"] and not st["drift"] and st["sets"] == ["mbf@1", "torch-cpu@1"]


def test_mbf_alone_applies_and_changes_nothing_a_gpu_run_computes():
    """The set every torch run applies: no line it removes or adds touches the device, the precision, the
    loss, the optimizer or the network (the CPU changes are the opt-in torch-cpu set's)."""
    s = load_set(data_dir("patches") / "mbf" / "1")
    for p in s.patches:
        text = p.text
        for field in ("Description:", "Origin:", "Applies-To: 0159b24d44cbc91abbd07b7a6fab0ba923a7fddf",
                      "Forwarded:", "Last-Update:"):  # fmt: skip
            assert field in text, (p.name, field)
        for f in PatchSet(text):
            assert f.path.startswith("recognition/arcface_torch/")
            changed = [ln.value for h in f for ln in h if ln.is_added or ln.is_removed]
            for word in (".cuda", "nccl", "fp16", "amp", "margin", "lr=", "momentum", "get_model", "backward"):
                assert not any(word in c for c in changed), (p.name, word)


def test_torch_cpu_is_opt_in_after_mbf():
    s = load_set(data_dir("patches") / "torch-cpu" / "1")
    assert s.manifest.opt_in and s.manifest.after == ["mbf"]


# --------------------------------------------------------------------------------------------
# For real, on the CPU


@pytest.mark.slow
def test_patched_arcface_torch_trains_mbf_on_the_cpu_and_exports_onnx(cli, tmp_path, torch_cpu_prefix):
    dest = tmp_path / "tree"
    assert apply(cli, dest, "mbf,torch-cpu").code == 0
    data = tmp_path / "data"
    assert cli("data", "synth", "-o", data, "--ids", "21", "--per-id", "16", "--pairs", "100").code == 0
    at = dest / "recognition/arcface_torch"
    out = tmp_path / "work"
    py = str(torch_cpu_prefix / "bin/python")
    argv = [py, "train_v2.py", "configs/ms1mv2_mbf.py", f"rec={data}", "num_classes=21", "num_image=336",
            "batch_size=16", "num_epoch=1", "fp16=False", "verbose=21", "frequent=5", f"output={out}",
            "num_workers=0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run(argv, cwd=at, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    s = summarize(out / "training.log")
    assert s.lineage == "arcface_torch" and s.config["batch_size"] == 16 and s.config["emb_size"] == 512
    assert {t for t, steps in s.verifications.items() if 21 in steps} == {"lfw", "cfp_fp", "agedb_30"}
    assert [st for st, _ in s.loss_curve] == [10, 15, 20] and all(np.isfinite(v) for _, v in s.loss_curve)
    # the config's typo-proof overrides: an unknown key stops before anything trains
    bad = subprocess.run([*argv[:3], "nosuch=1"], cwd=at, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "override 'nosuch=1'" in bad.stderr
    # torch2onnx (the TorchScript exporter, patched), then onnxruntime here against PyTorch there
    onnx_path = out / "model.onnx"
    r = subprocess.run([py, "torch2onnx.py", str(out / "model.pt"), "--network", "mbf", "--output", str(onnx_path)],
                       cwd=at, capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (f"import sys, json, numpy as np, torch; sys.path.insert(0, {str(at)!r}); from backbones import get_model; "
            f"net = get_model('mbf', dropout=0.0, fp16=False, num_features=512); "
            f"net.load_state_dict(torch.load({str(out / 'model.pt')!r})); net.eval(); "
            f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})); "
            f"print(json.dumps(net(x).detach().numpy().tolist()))")  # fmt: skip
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    want = np.array(json.loads(r.stdout.strip().splitlines()[-1]), dtype=np.float32)
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(onnx_path))
    # torch2onnx traces one image: its graph reshapes to a batch of 1 (its batch dim is only named 'None')
    got = np.concatenate([sess.run(None, {"data": x[i : i + 1]})[0] for i in range(len(x))])
    cos = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert got.shape == (2, 512) and cos.min() > 0.9999
