"""recipe run --executor slurm on a real one-node Slurm cluster (slurmctld, slurmd, munged on localhost,
started by tests/support/slurm_cluster.py): the afterok chain, requeue with resume from the last checkpoint, a
failed expectation cancelling the rest, recipe cancel and status --follow. The trainer is the fake one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import slurm_cluster

from mfnpatch.cluster.slurm import MANIFEST, SlurmOptions, check_frozen_tree, freeze_tree, script_text
from mfnpatch.runs.record import load_record

MISSING = slurm_cluster.missing_binaries()
needs_slurm = pytest.mark.skipif(
    bool(MISSING), reason=f"needs Slurm and munge (apt-get install slurm-wlm munge): missing {', '.join(MISSING)}"
)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    if MISSING:
        pytest.skip(f"needs Slurm and munge: missing {', '.join(MISSING)}")
    c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield c
    c.stop()


@pytest.fixture
def slurm_env(cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    return cluster


def submit(cli, rf, *extra, name="run"):
    return cli(
        "recipe", "run", rf.recipe, "--tree", rf.tree, "--run-dir", rf.run_dir(name), "--no-env-check",
        "--executor", "slurm", "--set", "verbose=20", *extra,
    )  # fmt: skip


def wait_for(cond, timeout=120, what=""):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def submit_until_softmax_saves(cli, runfx, monkeypatch, *extra: str) -> tuple[Path, str]:
    """Submit the chain with a slow trainer and wait until softmax has saved its first checkpoint:
    the run directory and softmax's job id. Softmax then holds (FAKE_HOLD) until release_hold: whatever
    the test does to it next reaches a stage that is surely mid-training, however loaded the machine."""
    monkeypatch.setenv("FAKE_DELAY", "0.05")
    hold = runfx.root / "hold"
    hold.touch()
    monkeypatch.setenv("FAKE_HOLD", str(hold))
    assert submit(cli, runfx, *extra).code == 0
    rd = runfx.run_dir()
    log = rd / "stages" / "softmax.log"
    wait_for(lambda: log.is_file() and "Saved checkpoint" in log.read_text(), what="softmax's first checkpoint")
    return rd, load_record(rd).stage("softmax").job.id


def follow(cli, rd, timeout=240):
    t = time.monotonic()
    r = cli("recipe", "status", rd, "--follow", "--interval", "0.5")
    assert time.monotonic() - t < timeout
    return r


def release_hold(runfx) -> None:
    (runfx.root / "hold").unlink(missing_ok=True)


def release_requeued(c, jid: str, runfx) -> None:
    """Slurm holds a requeued batch job back for about two minutes (EligibleTime = requeue + 120 s) before
    it may start again; the tests let it start now (and the trainer run on past its first checkpoint)."""
    release_hold(runfx)

    def pending_and_node_clean() -> bool:
        node = c.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
        return squeue(c).get(jid, ("", ""))[0] == "PENDING" and node == "idle"

    wait_for(pending_and_node_clean, 60, f"job {jid} to be requeued and its node clean")
    time.sleep(2)  # the node revokes the old incarnation's credential; a start before that is refused
    c.run("scontrol", "update", f"JobId={jid}", "StartTime=now")


def _cmdline(d: Path) -> str:
    try:
        return (d / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def squeue(c) -> dict[str, tuple[str, str]]:
    out = c.run("squeue", "-h", "-o", "%i|%T|%r").stdout
    return {a: (b, r) for a, b, r in (ln.split("|") for ln in out.splitlines())}


# --------------------------------------------------------------------------------------------
# Without a cluster


def test_script_has_the_chain_options_and_resources(tmp_path):
    opts = SlurmOptions(partition="gpu", account="lab", time=None, gpus_per_node=None, sbatch_args=["--qos=long"])
    text = script_text(tmp_path, "run1", "softmax", {"gpus_per_node": "1", "time": "3-00:00:00"}, opts)
    for line in (
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --kill-on-invalid-dep=yes",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=3-00:00:00",
        "#SBATCH --qos=long",
        f"#SBATCH --output={tmp_path}/slurm/softmax-%j.out",
    ):
        assert line in text.splitlines(), line  # fmt: skip
    assert text.rstrip().endswith(f"recipe job {tmp_path} softmax")
    # flags override the recipe's resources; 0 GPUs asks for none
    text = script_text(tmp_path, "r", "softmax", {"gpus_per_node": "1"}, SlurmOptions(gpus_per_node=0, time="10"))
    assert "--gpus-per-node" not in text and "#SBATCH --time=10" in text
    # --gpus-per-node is for the stages that ask for GPUs: a data or slim job does not hold one
    text = script_text(tmp_path, "r", "slim", {}, SlurmOptions(gpus_per_node=4))
    assert "--gpus-per-node" not in text
    text = script_text(tmp_path, "r", "softmax", {"gpus_per_node": "0"}, SlurmOptions(gpus_per_node=4))
    assert "#SBATCH --gpus-per-node=4" in text.splitlines()


@pytest.mark.parametrize("where", ["run_dir", "stage", "run_id"])
@pytest.mark.parametrize("bad", ["x\n#SBATCH --wrap=id", "x\rid", "x y", "x\ty", "x\u2028id"])
def test_a_value_that_would_add_or_split_a_script_line_is_refused(tmp_path, where, bad):
    from mfnpatch.fsutil import UnsafePath

    args = {"run_dir": tmp_path, "run_id": "r", "stage": "softmax"} | {
        where: tmp_path / bad if where == "run_dir" else bad
    }
    with pytest.raises(UnsafePath, match="it is written into the stage's sbatch script"):
        script_text(args["run_dir"], args["run_id"], args["stage"], {}, SlurmOptions())


def test_a_run_directory_with_a_newline_queues_nothing_and_writes_nothing(cli, runfx, tmp_path):
    rd = tmp_path / "runs" / "a\n#SBATCH --wrap=touch PWNED"
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--run-dir", rd, "--executor", "slurm",
            "--no-env-check")  # fmt: skip
    assert r.code == 1 and "holds a newline" in r.err and "internal error" not in r.err, r.err
    assert not rd.exists() and not (tmp_path / "PWNED").exists()


def test_frozen_tree_is_checked(tmp_path):
    src = tmp_path / "tree"
    (src / "src").mkdir(parents=True)
    (src / "src" / "train_softmax.py").write_text("print(1)\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    run = tmp_path / "run"
    run.mkdir()
    manifest = freeze_tree(src, run)
    assert list(manifest) == ["src/train_softmax.py"] and not (run / "tree" / ".git").exists()
    check_frozen_tree(run)
    (run / "tree" / "models").mkdir()  # outputs written under the tree later are not code
    (run / "tree" / "models" / "m-0001.params").write_bytes(b"x")
    check_frozen_tree(run)
    (run / "tree" / "src" / "train_softmax.py").write_text("print(2)\n")
    with pytest.raises(Exception, match="changed since it was submitted: src/train_softmax.py"):
        check_frozen_tree(run)
    assert json.loads((run / MANIFEST).read_text()) == manifest


def test_slurm_options_need_the_slurm_executor(cli, runfx):
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--partition", "gpu")
    assert r.code == 64 and "need --executor slurm" in r.err
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--executor", "pbs")
    assert r.code == 64 and "--executor pbs" in r.err


# --------------------------------------------------------------------------------------------
# On the cluster


@pytest.mark.slow
@needs_slurm
def test_chain_runs_in_order_and_passes(cli, runfx, slurm_env):
    r = submit(cli, runfx)
    assert r.code == 0, r.err
    rd = runfx.run_dir()
    assert f"QUEUED: {rd}" in r.out and f"mfnpatch recipe status {rd} --follow" in r.out
    rec = load_record(rd)
    jobs = {s.name: s.job.id for s in rec.stages if s.job}
    assert list(jobs) == ["data", "softmax", "arcface", "slim"] and rec.status == "queued"
    assert rec.stage("arcface").job.after == jobs["softmax"]
    q = squeue(slurm_env)
    assert q[jobs["slim"]] == ("PENDING", "Dependency")  # waits for arcface, which waits for softmax
    scripts = sorted(p.name for p in (rd / "slurm").glob("*.sbatch"))
    assert scripts == ["01-data.sbatch", "02-softmax.sbatch", "03-arcface.sbatch", "04-slim.sbatch"]
    assert (rd / "tree" / "src" / "train_softmax.py").is_file() and (rd / "recipe.yaml").is_file()
    s = follow(cli, rd)
    assert s.code == 0, s.out + s.err
    rec = load_record(rd)
    assert rec.status == "passed" and [x.status for x in rec.stages] == ["done"] * 4
    st = {x.name: x for x in rec.stages}
    for a, b in (("data", "softmax"), ("softmax", "arcface"), ("arcface", "slim")):
        assert st[b].attempts[0].started >= st[a].attempts[0].finished, (a, b)  # afterok honoured
    assert all(st[n].attempts[0].job_id == jobs[n] for n in jobs)
    assert st["softmax"].ended.startswith("stopped at checkpoint 5 (planned)")
    assert st["arcface"].inputs["pretrained"] == f"{rd}/models/model-y1-softmax,5"
    assert {c.id for c in st["softmax"].checks} >= {"lfw verified", "train_acc rises"}
    assert (rd / "stages" / "softmax.log").read_text().count("Accuracy-Flip") >= 15
    last = s.out.split("—")[-1] if "—" in s.out else s.out  # the final snapshot
    assert re.search(r"run: passed — ", s.out) and "slim       done" in last
    assert (rd / "report.md").read_text().startswith("# Run run: PASSED")
    assert list((rd / "slurm").glob("softmax-*.out"))


@pytest.mark.slow
@needs_slurm
def test_training_jobs_get_the_gpus_slurm_allocates(cli, runfx, slurm_env):
    """The node declares two gres/gpu; another job holds GPU 0, so the training jobs get GPU 1: their
    trainer sees CUDA_VISIBLE_DEVICES=1 (not the recipe's value), the record says why, and the jobs of
    stages that ask for no GPU hold none."""
    if not slurm_env.gpus:
        pytest.skip("the test cluster has no gres/gpu: making its device files needs CAP_MKNOD")
    hold = slurm_env.run("sbatch", "--parsable", "--gpus-per-node=1", f"--output={slurm_env.root}/hold-%j.out",
                         "--wrap", "sleep 120").stdout.strip()  # fmt: skip
    try:
        wait_for(lambda: squeue(slurm_env).get(hold, ("",))[0] == "RUNNING", 30, "the job holding GPU 0")
        assert submit(cli, runfx, "--gpus-per-node", "1").code == 0
        rd = runfx.run_dir()
        s = follow(cli, rd)
        assert s.code == 0, s.out + s.err
    finally:
        slurm_env.run("scancel", hold, check=False)
    rec = load_record(rd)
    for name in ("softmax", "arcface"):
        assert "gpu num: 1" in (rd / "stages" / f"{name}.log").read_text()
        assert any(n.startswith("CUDA_VISIBLE_DEVICES=1: the GPUs Slurm allocated") for n in rec.stage(name).notes)
        assert "#SBATCH --gpus-per-node=1" in (rd / rec.stage(name).job.script).read_text()
    for name in ("data", "slim"):
        assert "--gpus-per-node" not in (rd / rec.stage(name).job.script).read_text()


@pytest.mark.slow
@needs_slurm
def test_gpu_environment_is_checked_on_each_jobs_node(cli, runfx, slurm_env, gpu_envs, tmp_path, monkeypatch):
    """Submitting a GPU recipe from a machine without GPUs (a login node) is allowed: the GPU check is left
    to the jobs. Here the 'compute node' has no NVIDIA driver either, so the first job fails on it, with
    the doctor's verdict, before its stage starts, and the chain behind it is cancelled."""
    pytest.importorskip("mxnet")
    spec = gpu_envs / "gpu101" / "env.yaml"  # the build installed here, so only the GPU findings fail
    spec.write_text(spec.read_text().replace('"mxnet-cu101"', '"mxnet"'))
    monkeypatch.setenv("MFNPATCH_NVIDIA_SMI", str(tmp_path / "absent" / "nvidia-smi"))
    runfx.recipe.write_text(runfx.recipe.read_text().replace("environment: cpu", "environment: gpu101"))
    rd = runfx.run_dir()
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--run-dir", rd, "--executor", "slurm")
    assert r.code == 0, r.err
    assert "environment gpu101: deferred to each job's compute node (on the submitting machine: CANNOT RUN: " \
           "nvidia-smi not found" in r.err  # fmt: skip
    s = follow(cli, rd)
    assert s.code == 1
    rec = load_record(rd)
    data = rec.stage("data")
    assert data.status == "failed" and data.ended.startswith("environment gpu101: CANNOT RUN: nvidia-smi not found")
    assert not (rd / "stages" / "data.log").exists()  # it never started
    assert [rec.stage(n).status for n in ("softmax", "arcface", "slim")] == ["cancelled"] * 3


@pytest.mark.slow
@needs_slurm
def test_only_one_stage_ends_incomplete_as_a_local_run_does(cli, runfx, slurm_env):
    assert submit(cli, runfx, "--only", "data").code == 0
    rd = runfx.run_dir()
    s = follow(cli, rd)
    assert s.code == 0, s.out + s.err
    rec = load_record(rd)
    assert rec.status == "incomplete" and [x.status for x in rec.stages] == ["done", "pending", "pending", "pending"]


@pytest.mark.slow
@needs_slurm
def test_requeued_mid_stage_resumes_from_its_checkpoint(cli, runfx, slurm_env, monkeypatch):
    """scontrol requeue while softmax trains (as a preemption does): the job restarts, loads its last
    checkpoint as a resumed segment, and the chain goes on from the stage's checkpoint 5."""
    rd, jid = submit_until_softmax_saves(cli, runfx, monkeypatch)
    slurm_env.run("scontrol", "requeue", jid)
    release_requeued(slurm_env, jid, runfx)
    s = follow(cli, rd)
    assert s.code == 0, s.out + s.err
    rec = load_record(rd)
    sm = rec.stage("softmax")
    assert rec.status == "passed" and sm.status == "done" and sm.passed
    assert [a.restart for a in sm.attempts] == [0, 1] and {a.job_id for a in sm.attempts} == {jid}
    assert len(sm.segments) == 1
    n = sm.segments[0].start_save
    assert 1 <= n < 5 and sm.segments[0].prefix == f"{rd}/models/model-y1-softmax-r1"
    assert sm.ended.startswith("stopped at checkpoint 5 (planned)")
    assert rec.stage("arcface").inputs["pretrained"] == f"{rd}/models/model-y1-softmax-r1,{5 - n}"
    assert "momentum restarts" in (rd / "report.md").read_text()
    # status --follow showed the resumed stage's progress in the stage's own steps, out of its stop point
    assert re.search(rf"softmax\s+running\s+job {jid} RUNNING\s+requeued 1x\s+step \d+/100", s.out), s.out


@pytest.mark.slow
@needs_slurm
def test_past_max_requeues_the_stage_fails_and_the_rest_is_cancelled(cli, runfx, slurm_env, monkeypatch):
    rd, jid = submit_until_softmax_saves(cli, runfx, monkeypatch, "--max-requeues", "0")
    slurm_env.run("scontrol", "requeue", jid)
    release_requeued(slurm_env, jid, runfx)
    s = follow(cli, rd)
    assert s.code == 1, s.out + s.err
    rec = load_record(rd)
    sm = rec.stage("softmax")
    assert rec.status == "failed" and sm.status == "failed" and not sm.segments
    assert sm.ended == "requeued 1 time; the limit is 0 (--max-requeues)"
    assert [rec.stage(n).status for n in ("arcface", "slim")] == ["cancelled", "cancelled"]


@pytest.mark.slow
@needs_slurm
def test_preempted_by_a_higher_priority_job_resumes_from_its_checkpoint(cli, runfx, slurm_env, monkeypatch):
    """Real preemption: a job in the higher-tier partition needs the whole node, so Slurm preempts the
    training job (PreemptMode=REQUEUE: SIGTERM, requeue); it resumes from its last checkpoint."""
    rd, jid = submit_until_softmax_saves(cli, runfx, monkeypatch)
    urgent = slurm_env.run("sbatch", "--parsable", "--partition=urgent", "--cpus-per-task=2",
                           f"--output={slurm_env.root}/urgent-%j.out", "--wrap", "sleep 2").stdout.strip()  # fmt: skip
    wait_for(lambda: urgent not in squeue(slurm_env), 60, "the urgent job to run and end")
    assert "DUE TO PREEMPTION" in next((rd / "slurm").glob("softmax-*.out")).read_text()
    release_requeued(slurm_env, jid, runfx)
    s = follow(cli, rd)
    assert s.code == 0, s.out + s.err
    sm = load_record(rd).stage("softmax")
    assert [a.restart for a in sm.attempts] == [0, 1] and sm.attempts[0].ended.startswith("interrupted")
    assert len(sm.segments) == 1 and sm.status == "done" and sm.passed


def instant_requeue(tmp_path: Path, monkeypatch) -> Path:
    """An `scontrol` first on the jobs' PATH that, after the real `scontrol requeue`, kills the process that
    asked at once (SIGKILL): Slurm at its quickest, ending the job before scontrol even returns. Every
    other use of scontrol passes through. Returns the file each kill is logged to."""
    real = shutil.which("scontrol")
    assert real
    bindir = tmp_path / "instant-bin"
    bindir.mkdir()
    killed = tmp_path / "instant-kills.log"
    wrapper = bindir / "scontrol"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = requeue ]; then "{real}" "$@"; rc=$?; echo "killed $PPID" >> "{killed}"; '
        "kill -9 $PPID; exit $rc; fi\n"
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return killed


