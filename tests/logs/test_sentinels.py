"""Sentinels on logs built from the pinned code's real line formats — each one fired where it should and not a
line earlier — and none on the seed's complete logs (no false alarm on the real runs)."""

from __future__ import annotations

import pytest
from helpers import REFERENCE
from pydantic import ValidationError

from mfnpatch.logs.parser import LogParser
from mfnpatch.logs.sentinels import LrPlan, Sentinels, Watch, all_off

HEAD = [
    "num_classes 85164",
    "Called with argument: Namespace(batch_size=512, beta_freeze=0, ckpt=2, loss_type=0, lr=0.1, "
    "lr_steps='120000,140000', per_batch_size=512, verbose=2000, wd=4e-05)",
    "header0 label [3804847. 3890011.]",
    "id2range 85164",
    "3804846",
    "lr_steps [120000, 140000]",
]


def speed(batch: int, sps: float = 533.5, acc: str = "0.000195") -> str:
    return f"INFO:root:Epoch[0] Batch [{batch}]\tSpeed: {sps:.2f} samples/sec\tacc={acc}"


def ver(step: int, accs: dict[str, str]) -> list[str]:
    out = []
    for t, a in accs.items():
        out += ["testing verification..", "(12000, 128)", "infer time 20.5", f"[{t}][{step}]XNorm: 11.2",
                f"[{t}][{step}]Accuracy-Flip: {a}+-0.01000"]  # fmt: skip
    return out


def run(lines: list[str], watch: Watch | None = None):
    """Feed a log line by line, as a live run arrives: the trip and the line it fired on."""
    watch = watch or Watch(Sentinels(), LrPlan(0.1, [120000, 140000]))
    p = LogParser(events=True)
    for i, ln in enumerate(lines):
        trip = watch.feed_all(p.feed(ln + "\n"))
        if trip is not None:
            return trip, i
    return None, None


def test_chance_fires_when_the_second_round_completes_at_chance():
    lines = HEAD + ver(2000, {"lfw": "0.50000", "cfp_fp": "0.50100", "agedb_30": "0.49900"})
    lines += ver(4000, {"lfw": "0.50167", "cfp_fp": "0.50000", "agedb_30": "0.54900"})
    trip, at = run(lines)
    assert trip is not None and trip.sentinel == "chance" and trip.step == 4000
    assert at == len(lines) - 1  # the last target of round 2, not before
    assert "round 2" in trip.why and "lfw 0.50167" in trip.why and "data check" in trip.hint
    # one target above chance: the run is learning something
    lines[-1] = lines[-1].replace("0.54900", "0.56000")
    assert run(lines) == (None, None)
    # after_rounds: 3 waits a round more
    w = Watch(Sentinels().merged({"chance": {"after_rounds": 3}}))
    assert run(HEAD + ver(2000, {"lfw": "0.5"}) + ver(4000, {"lfw": "0.5"}), w) == (None, None)


def test_train_acc_fires_after_n_lines_at_chance_and_not_once_it_moves():
    zeros = [speed(20 * (i + 1), acc="0.000000") for i in range(100)]
    trip, at = run(HEAD + zeros)
    assert trip.sentinel == "train_acc" and at == len(HEAD) + 99 and "chance (1/85164" in trip.why
    # 1/85164 = 1.2e-5: a batch window with one right answer is above it
    zeros[50] = speed(1020, acc="0.000098")
    assert run(HEAD + zeros) == (None, None)
    w = Watch(Sentinels().merged({"train_acc": {"after_lines": 10}}))
    trip, at = run(HEAD + zeros[:20], w)
    assert trip.sentinel == "train_acc" and at == len(HEAD) + 9


@pytest.mark.parametrize(
    "line,what",
    [
        (speed(40, acc="nan"), "training acc is nan"),
        ("[lfw][2000]Accuracy-Flip: nan+-nan", "nan is not in [0, 1]"),
        ("lr-batch-epoch: inf 999 0", "lr inf"),
    ],
)
def test_nonfinite_fires_on_the_line(line, what):
    lines = [*HEAD, speed(20), line, speed(60)]
    trip, at = run(lines)
    assert trip.sentinel == "nonfinite" and at == len(HEAD) + 1 and what in trip.why
    w = Watch(Sentinels().merged({"nonfinite": "off"}), LrPlan(0.1, [120000, 140000]))
    assert run(lines, w)[0] is None or run(lines, w)[0].sentinel != "nonfinite"


