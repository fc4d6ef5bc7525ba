"""The runner's pure parts, each on its own: a stage's end, provenance and what changed, filling input slots,
which stage makes a dataset, a schema-1 end in words, a stale Slurm run."""

from __future__ import annotations

from pathlib import Path

from mfnpatch.checkpoint import StopPoint
from mfnpatch.recipes.expand import expand
from mfnpatch.recipes.recipe import load_recipe
from mfnpatch.recipes.template import Scope, Slot, fill
from mfnpatch.runs.dataplan import data_uses
from mfnpatch.runs.outcome import stage_outcome
from mfnpatch.runs.provenance import changed_parts, key
from mfnpatch.runs.record import end_in_words_v1
from mfnpatch.runs.status import JobState, finished, stale

CK2 = StopPoint(kind="checkpoint", value=2)


def test_a_stage_ends_done_failed_or_interrupted():
    assert stage_outcome("train", None, "stopped", "stopped at checkpoint 2", False, CK2, {1, 2}).status == "done"
    assert stage_outcome("train", 0, "exited", "exited 0", False, CK2, {1, 2}).status == "done"
    early = stage_outcome("train", 0, "exited", "exited 0", False, CK2, {1})
    assert early.status == "failed" and early.ended == "exited 0, before its stop point (checkpoint 2)"
    assert stage_outcome("tool", 0, "exited", "exited 0", False, CK2, set()).status == "done"  # tools save nothing
    assert stage_outcome("train", 1, "exited", "exited 1", False, None, set()).status == "failed"
    assert stage_outcome("train", None, "not started", "could not start", False, None, set()).status == "failed"
    assert stage_outcome("train", -15, "interrupted", "interrupted (SIGTERM)", True, CK2, set()).status == "interrupted"


def test_provenance_names_the_parts_that_changed():
    a = {"recipe": "1" * 64, "seed": "2" * 64}
    b = {"recipe": "1" * 64, "seed": "3" * 64, "inputs": "4" * 64}
    assert changed_parts(a, b) == ["seed: 222222222222 -> 333333333333", "inputs: (absent) -> 444444444444"]
    assert key(a) == key(dict(reversed(a.items()))) and key(a) != key(b)


def test_input_slots_are_filled_not_rendered_again():
    scope = Scope({"m": "models"}, {})
    text = scope.parts("${m}/x,${inputs.pretrained}")
    assert text == ("models/x,", Slot("pretrained"))
    assert fill(text, {"pretrained": "a,2"}) == "models/x,a,2"
    plan = expand(load_recipe("may16"), "smoke", builtins={"run_dir": "/r"})
    arc = plan.stage("arcface")
    i = arc.argv.index("--pretrained") + 1
    assert arc.argv[i] == "/r/models/model-y1-softmax,2"  # the plan knows a checkpoint named by number
    resolved = arc.with_inputs({"pretrained": "/elsewhere/model-y1-softmax-r1,1"})
    assert resolved.argv[i] == "/elsewhere/model-y1-softmax-r1,1" and arc.argv[i] == "/r/models/model-y1-softmax,2"
    assert resolved.argv[:i] == arc.argv[:i] and resolved.env == arc.env


def test_the_stage_that_makes_a_dataset_is_known_from_the_plan():
    plan = expand(load_recipe("may16"), "smoke", builtins={"run_dir": "/r"})
    (use,) = data_uses(plan, Path("/tree"))
    assert use.path == Path("/r/data") and use.made_by == "data" and use.stages == ["softmax", "arcface", "finetune"]
    assert use.variant == "synthetic" and use.targets == ["lfw", "cfp_fp", "agedb_30"]
    (real,) = data_uses(expand(load_recipe("may16")), Path("/tree"))
    assert real.made_by is None and real.path == Path("/tree/datasets/faces_ms1m_112x112")


def test_a_schema_1_end_is_read_from_its_words_once():
    assert end_in_words_v1("done", "stopped at checkpoint 2 (planned), by mfnpatch") == "stopped"
    assert end_in_words_v1("done", "reached checkpoint 2 before it was interrupted") == "stopped"
    assert end_in_words_v1("failed", "exited 1: Traceback") == "exited"
    assert end_in_words_v1("interrupted", "interrupted (SIGINT); the process was stopped") == "interrupted"
    assert end_in_words_v1("failed", "could not start: No such file") == "not started"
    assert end_in_words_v1("pending", None) is None


def test_a_slurm_run_no_job_of_which_runs_is_stale(tmp_path):
    from mfnpatch.runs.record import parse_record

    rec = parse_record(
        {"schema": 2, "run_id": "r", "tool": "t", "status": "running", "started": "s", "tree": "t",
         "recipe": {"name": "x", "path": "p", "sha256": "0"}, "pin": {"commit": "c", "tree": "t"}, "patches": [],
         "environment": {"name": "cpu"}, "host": {"hostname": "h", "platform": "p", "cpus": 1, "python": "3"},
         "stages": [{"name": "a", "title": "a", "kind": "train", "status": "running"}],
         "executor": {"kind": "slurm"}},
        tmp_path / "record.json",
    )  # fmt: skip
    running = [{"stage": "a", "status": "running", "job": "7", "job_active": True}]
    gone = [{"stage": "a", "status": "running", "job": "7", "job_state": "FAILED", "job_active": False}]
    assert stale(rec, running) is None and not finished(rec, running)
    assert stale(rec, gone) == ["a (job 7: FAILED)"] and finished(rec, gone)
    assert str(JobState("PENDING", "Priority", active=True)) == "PENDING (Priority)"


def test_what_came_first_in_the_log_ends_the_stage(tmp_path):
    """A sentinel that fires on a line before the stop point ends the stage as the sentinel's, even when a loaded
    machine hands the runner both lines in one read (the stop point first in the log wins the other way round)."""
    import sys

    from mfnpatch.logs.events import Verification
    from mfnpatch.runs.process import run_process

    lines = ["[lfw][10]Accuracy-Flip: 0.50000+-0.01000", "[lfw][20]Accuracy-Flip: 0.50000+-0.01000",
             "INFO:root:Epoch[0] Batch [30]\tSpeed: 100.00 samples/sec\tacc=0.100000"]  # fmt: skip
    script = f"import sys, time; sys.stdout.write({chr(10).join(lines)!r} + '\\n'); sys.stdout.flush(); time.sleep(30)"

    def run(trip_at: int):
        seen: list = []

        def tripped():
            hit = any(isinstance(e, Verification) and e.step >= trip_at for e in seen)
            return f"chance at {trip_at}" if hit else None

        return run_process([sys.executable, "-c", script], tmp_path, {}, tmp_path / f"{trip_at}.log",
                           StopPoint(kind="step", value=25, why="test"), seen.extend, tripped=tripped)  # fmt: skip

    first = run(20)  # the sentinel's line (step 20) comes before the stop point (step 31)
    assert first.end == "sentinel" and first.stopped_at is None, first.ended
    later = run(10**6)  # no sentinel: the stop point
    assert later.end == "stopped" and later.stopped_at == "step 31", later.ended