def time_limit_requeue(cli, runfx, slurm_env, monkeypatch, tmp_path) -> None:
    killed = instant_requeue(tmp_path, monkeypatch)
    rd, jid = submit_until_softmax_saves(cli, runfx, monkeypatch)
    slurm_env.run("scancel", "--signal=USR1", "--batch", jid)
    wait_for(lambda: killed.is_file(), 60, "the requeue (and the instant kill of the job that asked)")
    # what the job knew before it asked for the requeue is on disk, though it was killed at once
    sm = load_record(rd).stage("softmax")
    assert sm.attempts[0].ended and "the time limit is near: requeued to resume" in sm.attempts[0].ended
    assert sm.attempts[0].finished and sm.status == "interrupted"
    assert "| softmax | interrupted |" in (rd / "report.md").read_text()
    release_requeued(slurm_env, jid, runfx)
    s = follow(cli, rd)
    assert s.code == 0, s.out + s.err
    sm = load_record(rd).stage("softmax")
    assert [a.restart for a in sm.attempts] == [0, 1]
    assert all(a.ended and a.finished for a in sm.attempts)
    assert "the time limit is near: requeued to resume" in sm.attempts[0].ended
    assert len(sm.segments) == 1 and sm.status == "done" and sm.passed


@pytest.mark.slow
@needs_slurm
def test_time_limit_signal_requeues_and_resumes(cli, runfx, slurm_env, monkeypatch, tmp_path):
    """USR1 to the batch shell is what --signal=B:USR1@GRACE sends before the time limit: the job stops
    the trainer, writes the attempt's end and the report, requeues itself (here Slurm kills it the moment
    it asks), and the next start resumes from the last checkpoint."""
    time_limit_requeue(cli, runfx, slurm_env, monkeypatch, tmp_path)


