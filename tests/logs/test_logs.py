"""The log parser: every format the pinned code and MXNet print, streaming, fuzzed, bounded memory."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest
from helpers import REFERENCE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from samples import PY3_RUN

from mfnpatch.logs.events import (
    CheckpointSaved,
    CheckpointWritten,
    Config,
    Dataset,
    LrBatchEpoch,
    LrChange,
    RunEnded,
    Speed,
    Verification,
)
from mfnpatch.logs.parser import LogParser, parse_namespace, parse_text, summarize, summarize_text

SOFTMAX = REFERENCE / "blog-softmax_loss_test2.log"
ARCFACE = REFERENCE / "blog-arcface_loss_test2.log"
needs_reference = pytest.mark.skipif(
    not ARCFACE.is_file(), reason=f"the blog's complete logs are not at {REFERENCE} (tests-only data)"
)

# A Python 3 / MXNet 1.9 run, as the py3-patched code prints it on the CPU.


def test_python3_cpu_run():
    events, p = parse_text(PY3_RUN)
    kinds = [e.kind for e in events]
    assert kinds.count("Verification") == 2 and kinds.count("Speed") == 2  # one Speed per Speedometer line
    cfg = next(e for e in events if isinstance(e, Config))
    assert cfg.args["lr_steps"] == "40,60" and cfg.args["batch_size"] == 16
    ds = next(e for e in events if isinstance(e, Dataset))
    assert (ds.images, ds.identities) == (400, 20) and p.batches_per_epoch == 25
    v = [e for e in events if isinstance(e, Verification)]
    assert (v[0].target, v[0].step, v[0].accuracy, v[0].std, v[0].xnorm, v[0].infer_time) == (
        "lfw",
        20,
        0.61,
        0.1044,
        21.733423,
        2.356129,
    )
    lrc = next(e for e in events if isinstance(e, LrChange))
    assert lrc.lr == pytest.approx(0.01) and lrc.step == 40
    lbe = next(e for e in events if isinstance(e, LrBatchEpoch))
    assert lbe.step == 1 * 25 + 14 + 1
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert [(c.number, c.step) for c in saved] == [(1, 20), (2, 40)]
    written = [e for e in events if isinstance(e, CheckpointWritten)]
    assert written[1].number == 2 and written[1].path.endswith("-0002.params")
    s = p.summary()
    assert s.python == 3 and s.speedometer_format == "Batch [a-b]"
    assert s.warnings == 1 and s.unknown_lines == 0
    assert s.train_curve == [(21, 0.03125), (1 * 25 + 20 + 1, 0.25)]
    assert s.epochs[0] == {"acc": 0.0625, "time_cost": 31.245}
    assert s.targets()["lfw"].best_step == 40
    assert "no end marker" in s.how_it_ended()


def test_summary_and_events_modes_agree():
    ev_mode = LogParser(events=True)
    ev_mode.feed(PY3_RUN)
    ev_mode.close()
    assert ev_mode.summary() == summarize_text(PY3_RUN)


PY2_LINES = """\
[2018-05-09 02:28:45]  lr-batch-epoch: 0.01 534 15
[2018-05-09 02:28:45]  testing verification..
[2018-05-09 02:28:58]  (12000, 128)
[2018-05-07 10:46:00]  (12000L, 3L, 112L, 112L)
[2018-05-09 02:29:02]  [lfw][112000]Accuracy-Flip: 0.99517+-0.00450
[2018-05-07 10:46:58]  INFO:root:Epoch[0] Batch [20]\tSpeed: 533.52 samples/sec\tacc=0.000000
"""


def test_python2_platform_prefix_and_old_speedometer():
    events, p = parse_text(PY2_LINES)
    v = next(e for e in events if isinstance(e, Verification))
    assert v.time == "2018-05-09 02:29:02" and v.accuracy == 0.99517
    s = p.summary()
    assert s.python == 2 and s.speedometer_format == "Batch [N]"
    lbe = next(e for e in events if isinstance(e, LrBatchEpoch))
    assert lbe.lr == 0.01 and (lbe.batch, lbe.epoch) == (534, 15)


def test_standalone_verification_format():
    s = summarize_text("[lfw]XNorm: 11.1\n[lfw]Accuracy: 0.00000+-0.00000\n[lfw]Accuracy-Flip: 0.99500+-0.00300\n")
    assert s.standalone == {"lfw": (0.995, 0.003)} and s.verifications == {}


@pytest.mark.parametrize(
    "tail,reason,detail",
    [
        ("Task is force ended by user\n", "force-ended", "Task is force ended by user"),
        (
            'Traceback (most recent call last):\n  File "train_softmax.py", line 275, in train_net\n'
            "    cvd = os.environ['CUDA_VISIBLE_DEVICES'].strip()\nKeyError: 'CUDA_VISIBLE_DEVICES'\n",
            "error",
            "KeyError: 'CUDA_VISIBLE_DEVICES'",
        ),
        (
            'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
            "mxnet.base.MXNetError: [14:00:00] src/io/x.cc:10: out of memory\n",
            "error",
            "mxnet.base.MXNetError: [14:00:00] src/io/x.cc:10: out of memory",
        ),
        (
            'Traceback (most recent call last):\n  File "x.py", line 3\nKeyboardInterrupt\n',
            "interrupted",
            "KeyboardInterrupt",
        ),
    ],
)
def test_how_a_run_ends(tail, reason, detail):
    s = summarize_text(PY3_RUN + tail)
    assert s.ending["reason"] == reason and s.ending["detail"] == detail
    assert s.unknown_lines == 0


def test_an_error_message_outside_a_traceback_is_not_an_ending():
    assert summarize_text("ValueError: this is only printed\n").ending is None


def test_carriage_returns_and_truncated_last_line():
    text = PY3_RUN.replace("\n", "\r\n")
    text = text + "progress 10%\rprogress 50%\r[lfw][60]Accuracy-Flip: 0.9"  # no newline at the end
    s = summarize_text(text)
    assert s.verifications["lfw"][60][0] == 0.9
    assert s.unknown_lines == 2  # the two progress fragments


def test_unknown_lines_are_counted_not_fatal():
    s = summarize_text("hello\n#实验二：修复wd设置错误\n\n[lfw][2]Accuracy-Flip: 0.5+-0.1\n\x00\xff garbage\n")
    assert s.unknown_lines == 3 and s.lines == 5 and s.verifications["lfw"][2] == (0.5, 0.1, None)


def test_namespace_reprs():
    assert parse_namespace("Namespace(a=1, b='x,y', c=[1, 2], d=None, e=True, f=4e-05)") == {
        "a": 1,
        "b": "x,y",
        "c": [1, 2],
        "d": None,
        "e": True,
        "f": 4e-05,
    }
    assert parse_namespace("Namespace(n=12L, s=u'p')") == {"n": 12, "s": "p"}
    broken = parse_namespace("Namespace(a=1, b=<object at 0x1>, c='z')")
    assert broken["a"] == 1 and broken["c"] == "z"


@needs_reference
def test_real_softmax_log_summary():
    s = summarize(SOFTMAX)
    h = s.highlights
    assert (h["wd"], h["fc7_wd_mult"], h["loss_type"], h["network"]) == (4e-05, 10.0, 0, "y1")
    t = s.targets()
    assert (t["lfw"].best_accuracy, t["lfw"].best_step) == (0.99033, 42000)
    assert s.python == 2 and s.batches_per_epoch == 7431 and s.images == 3804846
    assert len(s.checkpoints) == 21 and s.checkpoints[21] == {
        "step": 42000,
        "path": "/data/output/model-y1-softmax-0021.params",
    }
    assert s.ending["reason"] == "force-ended"
    assert s.unknown_lines == 1  # the Chinese comment the author put on the first line


@needs_reference
def test_real_arcface_log_summary():
    s = summarize(ARCFACE)
    t = s.targets()
    assert (t["lfw"].best_accuracy, t["lfw"].best_step) == (0.99517, 112000)
    assert s.verifications["cfp_fp"][112000][:2] == (0.88457, 0.01533)
    assert s.pretrained == ("/data/output/model-y1-softmax", 20)
    assert s.lr_changes == {80000: 0.01, 120000: 0.001, 140000: 0.0001, 160000: 1e-05}
    assert s.median_samples_per_sec == pytest.approx(589.03)
    # the seed's quoted line: step 112000 is epoch 15, batch 534
    assert s.lr_points[112000] == 0.01


@needs_reference
def test_chunking_does_not_change_anything():
    data = ARCFACE.read_bytes()
    whole = summarize(ARCFACE)
    rng = random.Random(1)
    for _ in range(3):
        p = LogParser(events=False, path=str(ARCFACE))
        i = 0
        while i < len(data):
            n = rng.choice([1, 7, 100, 4096, 65536])
            p.feed_bytes(data[i : i + n])
            i += n
        p.close()
        s = p.summary()
        assert (s.verifications, s.checkpoints, s.lines, s.unknown_lines, s.config) == (
            whole.verifications, whole.checkpoints, whole.lines, whole.unknown_lines, whole.config,
        )  # fmt: skip
        assert s.speed_lines == whole.speed_lines and s.median_samples_per_sec == whole.median_samples_per_sec


@pytest.mark.slow
def test_memory_does_not_grow_with_the_log():
    """The parser keeps no lines: 10x more log (same steps) costs no more memory."""
    block = PY3_RUN.encode() * 200

    def peak(times: int) -> int:
        tracemalloc.start()
        p = LogParser(events=False)
        for _ in range(times):
            p.feed_bytes(block)
        p.close()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(3), peak(30)
    assert large < small * 1.5, (small, large)


# --------------------------------------------------------------------------------------------
# Fuzz: no input makes the parser raise


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_random_bytes_never_raise(data, piece):
    p = LogParser()
    for i in range(0, len(data), piece):
        p.feed_bytes(data[i : i + piece])
    p.close()
    s = p.summary()
    assert s.lines >= data.count(b"\n")


REAL_LINES = PY3_RUN.splitlines() + PY2_LINES.splitlines()


@st.composite
def mutated_lines(draw):
    lines = draw(st.lists(st.sampled_from(REAL_LINES), min_size=1, max_size=30))
    out = []
    for ln in lines:
        op = draw(st.sampled_from(["keep", "cut", "insert", "replace", "dup"]))
        if op == "cut" and ln:
            ln = ln[: draw(st.integers(0, len(ln)))]
        elif op == "insert":
            k = draw(st.integers(0, len(ln)))
            ln = ln[:k] + draw(st.text(max_size=5)) + ln[k:]
        elif op == "replace" and ln:
            k = draw(st.integers(0, len(ln) - 1))
            ln = (
                ln[:k]
                + draw(st.sampled_from(["[", "]", "(", "L", "\t", "\r", "e", "-", "nan", "\x00", "é"]))
                + ln[k + 1 :]
            )
        elif op == "dup":
            ln = ln + ln
        out.append(ln)
    return "\n".join(out) + draw(st.sampled_from(["", "\n", "\r\n"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_lines())
def test_mutated_real_lines_never_raise(text):
    events, p = parse_text(text)
    s = p.summary()
    norm = text.replace("\r\n", "\n").replace("\r", "\n")
    assert s.lines == norm.count("\n") + (0 if norm.endswith("\n") or not norm else 1)
    assert all(1 <= e.line <= s.lines for e in events)
    for ev in events:
        if isinstance(ev, Speed):
            assert ev.samples_per_sec >= 0
        if isinstance(ev, RunEnded):
            assert ev.reason in ("force-ended", "error", "interrupted")


def test_events_have_line_numbers_in_order():
    events, _ = parse_text(PY3_RUN)
    lines = [e.line for e in events]
    assert lines == sorted(lines)
    text_lines = PY3_RUN.splitlines()
    for e in events:
        if isinstance(e, Verification):
            assert text_lines[e.line - 1].startswith(f"[{e.target}][{e.step}]Accuracy-Flip")


def test_summarize_missing_file(tmp_path: Path):
    from mfnpatch.errors import MfnError

    with pytest.raises(MfnError, match="no such log file"):
        summarize(tmp_path / "nope.log")
