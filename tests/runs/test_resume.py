"""Mid-stage resume: the continued command, and segments merged back into stage steps and saves."""

from __future__ import annotations

import pytest

from mfnpatch.checkpoint import Checkpoint, StopPoint
from mfnpatch.lineages import get as lineage
from mfnpatch.lineages.base import ResumeError, ResumeRequest
from mfnpatch.lineages.insightface_mxnet import get_opt, set_opt
from mfnpatch.lineages.mxnet_resume import NEVER, lr_at
from mfnpatch.logs.parser import summarize_text
from mfnpatch.runs.resume import Segment, merge

SEED_ARCFACE = (
    "python -u train_softmax.py --network y1 --ckpt 2 --loss-type 4 --lr-steps 120000,160000,180000,200000 "
    "--wd 0.00004 --fc7-wd-mult 10 --emb-size 128 --per-batch-size 512 --data-dir ../datasets/faces_ms1m_112x112 "
    "--pretrained ../models/MobileFaceNet/model-y1-softmax,60 --prefix ../models/MobileFaceNet/model-y1-arcface"
).split()


def fake_log(lr=0.1, lr_steps="120000,160000,180000,200000", saves=((1, 2000),), loss_type=4, prefix="p", extra=""):
    ns = (
        f"Namespace(ckpt=2, loss_type={loss_type}, lr={lr}, lr_steps='{lr_steps}', beta_freeze=0, verbose=2000, "
        f"prefix='{prefix}'{extra})"
    )
    lines = ["Called with argument: " + ns, "lr_steps [" + ", ".join(lr_steps.split(",")) + "]"]
    for n, step in saves:
        lines += [
            f"[lfw][{step}]Accuracy-Flip: 0.99000+-0.00500",
            f"saving {n}",
            f'INFO:root:Saved checkpoint to "{prefix}-{n:04d}.params"',
        ]
    return summarize_text("\n".join(lines) + "\n")


def plan_resume(argv, s, segments, stop, usable, cwd):
    """The MXNet lineage's resume, with the checkpoints in ``usable`` on disk under ``cwd`` (their files as the
    log names them)."""
    for n in usable:
        c = s.checkpoints[n]
        for f in Checkpoint.from_params(c["path"]).files(cwd):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"x")
    req = ResumeRequest(argv, cwd, segments + 1, stop, s.checkpoints, s.config or {}, s.lr_steps)
    return lineage("insightface_mxnet").resume(req)


def test_lr_in_force_follows_the_pinned_schedule():
    steps = [120000, 160000, 180000, 200000]
    assert lr_at(0.1, steps, 119999) == 0.1
    assert lr_at(0.1, steps, 120000) == pytest.approx(0.01)  # changed at the end of batch 120000
    assert lr_at(0.1, steps, 170000) == pytest.approx(0.001)
    assert lr_at(0.1, steps, 250000) == pytest.approx(1e-5)
    assert lr_at(0.1, [100], 150, beta_freeze=100) == 0.1  # the code compares against beta_freeze + step


def test_argv_editing_replaces_or_appends():
    argv = ["x", "--prefix", "a", "--lr=0.1"]
    assert get_opt(argv, "--prefix") == "a" and get_opt(argv, "--lr") == "0.1" and get_opt(argv, "--no") is None
    assert set_opt(argv, "--prefix", "b") == ["x", "--prefix", "b", "--lr=0.1"]
    assert set_opt(argv, "--lr", "0.01") == ["x", "--prefix", "a", "--lr=0.01"]
    assert set_opt(argv, "--pretrained", "p,3") == argv + ["--pretrained", "p,3"]