@needs_slurm
@pytest.mark.slow
@pytest.mark.parametrize("i", range(10))
def test_time_limit_requeue_stress(cli, runfx, slurm_env, monkeypatch, tmp_path, i):
    """The requeue path ten times in one session: no attempt ever lacks its end."""
    time_limit_requeue(cli, runfx, slurm_env, monkeypatch, tmp_path)


@pytest.mark.slow
@needs_slurm
def test_a_job_killed_unrecorded_is_stale_and_resubmission_resumes(cli, runfx, slurm_env, monkeypatch):
    """SIGKILL (a node failure, an OOM kill) leaves no chance to record anything: status --follow says the
    record is stale instead of waiting forever, and --executor slurm --resume submits the rest again,
    softmax continuing from its last checkpoint."""
    rd, jid = submit_until_softmax_saves(cli, runfx, monkeypatch)
    job_pids = [
        int(d.name)
        for d in Path("/proc").iterdir()
        if d.name.isdigit() and _cmdline(d).endswith(f"recipe\0job\0{rd}\0softmax\0")
    ]
    assert len(job_pids) == 1
    os.kill(job_pids[0], signal.SIGKILL)  # the job's runner dies without a word, as on a node failure
    release_hold(runfx)
    s = follow(cli, rd)
    assert s.code == 1 and "stale" in s.err and f"softmax (job {jid}" in s.err and "--resume" in s.err
    assert load_record(rd).stage("softmax").status == "running"  # as the killed job left it
    monkeypatch.setenv("FAKE_DELAY", "0.002")
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--resume", rd, "--no-env-check",
            "--executor", "slurm", "--set", "verbose=20")  # fmt: skip
    assert r.code == 0, r.err
    assert "submitted data" not in r.err  # done stages are not submitted again
    s = follow(cli, rd)
    assert s.code == 0, s.out + s.err
    sm = load_record(rd).stage("softmax")
    assert sm.status == "done" and len(sm.segments) == 1 and sm.job.id != jid


