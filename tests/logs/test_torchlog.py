"""arcface_torch's training.log, read by the one parser: lines built from its real format strings
(utils_logging.init_logging, CallBackLogging, CallBackVerification, the config dump of train_v2.py), in any
chunking; and the published mbf logs when MFNPATCH_ARCFACE_LOGS points at a clone of their repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mfnpatch.logs.events import Config, Malformed, Speed, Verification
from mfnpatch.logs.parser import LogParser, Summary, summarize_text
from mfnpatch.logs.sentinels import Sentinels, Watch
from mfnpatch.logs.torchlog import TorchLines

CFG = [("margin_list", "[1.0, 0.5, 0.0]"), ("network", "mbf"), ("resume", "False"), ("output", "work_dirs/ms1mv2_mbf"),
       ("embedding_size", "512"), ("sample_rate", "1.0"), ("interclass_filtering_threshold", "0"), ("fp16", "True"),
       ("batch_size", "128"), ("optimizer", "sgd"), ("lr", "0.1"), ("momentum", "0.9"), ("weight_decay", "0.0001"),
       ("verbose", "2000"), ("frequent", "10"), ("rec", "/train_tmp/faces_emore"), ("num_classes", "85742"),
       ("num_image", "5822653"), ("num_epoch", "40"), ("val_targets", "['lfw', 'cfp_fp', 'agedb_30']"),
       ("total_batch_size", "1024"), ("total_step", "227440")]  # fmt: skip


def stamp(i: int) -> str:
    return f"Training: 2022-04-10 23:{14 + i // 60:02d}:{i % 60:02d},{i % 1000:03d}-"


# arcface_torch's own format strings (utils/utils_callbacks.py), kept as it writes them
SPEED = ("Speed %.2f samples/sec   Loss %.4f   LearningRate %.4f   Epoch: %d   Global Step: %d   "
         "Fp16 Grad Scale: %2.f   Required: %1.f hours")  # fmt: skip
XNORM, FLIP, HIGHEST = "[%s][%d]XNorm: %f", "[%s][%d]Accuracy-Flip: %1.5f+-%1.5f", "[%s][%d]Accuracy-Highest: %1.5f"


def log_lines(steps=(20, 30, 40), rounds=(2000,), lr="0.1000") -> list[str]:
    out = [stamp(0) + "rank_id: 0"]
    for k, v in CFG:
        out.append(stamp(1) + ": " + k + " " * (25 - len(k)) + v)  # train_v2.py: num_space = 25 - len(key)
    out.append(stamp(2) + "Reducer buckets have been rebuilt in this iteration.")
    i = 3
    for s in steps:
        out.append(stamp(i) + SPEED % (10543.27, 46.0198, float(lr), 0, s, 4096, 37))  # noqa: UP031
        i += 1
    for r in rounds:
        for t, a in (("lfw", 0.96), ("cfp_fp", 0.753), ("agedb_30", 0.81717)):
            out += [stamp(i) + XNORM % (t, r, 20.481429), stamp(i) + FLIP % (t, r, a, 0.00853),  # noqa: UP031
                    stamp(i) + HIGHEST % (t, r, a)]  # noqa: UP031  # fmt: skip
            i += 1
    return out


def test_a_torch_log_reads_into_the_one_summary():
    text = "\n".join(log_lines()) + "\n"
    s = summarize_text(text, "training.log")
    assert s.lineage == "arcface_torch" and s.unknown_lines == 0 and s.lines == len(log_lines())
    cfg = s.config
    assert cfg["network"] == "mbf" and cfg["batch_size"] == 1024 and cfg["per_batch_size"] == 128
    assert cfg["ctx_num"] == 8 and cfg["emb_size"] == 512 and cfg["margin_list"] == [1.0, 0.5, 0.0]
    assert cfg["interclass_filtering_threshold"] == 0 and cfg["lineage"] == "arcface_torch"
    assert s.verifications["lfw"][2000][0] == 0.96 and s.verifications["agedb_30"][2000][0] == 0.81717
    assert s.last_step == 2000 and s.speed_lines == 3 and s.median_samples_per_sec == 10543.27
    assert [st for st, _ in s.loss_curve] == [20, 30, 40] and s.lr_points == {20: 0.1, 30: 0.1, 40: 0.1}


def test_its_reader_makes_events_not_text():
    r = TorchLines()
    lines = log_lines(steps=(20,), rounds=(2000,))
    items = [it for ln in lines for it in r.line(ln)] + r.close()
    assert len(items) == len(lines)  # one item per line: line numbers are the log's own
    assert not any(isinstance(it, str) for it in items)  # nothing handed on as another format's text
    cfg = next(it for it in items if isinstance(it, Config))
    assert cfg.time == "2022-04-10 23:14:01" and cfg.args["per_batch_size"] == 128 and cfg.args["ctx_num"] == 8
    sp = next(it for it in items if isinstance(it, Speed))
    assert (sp.epoch, sp.step, sp.samples_per_sec, sp.metrics) == (0, 20, 10543.27, {"loss": 46.0198, "lr": 0.1})
    ver = [it for it in items if isinstance(it, Verification)]
    assert [(v.target, v.step, v.accuracy, v.std, v.xnorm) for v in ver][0] == ("lfw", 2000, 0.96, 0.00853, 20.481429)
    # a line without its prefix (Python's own output) is handed on as it is, read as any log's
    assert TorchLines().line("Traceback (most recent call last):") == ["Traceback (most recent call last):"]


@pytest.mark.parametrize("bad", ["1.75300", "nan"])  # out of [0, 1], and a NaN that compares False both ways
def test_a_bad_accuracy_or_a_crash_in_a_torch_log(bad):
    lines = log_lines()
    at = next(i for i, ln in enumerate(lines) if "[cfp_fp][2000]Accuracy-Flip" in ln)
    lines[at] = lines[at].replace("0.75300+-", bad + "+-")
    lines += ["Traceback (most recent call last):", "RuntimeError: CUDA error: out of memory"]
    p = LogParser(events=True)
    evs = p.feed("\n".join(lines) + "\n") + p.close()
    s = p.summary()
    assert (
        s.malformed_lines == 1
        and s.malformed[0].startswith(f"line {at + 1}: [cfp_fp]")
        and "cfp_fp" not in s.verifications
    )
    assert [e.line for e in evs if isinstance(e, Malformed)] == [at + 1]
    assert s.ending == {"reason": "error", "detail": "RuntimeError: CUDA error: out of memory"} and s.unknown_lines == 0


def test_events_and_line_numbers_in_any_chunking():
    lines = log_lines()
    data = ("\n".join(lines) + "\n").encode()
    whole = LogParser(events=True)
    events = whole.feed_bytes(data) + whole.close()
    for size in (1, 7, 100):
        p = LogParser(events=True)
        evs = []
        for k in range(0, len(data), size):
            evs += p.feed_bytes(data[k : k + size])
        evs += p.close()
        assert [(type(e).__name__, getattr(e, "step", None)) for e in evs if not isinstance(e, Speed)] == [
            (type(e).__name__, getattr(e, "step", None)) for e in events if not isinstance(e, Speed)
        ]
        assert p.summary().verifications == whole.summary().verifications
    cfg = next(e for e in events if isinstance(e, Config))
    assert cfg.line == 1 + len(CFG)  # the config's last line: the lines after it keep their numbers
    ver = next(e for e in events if isinstance(e, Verification) and e.target == "lfw")
    assert lines[ver.line - 1].endswith("[lfw][2000]Accuracy-Flip: 0.96000+-0.00853")


def test_the_sentinels_watch_a_torch_log():
    chance = log_lines(rounds=(2000, 4000))
    chance = [ln.replace("0.96000+-", "0.50000+-").replace("0.75300+-", "0.50000+-").replace("0.81717+-", "0.5+-")
              for ln in chance]  # fmt: skip
    w = Watch(Sentinels())
    p = LogParser(events=True)
    trips = [w.feed_all(p.feed(ln + "\n")) for ln in chance]
    assert [t.sentinel for t in trips if t] == ["chance"]
    nan = log_lines(steps=(20, 30))
    at = next(i for i, ln in enumerate(nan) if "Global Step: 30" in ln)
    nan[at] = nan[at].replace("Loss 46.0198", "Loss nan")
    w, p = Watch(Sentinels()), LogParser(events=True)
    assert any(t and t.sentinel == "nonfinite" for t in (w.feed_all(p.feed(ln + "\n")) for ln in nan))


def test_an_mxnet_log_is_not_mistaken_for_one():
    s = summarize_text("[2018-05-09 02:28:45]  [lfw][2000]Accuracy-Flip: 0.95+-0.01\n")
    assert s.lineage == "insightface_mxnet" and s.verifications["lfw"][2000][0] == 0.95
    assert summarize_text("Train").lines == 1  # shorter than the prefix: read as it is


LOGS = os.environ.get("MFNPATCH_ARCFACE_LOGS", "")


@pytest.mark.skipif(not LOGS, reason="set MFNPATCH_ARCFACE_LOGS to a clone of anxiangsir/insightface_arcface_log")
@pytest.mark.parametrize("name,best", [("ms1mv2_mbf", (0.99750, 0.95943, 0.97183)),
                                       ("ms1mv3_mbf", (0.99700, 0.97371, 0.97400))])  # fmt: skip
def test_the_published_mbf_logs(tmp_path, name, best, cli):
    raw = subprocess.run(["git", "-C", LOGS, "show", f"HEAD:{name}/training.log"], capture_output=True, check=True)
    log = tmp_path / "training.log"
    log.write_bytes(raw.stdout)
    d = cli("log", "summary", log, "--json").json()
    assert d["unknown_lines"] == 0 and d["lineage"] == "arcface_torch"
    assert tuple(d["targets"][t]["best_accuracy"] for t in ("lfw", "cfp_fp", "agedb_30")) == best
    assert Path(cli("log", "plot", log, "-o", tmp_path / "c.png").out.split()[-1]).is_file()
    # verify tells the stage from the config the log records, and the published log passes its own checks
    v = cli("verify", "--log", log, "--json").json()
    assert v["passed"] and v["match"]["recipe"] == "mbf" and v["match"]["stage"] == "train" and v["match"]["exact"]
    assert v["match"]["profile"] == (None if name == "ms1mv2_mbf" else "ms1mv3")


def _chunks(text: str, n: int) -> Summary:
    p = LogParser(events=False, path="stage.log")
    for i in range(0, len(text), n):
        p.feed(text[i : i + n])
    p.close()
    return p.summary()


PREAMBLE = [
    "/tree/recognition/arcface_torch/dataset.py:263: FutureWarning: Decorating classes is deprecated",
    "  @torch.no_grad()",
    "W1206 20:11:59.123000 4242 site-packages/torch/distributed/run.py:766] ",
    "W1206 20:11:59.123000 4242 site-packages/torch/distributed/run.py:766] *****************************************",
    "",
]


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_a_stage_logs_preamble_does_not_hide_its_lineage(chunk):
    """What a stage's stdout holds before the log's first line (Python warnings, torchrun's glog lines) is
    skipped when the lineage is decided; the lines still count, and the MXNet lineage is unaffected."""
    torch_text = "\n".join(PREAMBLE + log_lines()) + "\n"
    s = _chunks(torch_text, chunk)
    assert s.lineage == "arcface_torch" and s.lines == len(PREAMBLE) + len(log_lines())
    assert s.verifications["lfw"][2000][0] == 0.96 and [st for st, _ in s.loss_curve] == [20, 30, 40]
    mx_text = "\n".join(PREAMBLE[:2] + ["use cpu", "INFO:root:Epoch[0] Batch [20]\tSpeed: 500.0 samples/sec\tacc=0.1"])
    m = _chunks(mx_text + "\n", chunk)
    assert m.lineage == "insightface_mxnet" and m.speed_lines == 1
    only = _chunks("\n".join(PREAMBLE[:2]), chunk)  # nothing but a warning: read as the pinned code's
    assert only.lineage == "insightface_mxnet" and only.lines == 2


def test_the_lr_sentinel_follows_the_polynomial_decay_as_printed():
    """arcface_torch's lr, printed with 4 or 6 decimals, is the plan's polynomial decay: no trip on the real line of
    a smoke run at the pin (LearningRate 0.076190 at step 10 of 42, the plan's 0.0761905); a plan whose rate is not
    the trainer's trips at the first Speed line."""
    from mfnpatch.lineages.base import PolySchedule

    real = ("Training: 2026-12-07 12:38:33,813-Speed 9.25 samples/sec   Loss 35.7856   LearningRate 0.076190   "
            "Epoch: 0   Global Step: 10   Required: 0 hours")  # fmt: skip
    lines = [*log_lines(steps=()), real]
    for plan, trips in ((PolySchedule(0.1, 0, 42), False), (PolySchedule(0.2, 0, 42), True),
                        (PolySchedule(0.1, 0, 84), True)):  # fmt: skip
        w, p = Watch(Sentinels(), plan), LogParser(events=True)
        tripped = [t for t in (w.feed_all(p.feed(ln + "\n")) for ln in lines) if t]
        assert bool(tripped) == trips, plan
        if trips:
            assert tripped[0].sentinel == "lr" and "at step 10" in tripped[0].why
    four = [*log_lines(steps=(), lr="0.0762"), real.replace("0.076190", "0.0762")]
    w, p = Watch(Sentinels(), PolySchedule(0.1, 0, 42)), LogParser(events=True)
    assert not any(w.feed_all(p.feed(ln + "\n")) for ln in four)  # the published logs' %.4f
