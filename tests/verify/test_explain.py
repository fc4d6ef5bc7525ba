"""verify --explain: what differs from the seed's stage, most important first, and where the curve fell behind
the reference at equal samples seen — on logs whose arguments differ."""

from __future__ import annotations

import pytest
from helpers import REFERENCE

from mfnpatch.logs.parser import summarize_text
from mfnpatch.verify.explain import curve_gaps, explain, total_batch
from mfnpatch.verify.stagematch import detect_stage

ARCFACE = REFERENCE / "blog-arcface_loss_test2.log"
needs_logs = pytest.mark.skipif(not ARCFACE.is_file(), reason=f"the blog's complete logs are not at {REFERENCE}")

NS = ("Called with argument: Namespace(batch_size={bs}, ckpt=2, ctx_num={ctx}, emb_size={emb}, fc7_wd_mult={mult}, "
      "loss_type=4, lr=0.1, lr_steps='120000,160000,180000,200000', margin_m=0.5, margin_s=64.0, network='y1', "
      "per_batch_size={per}, pretrained='../models/MobileFaceNet/model-y1-softmax,60', "
      "prefix='../models/MobileFaceNet/model-y1-arcface', verbose=2000, wd=4e-05)")  # fmt: skip


def log_text(accs: dict[int, float], *, per=512, ctx=1, emb=128, mult=10.0, ids=85164) -> str:
    lines = [f"num_classes {ids}", NS.format(bs=per * ctx, ctx=ctx, emb=emb, mult=mult, per=per),
             f"id2range {ids}", "3804846"]  # fmt: skip
    for step, a in sorted(accs.items()):
        for t in ("lfw", "cfp_fp", "agedb_30"):
            lines.append(f"[{t}][{step}]Accuracy-Flip: {a:.5f}+-0.00500")
    return "\n".join(lines) + "\n"


def test_differences_are_ranked_by_how_much_they_matter():
    log = summarize_text(log_text({2000: 0.9}, per=512, ctx=2, emb=512, mult=1.0, ids=10572))
    m = detect_stage(log, recipe="may16")
    assert m.stage == "arcface"
    ex = explain(log, m.signature)
    assert [d.key for d in ex.differences] == ["data", "total_batch", "fc7_wd_mult", "emb_size"]
    assert ex.differences[1].log.startswith("1024 (batch_size 1024 = per_batch_size 512 x 2 device(s))")
    assert "issues 206, 261" in ex.differences[1].why and "5-07" in ex.differences[2].why
    assert ex.total_batch == {"log": [1024, "batch_size 1024 = per_batch_size 512 x 2 device(s)"], "seed": 512}
    # the same run on the seed's data and batch: only what it changed
    same = summarize_text(log_text({2000: 0.9}))
    assert explain(same, detect_stage(same, recipe="may16").signature).differences == []


def test_total_batch_from_the_configuration():
    assert total_batch({"batch_size": 1024, "per_batch_size": 512, "ctx_num": 2})[0] == 1024
    assert total_batch({"per_batch_size": 256, "ctx_num": 4}) == (1024, "per_batch_size 256 x 4 device(s)")
    assert total_batch({"per_batch_size": 256}) is None and total_batch(None) is None


def test_the_curve_at_equal_samples_seen():
    ref = summarize_text(log_text({2000: 0.90, 4000: 0.95, 6000: 0.96, 8000: 0.97}))
    # twice the batch: its step 2000 has seen the samples of the reference's step 4000 (0.95)
    log = summarize_text(log_text({2000: 0.95, 3000: 0.955, 4000: 0.95}, ctx=2))
    gaps, notes = curve_gaps(log, ref, 1024, 512)
    g = {x.target: x for x in gaps}["lfw"]
    assert g.points == 3 and g.first_behind_step == 3000 and g.first_behind_samples == 3000 * 1024
    assert g.first_behind_by == pytest.approx(0.955 - 0.96)  # the reference at step 6000
    assert g.largest_step == 4000 and g.largest_by == pytest.approx(0.95 - 0.97)
    assert "equal samples seen" in notes[0]
    # at equal steps (the same batch) it is never behind
    same = summarize_text(log_text({2000: 0.90, 4000: 0.95}))
    assert all(x.first_behind_step is None for x in curve_gaps(same, ref, 512, 512)[0])