@pytest.mark.slow
@needs_slurm
def test_failed_expectation_cancels_the_rest(cli, runfx, slurm_env, monkeypatch):
    monkeypatch.setenv("FAKE_CAP", "0.45")
    assert submit(cli, runfx).code == 0
    rd = runfx.run_dir()
    s = follow(cli, rd)
    assert s.code == 1
    rec = load_record(rd)
    st = {x.name: x for x in rec.stages}
    assert rec.status == "failed" and st["softmax"].status == "done" and st["softmax"].passed is False
    assert st["arcface"].status == "cancelled" and st["slim"].status == "cancelled"
    assert st["arcface"].ended == "cancelled: stage softmax did not pass"
    assert not st["arcface"].attempts and not st["slim"].attempts  # they never started
    assert not (rd / "stages" / "arcface.log").exists()
    wait_for(lambda: not set(squeue(slurm_env)) & {st["arcface"].job.id, st["slim"].job.id}, 30,
             "the dependents to leave the queue")  # fmt: skip


@pytest.mark.slow
@needs_slurm
def test_cancel_stops_the_running_stage_and_the_queue(cli, runfx, slurm_env, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY", "0.2")
    assert submit(cli, runfx).code == 0
    rd = runfx.run_dir()
    log = rd / "stages" / "softmax.log"
    wait_for(lambda: log.is_file() and "Saved checkpoint" in log.read_text(), what="softmax to train")
    r = cli("recipe", "cancel", rd)
    assert r.code == 0 and "cancelled 3 job(s)" in r.out
    wait_for(lambda: load_record(rd).stage("softmax").status == "cancelled", 60, "softmax to record its end")
    rec = load_record(rd)
    assert rec.status == "cancelled"
    assert [s.status for s in rec.stages] == ["done", "cancelled", "cancelled", "cancelled"]
    assert "cancelled (mfnpatch recipe cancel)" in rec.stage("softmax").ended
    wait_for(lambda: not squeue(slurm_env), 30, "an empty queue")
    assert cli("recipe", "cancel", rd).code == 2  # nothing left
    assert cli("recipe", "status", rd).code == 1


@pytest.mark.slow
@needs_slurm
def test_bad_partition_is_one_clear_error_and_nothing_queued(cli, runfx, slurm_env):
    r = submit(cli, runfx, "--partition", "nosuch")
    assert r.code == 1, r.err
    assert "submission failed, cancelled the 0 job(s) already submitted" in r.err
    assert "Invalid partition name specified (with --partition nosuch)" in r.err
    assert "hint: check the Slurm options" in r.err
    assert not Path(runfx.run_dir("run")).exists()  # nothing half-made: the same command works once fixed
    r = submit(cli, runfx, "--partition", "debug")
    assert r.code == 0, r.err
    rec = load_record(runfx.run_dir("run"))
    ids = {s.job.id for s in rec.stages if s.job}
    assert len(ids) == len(rec.stages) and ids <= set(squeue(slurm_env))  # this run's jobs, whatever else is queued
    assert cli("recipe", "cancel", runfx.run_dir("run")).code == 0
    wait_for(lambda: not ids & set(squeue(slurm_env)), 30, "this run's jobs to leave the queue")
