"""The Slurm executor: the runner of ``mfnpatch.runs`` with Slurm's hooks.

``recipe run --executor slurm`` submits each selected stage as a job in an ``afterok`` chain on a frozen copy
of the tree (``submit``); each job runs ``mfnpatch recipe job RUN STAGE`` (``run_job``), which runs its one
stage with the same runner as a local run, under the run's record lock. A job near its time limit (SIGUSR1),
preempted or requeued resumes from its stage's last checkpoint at its next start.

Whatever a job knows before it asks Slurm for something that may end it (a requeue of itself, a cancel of
its dependents) is on disk first: the attempt's end, the record, the report.
"""

from __future__ import annotations

import platform
import signal
import sys
from pathlib import Path

from mfnpatch.cluster.slurm import (
    FROZEN_TREE,
    SlurmError,
    SlurmOptions,
    allocated_gpus,
    check_frozen_tree,
    freeze_tree,
    job_id,
    job_states,
    requeue,
    restart_count,
    sbatch,
    scancel,
    script_text,
    write_script,
)
from mfnpatch.errors import EXIT_INTERRUPTED, MfnError
from mfnpatch.fsutil import atomic_write
from mfnpatch.recipes.expand import Plan, PlannedStage
from mfnpatch.runs.execute import Observer
from mfnpatch.runs.record import (
    AttemptRecord,
    ExecutorInfo,
    JobRecord,
    RunError,
    RunRecord,
    StageRecord,
    load_record,
    now,
    record_lock,
    write_record,
)
from mfnpatch.runs.runner import Runner, RunOptions, remove_new_run_dir
from mfnpatch.runs.status import CancelResult