def test_lr_fires_when_the_log_leaves_the_plans_schedule():
    ok = ["lr-batch-epoch: 0.1 999 0", "lr-batch-epoch: 0.1 1999 0"]
    assert run(HEAD + ok) == (None, None)
    trip, at = run([*HEAD, *ok, "lr-batch-epoch: 0.01 2999 0"])
    assert trip.sentinel == "lr" and trip.step == 3000 and "plan schedules 0.1" in trip.why
    # after an lr step, Python 3's float is the plan's 0.01
    plan = LrPlan(0.1, [2000])
    lines = [*HEAD, "lr-batch-epoch: 0.1 999 0", "lr-batch-epoch: 0.010000000000000002 1999 0"]
    assert run(lines, Watch(Sentinels(), plan)) == (None, None)
    # a plan that leaves the schedule to the code takes it from the code's 'lr_steps [...]' line
    trip, _ = run([*HEAD, "lr-batch-epoch: 0.1 999 0", "lr-batch-epoch: 0.001 1999 0"], Watch(Sentinels(),
                  LrPlan(0.1, None)))  # fmt: skip
    assert trip.sentinel == "lr"
    assert run([*HEAD, "lr-batch-epoch: 0.01 2999 0"], Watch(Sentinels(), None)) == (None, None)  # no plan


def test_stall_needs_several_slow_lines_in_a_row():
    base = [speed(20 * (i + 1), 530.0 + i) for i in range(6)]
    dip = [speed(140, 120.0)]  # a verification round inside the window: one line, as in the seed's logs
    fine = [speed(160 + 20 * i, 531.0) for i in range(3)]
    assert run(HEAD + base + dip + fine + dip + dip + fine) == (None, None)
    slow = [speed(300 + 20 * i, 200.0) for i in range(3)]
    trip, at = run(HEAD + base + fine + slow)
    assert trip.sentinel == "stall" and at == len(HEAD) + 6 + 3 + 2 and "below 0.5" in trip.why
    assert "data" in trip.hint


def test_settings_merge_and_refuse_unknown_keys():
    s = Sentinels().merged({"stall": {"below": 0.3}, "lr": "off"})
    assert s.stall != "off" and s.stall.below == 0.3 and s.stall.lines == 3 and s.lr == "off"
    assert s.active() == ["chance", "train_acc", "nonfinite", "stall"]
    assert all_off().active() == []
    with pytest.raises(ValidationError, match="below"):
        Sentinels().merged({"stall": {"below": 2}})
    with pytest.raises(ValidationError, match="lower"):
        Sentinels().merged({"stall": {"lower": 0.3}})
    with pytest.raises(ValueError, match="write off"):
        Sentinels().merged({"chance": "of"})
    # YAML 1.1 reads a bare off as false
    assert Sentinels().merged({"chance": False}).chance == "off"


@pytest.mark.skipif(not (REFERENCE / "blog-softmax_loss_test2.log").is_file(), reason="needs ../shared/reference")
@pytest.mark.parametrize(
    "name,plan",
    [
        ("blog-softmax_loss_test2.log", [800000, 1200000]),
        ("blog-arcface_loss_test2.log", [80000, 120000, 140000, 160000]),
    ],  # fmt: skip
)
def test_the_seeds_complete_logs_raise_no_alarm(name, plan):
    lines = (REFERENCE / name).read_text(encoding="utf-8", errors="replace").splitlines()
    for lr_plan in (LrPlan(0.1, plan), LrPlan(0.1, None)):
        watch = Watch(Sentinels(), lr_plan)
        assert run(lines, watch) == (None, None)
        assert watch.rounds and min(watch.rounds.values()) >= 10 and watch.acc_lines >= 1
    # and each sentinel had something to watch: a seed log has every kind of line they read
    s = "\n".join(lines)
    assert "lr-batch-epoch" in s and "Speed:" in s and "Accuracy-Flip" in s


@pytest.mark.parametrize("cut", ["lines", "one burst", "odd pieces", "bytes"])
def test_a_verdict_depends_on_the_lines_alone_not_on_how_they_arrive(cut):
    """The same log printed line by line, in one burst or in arbitrary pieces trips the same sentinel on the same
    line (the training-accuracy sentinel once counted reads of the stream, not lines)."""
    text = "".join(ln + "\n" for ln in HEAD + [speed(20 * (i + 1), acc="0.000000") for i in range(100)])
    p, w = LogParser(events=True), Watch(Sentinels(), LrPlan(0.1, [120000, 140000]))
    if cut == "lines":
        pieces = text.splitlines(keepends=True)
    elif cut in ("one burst", "bytes"):
        pieces = [text]
    else:
        pieces = [text[i : i + 37] for i in range(0, len(text), 37)]
    for piece in pieces:
        trip = w.feed_all(p.feed_bytes(piece.encode()) if cut == "bytes" else p.feed(piece))
        if trip is not None:
            break
    assert w.tripped is not None and w.tripped.sentinel == "train_acc" and w.tripped.line == len(HEAD) + 100
    assert "first 100 Speedometer lines" in w.tripped.why