@needs_logs
def test_the_blogs_arcface_run_changed_is_explained_against_the_original(tmp_path, cli):
    """The blog's ArcFace log with fc7_wd_mult 1 and emb_size 512 in its arguments, and every accuracy from step
    60000 on 0.01 lower: the explanation names both, most important first, and where the curve fell behind."""
    import re

    text = ARCFACE.read_text(encoding="utf-8", errors="replace")
    head, called, rest = text.partition("Called with argument:")
    line, nl, rest = rest.partition("\n")
    line = line.replace("fc7_wd_mult=10.0", "fc7_wd_mult=1.0").replace("emb_size=128", "emb_size=512")
    text = head + called + line + nl + rest

    def lower(m: re.Match) -> str:
        step, acc = int(m.group(2)), float(m.group(3))
        return f"[{m.group(1)}][{step}]Accuracy-Flip: {acc - 0.01 if step >= 60000 else acc:.5f}"

    text = re.sub(r"\[(\w+)\]\[(\d+)\]Accuracy-Flip: ([\d.]+)", lower, text)
    log = tmp_path / "arcface-changed.log"
    log.write_text(text)
    r = cli("verify", "--log", log, "--reference", ARCFACE, "--recipe", "may09", "--explain", "--json")
    ex = r.json()["explanation"]
    assert [d["key"] for d in ex["differences"]] == ["fc7_wd_mult", "emb_size"]
    assert ex["total_batch"] == {"log": [512, "batch_size 512 = per_batch_size 512 x 1 device(s)"], "seed": 512}
    gaps = {g["target"]: g for g in ex["gaps"]}
    assert set(gaps) == {"lfw", "cfp_fp", "agedb_30"}
    for g in gaps.values():
        assert g["first_behind_step"] == 60000 and g["first_behind_by"] == pytest.approx(-0.01, abs=1e-6)
    out = cli("verify", "--log", log, "--reference", ARCFACE, "--recipe", "may09", "--explain").out
    assert "1. fc7_wd_mult: 1.0 in the log, 10.0 in the seed's stage" in out and "2. emb_size: 512" in out
    assert "curve lfw: first behind" in out and "at step 60000" in out


def test_verify_reads_the_total_batch_and_compares_at_equal_samples(tmp_path, cli):
    ref = tmp_path / "ref.log"
    ref.write_text(log_text({2000: 0.90, 4000: 0.95, 6000: 0.96, 8000: 0.97}))
    # two devices at the seed's per-GPU batch: its step 1000 has seen what the reference's step 2000 saw
    two = tmp_path / "two.log"
    two.write_text(log_text({1000: 0.90, 2000: 0.95, 3000: 0.96, 4000: 0.97}, ctx=2))
    r = cli("verify", "--log", two, "--reference", ref, "--recipe", "may16", "--stage", "arcface", "--json")
    d = r.json()
    assert any("total batch 1024 (2 GPU(s) x 512) in the log, the seed's 512 (one GPU x 512)" in f
               for f in d["findings"])  # fmt: skip
    assert d["experiment"] == {"same_as_seed": False, "differs": [
        "total batch 1024 (2 GPU(s) x 512) in the log, the seed's 512 (one GPU x 512)"]}  # fmt: skip
    assert any("compared at equal samples seen (log step s = reference step s x 2)" in f for f in d["findings"])
    ref_checks = [c for c in d["checks"] if c["group"] == "reference" and "@" in c["id"]]
    assert ref_checks and all(c["verdict"] == "pass" for c in ref_checks)
    assert {c["step"] for c in ref_checks} == {2000, 4000, 6000, 8000}
    # one device: no finding, compared step for step
    one = tmp_path / "one.log"
    one.write_text(log_text({2000: 0.90, 4000: 0.95}))
    d = cli("verify", "--log", one, "--reference", ref, "--recipe", "may16", "--stage", "arcface", "--json").json()
    assert not any("total batch" in f for f in d["findings"])