class SlurmRunner(Runner):
    kind = "slurm"

    def __init__(self, loaded, profile, overrides, opts: RunOptions, slurm: SlurmOptions, observer=None):
        super().__init__(loaded, profile, overrides, opts, observer)
        self.slurm = slurm
        self._job_stage: str | None = None  # set in a job: the one stage this process runs
        self._touched: set[str] = set()  # stages this job changed besides its own (dependents it cancelled)

    # -- hooks

    def tree_root(self, run_dir: Path) -> Path:
        return Path(run_dir) / FROZEN_TREE

    def check_environment(self, plan: Plan) -> dict:
        if not (self.opts.env_check and self.opts.env_checker is not None):
            return {}
        if self._job_stage is not None:  # in a job: this compute node is where the stage runs
            return self.opts.env_checker(plan.environment, self._env_prefix())
        info = self.opts.env_checker(plan.environment, self._env_prefix(), gpus_checked_by_jobs=True)
        if info.get("deferred"):
            self.obs.note(f"environment {plan.environment}: {info['check']}")
        return info

    def _adjust(self, ps: PlannedStage, srec: StageRecord) -> PlannedStage:
        """In a job: CUDA_VISIBLE_DEVICES is the GPUs Slurm allocated, whatever the recipe's names."""
        if self._job_stage is None or "CUDA_VISIBLE_DEVICES" not in ps.env:
            return ps
        gpus = allocated_gpus()
        if gpus is None or gpus == ps.env["CUDA_VISIBLE_DEVICES"]:
            return ps
        srec.notes.append(
            f"CUDA_VISIBLE_DEVICES={gpus}: the GPUs Slurm allocated to the job "
            f"(the recipe's {ps.env['CUDA_VISIBLE_DEVICES']!r} names GPUs of a whole machine)"
        )
        return ps.with_env({**ps.env, "CUDA_VISIBLE_DEVICES": gpus})

    def _write(self, run_dir: Path, rec: RunRecord) -> None:
        """Write the record. In a job, under the run's lock and only this job's stages (others are other jobs'
        or `recipe cancel`'s); a cancellation made meanwhile is taken in."""
        if self._job_stage is None:
            write_record(run_dir, rec)
            return
        with record_lock(run_dir):
            cur = load_record(run_dir)
            mine = {self._job_stage} | self._touched
            cur.stages = [rec.stage(s.name) if s.name in mine else s for s in cur.stages]
            made = {tuple(d.stages): d for d in rec.datasets if d.made_by in mine}  # checked by this job
            cur.datasets = [made.get(tuple(d.stages), d) for d in cur.datasets]
            if cur.status == "cancelled":
                rec.status = "cancelled"
            else:
                cur.status, cur.finished = rec.status, rec.finished
            write_record(run_dir, cur)
        for i, s in enumerate(cur.stages):  # what other processes wrote, for this job's later decisions
            if s.name not in mine:
                rec.stages[i] = s

    # -- submission

    def launch(self, plan: Plan, rec: RunRecord, run_dir: Path, tree_root: Path, previous, fresh_dir) -> RunRecord:
        try:
            return self._submit(plan, rec, run_dir, tree_root, previous)
        except MfnError:
            if fresh_dir is not None:  # a new run that queued nothing leaves no run directory behind
                remove_new_run_dir(run_dir, keep_dir=fresh_dir)
            raise

    def _submit(self, plan: Plan, rec: RunRecord, run_dir: Path, tree_root: Path, previous) -> RunRecord:
        sopts = self.slurm
        for ps in self._selected(plan):  # every value its scripts hold refused before anything is frozen or queued
            if not ps.skipped:
                script_text(run_dir, rec.run_id, ps.name, ps.resources, sopts)
        if previous is not None and (run_dir / FROZEN_TREE).is_dir():
            check_frozen_tree(run_dir)  # a resubmission runs the code first submitted
        else:
            freeze_tree(tree_root, run_dir)
            atomic_write(run_dir / "recipe.yaml", self.loaded.path.read_bytes())
        rec.tree = str(run_dir / FROZEN_TREE)
        rec.executor = ExecutorInfo(kind="slurm", options=sopts.model_copy(), python=sys.executable,
                                    submitted=now(), env_check=self.opts.env_check,
                                    data_check=self.opts.data_check)  # fmt: skip
        recorded = {s.name: s.job.id for s in rec.stages if s.job and s.status in ("queued", "running")}
        states = job_states(list(recorded.values())) if recorded else {}
        live = [n for n, j in recorded.items() if j in states and states[j].active]
        if live:
            raise RunError(
                f"stages {', '.join(live)} of this run are still queued or running",
                hint=f"see: mfnpatch recipe status {run_dir}; cancel with: mfnpatch recipe cancel {run_dir}",
            )
        submitted: list[str] = []
        prev: str | None = None
        index = 0
        try:
            for ps in self._selected(plan):
                srec = rec.stage(ps.name)
                if srec.status == "done" and srec.passed is not False:
                    continue  # its job checks provenance again if it is ever run
                if ps.skipped:
                    srec.status, srec.skipped = "skipped", ps.skipped
                    continue
                index += 1
                script = write_script(run_dir, index, rec.run_id, ps.name, ps.resources, sopts)
                jid = sbatch(script, f"afterok:{prev}" if prev else None)
                submitted.append(jid)
                srec.status, srec.ended, srec.attempts = "queued", None, []
                srec.job = JobRecord(id=jid, script=str(script.relative_to(run_dir)), submitted=now(), after=prev)
                self.obs.note(f"submitted {ps.name}: job {jid}" + (f" (after {prev})" if prev else ""))
                prev = jid
        except (MfnError, OSError) as e:
            scancel(submitted)  # all or nothing: no half-submitted chain is left queued
            given = [f"--{k.replace('_', '-')} {v}" for k in ("partition", "account", "time", "gpus_per_node")
                     if (v := getattr(sopts, k)) is not None]  # fmt: skip
            raise RunError(
                f"submission failed, cancelled the {len(submitted)} job(s) already submitted: {e}"
                + (f" (with {', '.join(given)})" if given else ""),
                hint="check the Slurm options (--partition, --account, --gpus-per-node); see docs/slurm.md",
            ) from None
        rec.status = "queued" if submitted else rec.verdict()
        self._write(run_dir, rec)
        self._write_report(run_dir, rec)
        return rec

    # -- one stage per job

    def job(self, stage: str) -> int:
        """Inside a Slurm job: run one stage of the run, with the same runner as a local run."""
        run_dir = Path(self.opts.resume).absolute()  # type: ignore[arg-type]
        self._job_stage = stage
        rec = load_record(run_dir)
        plan = self.plan(run_dir)
        srec = rec.stage(stage)
        if rec.status == "cancelled" or srec.status == "cancelled":
            self.obs.note(f"the run was cancelled; stage {stage} does not start")
            return 1
        attempt = AttemptRecord(job_id=job_id(), restart=restart_count(), host=platform.node(), started=now())
        srec.attempts.append(attempt)
        rec.status = "running"
        problem = None
        if attempt.restart > self.slurm.max_requeues:
            n = attempt.restart
            problem = f"requeued {n} time{'s' * (n != 1)}; the limit is {self.slurm.max_requeues} (--max-requeues)"
        else:
            try:
                check_frozen_tree(run_dir)
                attempt.env_check = self.check_environment(plan).get("check")
            except MfnError as e:
                problem = e.message
        if problem:
            srec.status, srec.ended, srec.passed = "failed", problem, False
            return self._end_job(rec, run_dir, plan, stage, attempt)
        self._write(run_dir, rec)
        self._install_signals(extra=(signal.SIGUSR1,))
        try:
            self._run_stages(plan, rec, run_dir, run_dir / FROZEN_TREE)
        finally:
            self._restore_signals()
        srec = rec.stage(stage)
        if srec.status == "interrupted":
            if load_record(run_dir).status == "cancelled":  # `recipe cancel` marks the run, then scancels
                rec.status = "cancelled"
                srec.status, srec.ended = "cancelled", f"{srec.ended}; cancelled (mfnpatch recipe cancel)"
            elif self._signal == "SIGUSR1" and job_id():
                # The requeue ends this process, maybe before scontrol returns: the attempt's end, the
                # record and the report are on disk first (_end_job), and only then is Slurm asked.
                srec.ended = f"{srec.ended}; the time limit is near: requeued to resume"
                rec.status = "running"
                code = self._end_job(rec, run_dir, plan, stage, attempt, interrupted_code=EXIT_INTERRUPTED)
                try:
                    requeue(job_id())  # type: ignore[arg-type]
                except SlurmError as e:
                    srec.status, srec.ended = "failed", f"{srec.ended}, but the requeue failed: {e.message}"
                    return self._end_job(rec, run_dir, plan, stage, attempt)
                return code
            else:
                rec.status = "interrupted"  # preempted or requeued: the next start resumes it
        return self._end_job(rec, run_dir, plan, stage, attempt, interrupted_code=EXIT_INTERRUPTED)

    def _end_job(self, rec, run_dir, plan, stage, attempt: AttemptRecord, interrupted_code: int = 1) -> int:
        """The end of a job's stage: the attempt's end, the record and the report are written, and only then
        are other jobs cancelled (a failed stage's dependents): whatever this process knows is on disk before
        it asks Slurm for anything that may end it."""
        srec = rec.stage(stage)
        attempt.finished, attempt.ended = now(), srec.ended
        names = [s.name for s in plan.stages]
        later = [rec.stage(n) for n in names[names.index(stage) + 1 :]]
        dependents: list[StageRecord] = []
        if srec.status in ("interrupted", "cancelled"):
            code = interrupted_code if srec.status == "interrupted" else 1
        elif srec.ok:
            code = 0
            if not any(s.job and s.status in ("queued", "running") for s in later):  # the chain's last job
                rec.finished = now()
                rec.status = rec.verdict()
        else:
            code = 1
            dependents = [s for s in later if s.job and s.status in ("queued", "running", "interrupted")]
            for s in dependents:
                s.status, s.ended = "cancelled", f"cancelled: stage {stage} did not pass"
                self._touched.add(s.name)
            rec.status, rec.finished = "failed", now()
        self._write(run_dir, rec)
        self._write_report(run_dir, rec)
        if dependents:
            try:
                scancel([s.job.id for s in dependents if s.job])
            except SlurmError as e:  # they wait on afterok of a failed job: they never start
                self.obs.note(f"scancel of the dependent jobs failed ({e.message}); they cannot start (afterok)")
        return code