def test_seed_arcface_preempted_at_step_130000(tmp_path):
    """ArcFace saved checkpoint 65 (step 130000) and was preempted: the segment loads it, writes to a new
    prefix, runs at lr 0.01 with the remaining lr steps shifted by 130000, and stops at its checkpoint 35
    (= the stage's 100)."""
    prefix = "../models/MobileFaceNet/model-y1-arcface"
    cwd = tmp_path / "src"
    s = fake_log(saves=[(n, n * 2000) for n in range(1, 66)], prefix=prefix)
    p = plan_resume(SEED_ARCFACE, s, 0, StopPoint(kind="checkpoint", value=100), list(range(1, 66)), cwd)
    assert (p.segment, p.from_save, p.from_step) == (1, 65, 130000)
    assert p.pretrained == f"{prefix},65" and p.prefix == f"{prefix}-r1"
    assert p.lr == pytest.approx(0.01) and p.lr_steps == [30000, 50000, 70000]
    assert (p.stop.kind, p.stop.value) == ("checkpoint", 35)
    assert get_opt(p.argv, "--pretrained") == f"{prefix},65"  # replaced the softmax,60 of segment 0
    assert get_opt(p.argv, "--lr-steps") == "30000,50000,70000" and get_opt(p.argv, "--lr") == "0.01"
    assert p.argv[: p.argv.index("--lr-steps")] == SEED_ARCFACE[: SEED_ARCFACE.index("--lr-steps")]
    # a second resume continues from what the first segment saved, under its prefix and numbering
    seg1 = fake_log(lr=0.01, lr_steps="30000,50000,70000", saves=[(1, 2000), (2, 4000)], prefix=f"{prefix}-r1")
    merged = merge([(s, Segment(0, "a.log")), (seg1, Segment(1, "a.r1.log", f"{prefix}-r1", 130000, 65))])
    assert merged.checkpoints[67]["step"] == 134000 and merged.checkpoints[67]["segment"] == 1
    p2 = plan_resume(SEED_ARCFACE, merged, 1, StopPoint(kind="checkpoint", value=100), list(range(66, 68)), cwd)
    assert p2.pretrained == f"{prefix}-r1,2" and p2.prefix == f"{prefix}-r2"
    assert (
        p2.lr == pytest.approx(0.01)
        and p2.lr_steps == [26000, 46000, 66000]
        and (p2.stop.kind, p2.stop.value) == ("checkpoint", 33)
    )


def test_a_finished_schedule_keeps_its_last_rate_and_max_steps_shift(tmp_path):
    argv = ["python", "train_softmax.py", "--lr-steps", "10,20", "--prefix", "m", "--max-steps", "100"]
    s = fake_log(lr=0.1, lr_steps="10,20", saves=[(3, 30)], prefix="m")
    p = plan_resume(argv, s, 0, None, [3], tmp_path)
    assert p.lr_steps == [NEVER] and p.lr == pytest.approx(0.001) and "every lr step was passed" in p.notes[0]
    assert get_opt(p.argv, "--max-steps") == "70" and p.stop is None


def test_what_cannot_be_resumed_says_why(tmp_path):
    argv = ["python", "train_softmax.py", "--prefix", "m"]
    with pytest.raises(ResumeError, match="SphereFace"):
        plan_resume(argv, fake_log(loss_type=1, prefix="m"), 0, None, [1], tmp_path)
    assert plan_resume(argv, fake_log(prefix="m2"), 0, None, [], tmp_path) is None  # nothing on disk: from the start
    no_cfg = summarize_text(
        '[lfw][10]Accuracy-Flip: 0.50000+-0.01000\nsaving 1\nINFO:root:Saved checkpoint to "m-0001.params"\n'
    )
    with pytest.raises(ResumeError, match="no 'Called with argument' line"):
        plan_resume(argv, no_cfg, 0, None, [1], tmp_path)


def test_merge_maps_steps_saves_and_curves():
    a = summarize_text(
        "Called with argument: Namespace(lr=0.1, lr_steps='20,25', verbose=10)\nlr_steps [20, 25]\n"
        '[lfw][10]Accuracy-Flip: 0.50000+-0.01000\nsaving 1\nINFO:root:Saved checkpoint to "m-0001.params"\n'
    )
    b = summarize_text(
        "Called with argument: Namespace(lr=0.1, lr_steps='10,15', verbose=10)\nlr_steps [10, 15]\n"
        "lr change to 0.01\n[lfw][10]Accuracy-Flip: 0.70000+-0.01000\nsaving 1\n"
        'INFO:root:Saved checkpoint to "m-r1-0001.params"\n'
    )
    m = merge([(a, Segment(0, "s.log")), (b, Segment(1, "s.r1.log", "m-r1", 10, 1))])
    assert m.verifications["lfw"] == {10: (0.5, 0.01, None), 20: (0.7, 0.01, None)}
    assert {n: (c["step"], c["segment"]) for n, c in m.checkpoints.items()} == {1: (10, 0), 2: (20, 1)}
    assert m.config["lr_steps"] == "20,25" and m.lr_steps == [20, 25]  # the stage's own schedule
    assert m.last_step == 20 and m.targets()["lfw"].rounds == 2
