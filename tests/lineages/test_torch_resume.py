"""arcface_torch's resume through its lineage: the saved state read without PyTorch and without running what it
holds, and the segment that continues it (resume=True) or the reason it cannot. The checkpoints in tests/data/torch
were saved by PyTorch 2.13 as train_v2.py saves them (make_checkpoint.py)."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

from mfnpatch.lineages import get as lineage
from mfnpatch.lineages import torch_state
from mfnpatch.lineages.base import ResumeError, ResumeRequest
from mfnpatch.lineages.torch_state import read_state

DATA = Path(__file__).resolve().parents[1] / "data" / "torch"
TORCH = lineage("arcface_torch")


def argv(nproc=1, *extra):
    return ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "train_v2.py",
            "configs/ms1mv2_mbf.py", "output=work", "num_epoch=2", "batch_size=16", "num_image=336", "verbose=21",
            *extra]  # fmt: skip


def request(tmp_path, a, segment=1):
    return ResumeRequest(a, tmp_path, segment, None, {}, {}, None)


def test_the_saved_state_is_read_from_a_real_checkpoint():
    s = read_state(DATA / "epoch1.pt")
    assert (s.epoch, s.global_step) == (1, 21)
    assert (read_state(DATA / "epoch2.pt").epoch, read_state(DATA / "epoch2.pt").global_step) == (2, 42)


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch boom-was-run",))


def _zip_with(path: Path, pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("checkpoint_gpu_0/data.pkl", pkl)
    return path


def test_a_checkpoint_naming_anything_else_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = _zip_with(tmp_path / "bad.pt", pickle.dumps({"epoch": 1, "global_step": 21, "x": _Boom()}, protocol=2))
    with pytest.raises(ResumeError) as e:
        read_state(bad)
    assert "cannot be read safely" in e.value.message and "system" in e.value.message
    assert not (tmp_path / "boom-was-run").exists()


def test_a_truncated_or_foreign_file_says_what_it_is(tmp_path):
    half = tmp_path / "half.pt"
    half.write_bytes((DATA / "epoch1.pt").read_bytes()[:5000])
    with pytest.raises(ResumeError, match="not a complete PyTorch checkpoint"):
        read_state(half)
    nodict = _zip_with(tmp_path / "list.pt", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(ResumeError, match="holds no dict"):
        read_state(nodict)
    nocount = _zip_with(tmp_path / "nan.pt", pickle.dumps({"epoch": float("nan"), "global_step": 3}, protocol=2))
    with pytest.raises(ResumeError, match="not counts"):
        read_state(nocount)


def test_an_oversized_structure_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(torch_state, "MAX_PICKLE", 100)
    with pytest.raises(ResumeError, match="over 100 bytes"):
        read_state(DATA / "epoch1.pt")


def test_a_stage_that_saved_no_state_cannot_be_resumed_and_says_how_to_make_it(tmp_path):
    with pytest.raises(ResumeError) as e:
        TORCH.resume(request(tmp_path, argv()))
    assert "save_all_states=True" in e.value.message and "save_states" in (e.value.hint or "")


def test_interrupted_in_its_first_epoch_it_runs_from_the_start(tmp_path):
    assert TORCH.resume(request(tmp_path, argv(1, "save_all_states=True"))) is None


def test_the_segment_continues_from_the_saved_epoch(tmp_path):
    (tmp_path / "work").mkdir()
    shutil.copy(DATA / "epoch1.pt", tmp_path / "work" / "checkpoint_gpu_0.pt")
    a = argv(1, "save_all_states=True")
    r = TORCH.resume(request(tmp_path, a))
    assert r is not None and (r.from_save, r.from_step, r.steps) == (1, 21, "stage")
    assert r.argv == [*a, "resume=True"] and r.files == [tmp_path / "work" / "checkpoint_gpu_0.pt"]
    assert r.lr == pytest.approx(0.05)  # polynomial decay over 42 steps, at step 21
    assert "continues at epoch 2 of 2" in r.summary and "the state saved after epoch 1" in r.describe()
    assert any("seeds its random generators anew" in d for d in r.differences)
    r2 = TORCH.resume(request(tmp_path, r.argv, segment=2))  # a second resume sets resume=True once
    assert r2 is not None and r2.argv.count("resume=True") == 1


def test_every_process_must_have_saved_the_same_epoch(tmp_path):
    (tmp_path / "work").mkdir()
    shutil.copy(DATA / "epoch1.pt", tmp_path / "work" / "checkpoint_gpu_0.pt")
    a = argv(2, "save_all_states=True")
    with pytest.raises(ResumeError, match="checkpoint_gpu_1.pt is missing"):
        TORCH.resume(request(tmp_path, a))
    shutil.copy(DATA / "epoch2.pt", tmp_path / "work" / "checkpoint_gpu_1.pt")
    with pytest.raises(ResumeError, match="saved different epochs") as e:
        TORCH.resume(request(tmp_path, a))
    assert "checkpoint_gpu_0.pt: epoch 1, step 21; checkpoint_gpu_1.pt: epoch 2, step 42" in e.value.message


def test_state_files_are_what_the_run_records(tmp_path):
    assert TORCH.state_files(argv(2), tmp_path) == []  # saves none
    assert TORCH.state_files(argv(2, "save_all_states=True"), tmp_path) == [
        tmp_path / "work" / f"checkpoint_gpu_{r}.pt" for r in (0, 1)
    ]