def run_job(run_dir: Path, stage: str, observer: Observer | None = None, env_checker=None, data_checker=None) -> int:
    """`mfnpatch recipe job RUN STAGE`: what each Slurm job runs."""
    from mfnpatch.recipes.recipe import load_recipe

    run_dir = Path(run_dir).absolute()
    rec = load_record(run_dir)
    ex = rec.executor
    if ex.kind != "slurm":
        raise RunError(f"{run_dir} is not a Slurm run (its executor is {ex.kind})")
    rec.stage(stage)  # an unknown stage is an error here, not in the job's log only
    opts = RunOptions(
        tree=run_dir / FROZEN_TREE,
        resume=run_dir,
        only=stage,
        env_prefix=Path(rec.environment.prefix) if rec.environment.prefix else None,
        env_check=env_checker is not None and ex.env_check is not False,
        env_checker=env_checker,
        data_check=data_checker is not None and ex.data_check is not False,
        data_checker=data_checker,
    )
    sopts = ex.options or SlurmOptions()
    loaded = load_recipe(str(run_dir / "recipe.yaml"))
    runner = SlurmRunner(loaded, rec.recipe.profile, rec.recipe.overrides, opts, sopts, observer)
    return runner.job(stage)


def cancel_slurm(run_dir: Path) -> CancelResult:
    """Cancel a Slurm run: its queued and running jobs (recorded first, then scancel'ed)."""
    with record_lock(run_dir):
        rec = load_record(run_dir)
        active = [s for s in rec.stages if s.job and s.status in ("queued", "running", "interrupted")]
        if not active:
            return CancelResult("slurm", [], None, [], "nothing is queued or running")
        ids = [s.job.id for s in active if s.job]
        rec.status, rec.finished = "cancelled", now()
        for s in active:
            if s.status != "running":  # a running job records its own end when it is stopped
                s.status, s.ended = "cancelled", "cancelled (mfnpatch recipe cancel) before it ran"
        write_record(run_dir, rec)
    scancel(ids)
    return CancelResult("slurm", ids, None, [s.name for s in active], f"cancelled {len(ids)} job(s)")


def cancel_run(run_dir: Path) -> CancelResult:
    """`mfnpatch recipe cancel RUN`: cancel what is queued or running (Slurm jobs, or a local runner)."""
    from mfnpatch.runs.status import cancel_local

    run_dir = Path(run_dir).absolute()
    if load_record(run_dir).executor.kind == "slurm":
        return cancel_slurm(run_dir)
    return cancel_local(run_dir)
