"""Running a recipe: the patched tree, one subprocess per stage, a live log tee and parser, stop points,
checkpoint hand-over from logs, expectations, and a run record written atomically.

A run directory holds ``record.json`` (schema 1), ``stages/<name>.log`` (each stage's output, as printed),
``report.md`` and ``curves-<stage>.png``. ``--resume`` reuses stages completed with the same provenance
(recipe, parameters, command, patch sets, environment, inputs) and refuses, saying what changed, when it
differs. Ctrl-C or SIGTERM stops the stage's process group, records the stage as interrupted and leaves
the record whole.
"""

from __future__ import annotations

import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mfnpatch import __version__
from mfnpatch.cluster.slurm import SlurmError, SlurmOptions
from mfnpatch.errors import Interrupted, MfnError
from mfnpatch.fsutil import atomic_write, atomic_write_json, sha256_bytes, sha256_file
from mfnpatch.logs.parser import (
    CheckpointSaved,
    CheckpointWritten,
    Event,
    LogParser,
    Speed,
    Summary,
    Verification,
    summarize,
)
from mfnpatch.logs.verdicts import Check, evaluate_stage
from mfnpatch.runs.determinism import describe as describe_determinism
from mfnpatch.runs.determinism import free_cpus, seed_env
from mfnpatch.runs.recipe import LoadedRecipe, Plan, PlannedStage, expand, render_argv
from mfnpatch.runs.resume import DIFFERENCES, ResumeError, ResumePlan, Segment, merge, plan_resume, usable_checkpoints
from mfnpatch.schema import Strict, validate

RECORD = "record.json"
Status = Literal["pending", "queued", "running", "done", "failed", "interrupted", "skipped", "cancelled"]
TERM_GRACE = 15.0  # seconds between SIGTERM and SIGKILL
SAVE_GRACE = 30.0  # at most this long, a stop waits for a save in progress to finish
PARSE_HZ = 10  # how often a running stage's new output is parsed


class RunError(MfnError):
    pass


# --------------------------------------------------------------------------------------------
# The record


class StageRecord(Strict):
    name: str
    title: str
    kind: str
    status: Status = "pending"
    skipped: str | None = None
    argv: list[str] = Field(default_factory=list)
    cwd: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    seed_command: str | None = None
    stands_in: str | None = None
    inputs: dict[str, str] = Field(default_factory=dict)
    stop: dict | None = None
    ended: str | None = None  # how the process ended, in words
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    exit_code: int | None = None
    log: str | None = None
    log_sha256: str | None = None
    metrics: dict = Field(default_factory=dict)
    checks: list[dict] = Field(default_factory=list)
    passed: bool | None = None
    provenance: str | None = None
    provenance_parts: dict[str, str] = Field(default_factory=dict)
    # resumed segments (1, 2, ...) of a training stage after an interruption: each continues from the last
    # saved checkpoint with its own log and prefix (mfnpatch.runs.resume); argv and log above are segment 0's
    segments: list[dict] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    job: dict | None = None  # the Slurm job that runs the stage: {id, script, submitted}
    attempts: list[dict] = Field(default_factory=list)  # each start of that job (requeues included)
    # sha256 of each checkpoint file the stage's log says it saved (params and symbol), by absolute path
    checkpoints: dict[str, str] = Field(default_factory=dict)


class RunRecord(Strict):
    schema_: Literal[1] = Field(alias="schema", default=1)
    run_id: str
    tool: str
    # incomplete: every stage that ran passed, but some were not run (--only, --from)
    status: Literal["queued", "running", "passed", "failed", "interrupted", "incomplete", "cancelled"] = "running"
    started: str
    finished: str | None = None
    recipe: dict
    pin: dict
    tree: str
    patches: list[dict]
    environment: dict
    host: dict
    stages: list[StageRecord]
    executor: dict = Field(default_factory=dict)  # {kind: local, pid, host} or {kind: slurm, options, python}
    seed: int | None = None  # the run seed every stage's generators start from (None: unseeded)
    determinism: dict = Field(default_factory=dict)  # mfnpatch.runs.determinism.describe(seed)

    def stage(self, name: str) -> StageRecord:
        for s in self.stages:
            if s.name == name:
                return s
        raise RunError(f"the run has no stage {name}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_record(run_dir: Path) -> RunRecord:
    p = Path(run_dir) / RECORD
    if not p.is_file():
        raise RunError(f"{run_dir}: no {RECORD} (not a run directory)", hint="runs live under runs/; see ls runs/")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise RunError(f"{p}: unreadable ({e})") from None
    return validate(RunRecord, data, p)


def write_record(run_dir: Path, rec: RunRecord) -> None:
    atomic_write_json(Path(run_dir) / RECORD, rec.model_dump(by_alias=True))


# --------------------------------------------------------------------------------------------
# Observers (the CLI renders progress; tests record)


class Observer:
    def run_started(self, run_dir: Path, plan: Plan) -> None: ...
    def stage_started(self, ps: PlannedStage, total_steps: int | None) -> None: ...
    def stage_event(self, ps: PlannedStage, ev: Event, live: LiveState) -> None: ...
    def stage_output(self, ps: PlannedStage, text: str) -> None: ...
    def stage_finished(self, ps: PlannedStage, rec: StageRecord) -> None: ...
    def stage_reused(self, ps: PlannedStage, rec: StageRecord) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class LiveState:
    step: int | None = None
    total: int | None = None
    lr: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    samples_per_sec: float | None = None
    checkpoint: int | None = None


# --------------------------------------------------------------------------------------------
# Helpers


def _verbose(argv: list[str]) -> int:
    if "--verbose" in argv:
        try:
            return int(argv[argv.index("--verbose") + 1])
        except (IndexError, ValueError):
            pass
    return 2000  # train_softmax.py's default


def total_steps(ps: PlannedStage) -> int | None:
    if ps.stop is None:
        return None
    kind, n = ps.stop
    return n * _verbose(ps.argv) if kind == "checkpoint" else n


def checkpoint_files(prefix: str, number: int, cwd: Path) -> tuple[Path, Path]:
    base = Path(prefix) if Path(prefix).is_absolute() else cwd / prefix
    return Path(f"{base}-symbol.json"), Path(f"{base}-{number:04d}.params")


def _abs_prefix(prefix: str, cwd: Path) -> str:
    return str(Path(prefix) if Path(prefix).is_absolute() else (cwd / prefix).resolve())


def stage_metrics(s: Summary) -> dict:
    return {
        "targets": {t: {"best": x.best_accuracy, "best_step": x.best_step, "last": x.last_accuracy,
                        "last_step": x.last_step, "rounds": x.rounds} for t, x in s.targets().items()},
        "median_samples_per_sec": s.median_samples_per_sec,
        "checkpoints": {str(k): v for k, v in sorted(s.checkpoints.items())},
        "last_step": s.last_step,
        "python": s.python,
        "ended": s.how_it_ended(),
        "unknown_lines": s.unknown_lines,
    }  # fmt: skip


def checkpoint_hashes(s: Summary, cwd: Path) -> dict[str, str]:
    """sha256 of every checkpoint file the log says was saved (``.params`` and its ``-symbol.json``),
    by absolute path, so two runs can be compared byte for byte (and a file checked later)."""
    out: dict[str, str] = {}
    for c in s.checkpoints.values():
        path = c.get("path")
        if not path:
            continue
        p = Path(os.path.normpath(path if Path(path).is_absolute() else cwd / path))
        sym = Path(str(p)[: str(p).rfind("-")] + "-symbol.json")
        for f in (p, sym):
            if str(f) not in out and f.is_file():
                out[str(f)] = sha256_file(f)
    return dict(sorted(out.items()))


def stage_summary(run_dir: Path, srec: StageRecord) -> Summary | None:
    """The stage's log summary, its resumed segments merged in (stage steps and save numbers)."""
    if not srec.log or not (Path(run_dir) / srec.log).is_file():
        return None
    parts = [(summarize(Path(run_dir) / srec.log), Segment(0, srec.log))]
    for seg in srec.segments:
        p = Path(run_dir) / seg["log"]
        if p.is_file():
            parts.append(
                (summarize(p), Segment(seg["index"], seg["log"], seg["prefix"], seg["start_step"], seg["start_save"]))
            )
    return merge(parts)


def probe_python(python: str, env: dict[str, str]) -> dict:
    """The interpreter a recipe runs: its path, Python and MXNet versions (MXNet may be absent)."""
    exe = shutil.which(python, path=env.get("PATH"))
    out: dict[str, Any] = {"python": python, "path": exe}
    if exe is None:
        out["error"] = f"{python} is not on PATH"
        return out
    code = (
        "import sys, json; d = {'version': sys.version.split()[0]}\n"
        "try:\n import mxnet as mx; d['mxnet'] = mx.__version__\n"
        " d['mxnet_features'] = sorted(f.name for f in mx.runtime.Features().values() if f.enabled)\n"
        "except Exception as e:\n d['mxnet_error'] = type(e).__name__ + ': ' + str(e)[:200]\n"
        "print(json.dumps(d))"
    )
    try:
        r = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        out.update(json.loads(r.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError, OSError) as e:
        out["error"] = f"probe failed: {e}"
    return out


# --------------------------------------------------------------------------------------------
# The runner


@dataclass
class RunOptions:
    tree: Path
    run_dir: Path | None = None
    source: str | None = None
    resume: Path | None = None
    from_stage: str | None = None
    only: str | None = None
    keep_going: bool = False
    force: bool = False
    env_check: bool = True
    env_checker: Callable[..., dict] | None = None
    env_prefix: Path | None = None  # the environment the stages run in (its bin/ goes first on PATH)
    executor: Literal["local", "slurm"] = "local"
    slurm: SlurmOptions | None = None


class Runner:
    def __init__(
        self,
        loaded: LoadedRecipe,
        profile: str | None,
        overrides: dict[str, str],
        opts: RunOptions,
        observer: Observer | None = None,
    ):
        self.loaded = loaded
        self.profile = profile
        self.overrides = overrides
        self.opts = opts
        self.obs = observer or Observer()
        self._signal: str | None = None
        self._job_stage: str | None = None  # set in a Slurm job: the one stage this process runs
        self._touched: set[str] = set()  # stages this job changed besides its own (dependents it cancelled)
        self.parse_cpu = 0.0  # CPU seconds spent in the live parser (benchmarks/bench_runner.py)

    # -- setup

    def _run_dir(self) -> Path:
        if self.opts.resume:
            return Path(self.opts.resume).absolute()
        if self.opts.run_dir:
            return Path(self.opts.run_dir).absolute()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = self.loaded.recipe.name + (f"-{self.profile}" if self.profile else "")
        base = Path("runs") / f"{name}-{stamp}"
        d, n = base, 1
        while d.exists():
            d, n = base.with_name(f"{base.name}.{n}"), n + 1
        return d.absolute()

    def _cpu_free(self, run_dir: Path) -> str:
        """${cpu_free}: sampled once when a run starts and recorded; a resumed run (or a Slurm job of the run)
        uses the recorded value, so its provenance does not change with the machine's load."""
        if getattr(self, "_free", None) is None:
            recorded = None
            if (Path(run_dir) / RECORD).is_file():
                try:
                    recorded = load_record(run_dir).recipe.get("cpu_free")
                except MfnError:
                    recorded = None
            self._free = str(recorded) if recorded else str(free_cpus())
        return self._free

    def plan(self, run_dir: Path) -> Plan:
        self._builtins = {
            "run_dir": str(run_dir),
            "tree": str(run_dir / "tree" if self.opts.executor == "slurm" else Path(self.opts.tree).absolute()),
            "cpu_count": str(os.cpu_count() or 1),
            "cpu_free": self._cpu_free(run_dir),
            "mfnpatch": [sys.executable, "-m", "mfnpatch"],
            "python_exe": sys.executable,
        }
        plan = expand(self.loaded, self.profile, self.overrides, self._builtins)
        self._seed = plan.seed
        self._cwd_of = {s.name: s.cwd for s in plan.stages}
        self._outputs = {s.name: s.outputs for s in plan.stages}
        return plan

    def _prepare_tree(self, plan: Plan, sets):
        from mfnpatch.source.tree import prepare_tree, tree_lock
        from mfnpatch.source.worktree import apply

        with tree_lock(self.opts.tree, on_wait=self.obs.note):
            prepared = prepare_tree(plan.recipe.pin, self.opts.tree, self.opts.source)
            if prepared.tree.recovered:
                self.obs.note(f"tree {prepared.tree.root}: {prepared.tree.recovered}")
            outcome = apply(prepared.tree, sets, source=prepared.source)
        self.obs.note(
            f"tree {prepared.tree.root}: {', '.join(outcome.sets)} at {prepared.tree.pin.short} "
            f"({'already applied' if outcome.action in ('nothing', 'adopted') else outcome.action})"
        )
        return prepared.tree, sets

    # -- the run

    def run(self) -> tuple[Path, RunRecord]:
        run_dir = self._run_dir()
        plan = self.plan(run_dir)
        names = [s.name for s in plan.stages]
        for flag, v in (("--from", self.opts.from_stage), ("--only", self.opts.only)):
            if v is not None and v not in names:
                raise RunError(
                    f"{flag} {v}: recipe {plan.recipe.name} has no such stage", hint=f"stages: {', '.join(names)}"
                )
        previous = load_record(run_dir) if self.opts.resume else None
        if not self.opts.resume and run_dir.exists() and any(run_dir.iterdir()):
            raise RunError(
                f"{run_dir} exists and is not empty", hint="use --resume to continue it, or another --run-dir"
            )
        if previous is not None and previous.recipe.get("name") != plan.recipe.name:
            raise RunError(
                f"{run_dir} is a run of recipe {previous.recipe.get('name')}, not {plan.recipe.name}; nothing changed",
                hint=f"continue it with its own recipe: mfnpatch recipe run {previous.recipe.get('name')} --resume "
                f"{run_dir}",
            )
        fresh_dir = None if previous is not None else run_dir.exists()  # existed (empty) or not; None: resume
        from mfnpatch.resources import data_dir
        from mfnpatch.source.patchset import Catalog, select_sets
        from mfnpatch.source.pin import resolve_pin

        sets = select_sets(Catalog.scan(data_dir("patches")), plan.patches)
        pin = resolve_pin(plan.recipe.pin)
        env_info: dict[str, Any] = {"name": plan.environment, "prefix": str(self._env_prefix())}
        if self.opts.env_check and self.opts.env_checker is not None:
            if self.opts.executor == "slurm":
                env_info.update(self.opts.env_checker(plan, self._env_prefix(), gpus_checked_by_jobs=True))
                if str(env_info.get("check", "")).startswith("deferred"):
                    self.obs.note(f"environment {plan.environment}: {env_info['check']}")
            else:
                env_info.update(self.opts.env_checker(plan, self._env_prefix()))
        probe_env = {
            **self._base_env(),
            **next((s.env for s in plan.stages if s.kind == "train" and not s.skipped), {}),
        }
        env_info["interpreter"] = probe_python(plan.parameters.get("python", "python"), probe_env)
        rec = RunRecord(
            schema=1,
            run_id=run_dir.name,
            tool=f"mfnpatch {__version__}",
            started=_now(),
            recipe={"name": plan.recipe.name, "path": str(self.loaded.path), "sha256": self.loaded.sha256,
                    "profile": self.profile, "parameters": plan.parameters, "seed_update": plan.recipe.seed_update},
            pin={"commit": pin.commit, "tree": pin.manifest.tree},
            tree=str(Path(self.opts.tree).absolute()),
            patches=[{"name": s.name, "version": s.version, "sha256": s.sha256} for s in sets],
            environment=env_info,
            host={"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
                  "python": platform.python_version()},
            stages=[StageRecord(name=s.name, title=s.title, kind=s.kind) for s in plan.stages],
            seed=plan.seed,
            determinism=describe_determinism(plan.seed),
        )  # fmt: skip
        if previous is not None:
            for s in rec.stages:
                try:
                    old = previous.stage(s.name)
                except RunError:
                    continue
                rec.stages[rec.stages.index(s)] = old
            rec.started = previous.started
            rec.executor = previous.executor
            # refused or not, decided here: a refused --resume writes nothing (record, tree, run directory)
            self._check_resumable(plan, rec, run_dir, Path(self.opts.tree).absolute())
        tree, _ = self._prepare_tree(plan, sets)
        rec.tree = str(tree.root)
        (run_dir / "stages").mkdir(parents=True, exist_ok=True)
        rec.recipe["overrides"] = dict(self.overrides)
        rec.recipe["cpu_free"] = int(self._builtins["cpu_free"])
        if self.opts.executor == "slurm":
            try:
                return run_dir, self._submit(plan, rec, run_dir, tree.root, previous)
            except MfnError:
                if fresh_dir is not None:  # a new run that queued nothing leaves no run directory behind
                    _remove_new_run_dir(run_dir, keep_dir=fresh_dir)
                raise
        rec.executor = {"kind": "local", "pid": os.getpid(), "host": platform.node()}
        self._write(run_dir, rec)
        self.obs.run_started(run_dir, plan)
        self._install_signals()
        try:
            self._run_stages(plan, rec, run_dir, tree.root)
        finally:
            self._restore_signals()
            rec.finished = _now()
            if rec.status == "running":
                rec.status = _verdict(rec.stages)
            self._write(run_dir, rec)
            self._write_report(run_dir, rec)
        if rec.status == "interrupted":
            raise Interrupted(
                f"interrupted by {self._signal}; the run record is {run_dir / RECORD}",
                hint=f"continue with: mfnpatch recipe run {self.loaded.path} --resume {run_dir}",
            )
        return run_dir, rec

    # -- Slurm: submission (here) and one stage per job (job)

    def _submit(self, plan: Plan, rec: RunRecord, run_dir: Path, tree_root: Path, previous) -> RunRecord:
        from mfnpatch.cluster.slurm import FROZEN_TREE, check_frozen_tree, freeze_tree, sbatch, scancel, write_script

        sopts = self.opts.slurm or SlurmOptions()
        if previous is not None and (run_dir / FROZEN_TREE).is_dir():
            check_frozen_tree(run_dir)  # a resubmission runs the code first submitted
        else:
            freeze_tree(tree_root, run_dir)
            atomic_write(run_dir / "recipe.yaml", self.loaded.path.read_bytes())
        rec.tree = str(run_dir / FROZEN_TREE)
        rec.executor = {"kind": "slurm", "options": sopts.to_dict(), "python": sys.executable,
                        "submitted": _now(), "env_check": self.opts.env_check}  # fmt: skip
        recorded = {s.name: s.job["id"] for s in rec.stages if s.job and s.status in ("queued", "running")}
        if recorded:
            from mfnpatch.cluster.slurm import ACTIVE_JOB_STATES, job_states

            states = job_states(list(recorded.values()))
            live = [n for n, j in recorded.items() if states.get(j, {}).get("state") in ACTIVE_JOB_STATES]
        else:
            live = []
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
                srec.job = {"id": jid, "script": str(script.relative_to(run_dir)), "submitted": _now(),
                            "after": prev}  # fmt: skip
                self.obs.note(f"submitted {ps.name}: job {jid}" + (f" (after {prev})" if prev else ""))
                prev = jid
        except (SlurmError, OSError) as e:
            scancel(submitted)  # all or nothing: no half-submitted chain is left queued
            given = [f"--{k.replace('_', '-')} {v}" for k in ("partition", "account", "time", "gpus_per_node")
                     if (v := getattr(sopts, k)) is not None]  # fmt: skip
            raise RunError(
                f"submission failed, cancelled the {len(submitted)} job(s) already submitted: {e}"
                + (f" (with {', '.join(given)})" if given else ""),
                hint="check the Slurm options (--partition, --account, --gpus-per-node); see docs/slurm.md",
            ) from None
        rec.status = "queued" if submitted else rec.status
        if not submitted:
            rec.status = _verdict(rec.stages)
        self._write(run_dir, rec)
        self._write_report(run_dir, rec)
        return rec

    def job(self, stage: str) -> int:
        """Inside a Slurm job: run one stage of the run, with the same runner as a local run."""
        from mfnpatch.cluster.slurm import check_frozen_tree, job_id, requeue, restart_count
        from mfnpatch.errors import EXIT_INTERRUPTED

        run_dir = Path(self.opts.resume).absolute()  # type: ignore[arg-type]
        self._job_stage = stage
        rec = load_record(run_dir)
        plan = self.plan(run_dir)
        srec = rec.stage(stage)
        if rec.status == "cancelled" or srec.status == "cancelled":
            self.obs.note(f"the run was cancelled; stage {stage} does not start")
            return 1
        sopts = self.opts.slurm or SlurmOptions()
        attempt = {"job_id": job_id(), "restart": restart_count(), "host": platform.node(), "started": _now()}
        srec.attempts.append(attempt)
        rec.status = "running"
        problem = None
        if attempt["restart"] > sopts.max_requeues:
            n = attempt["restart"]
            problem = f"requeued {n} time{'s' * (n != 1)}; the limit is {sopts.max_requeues} (--max-requeues)"
        else:
            try:
                check_frozen_tree(run_dir)
                if self.opts.env_check and self.opts.env_checker is not None:
                    attempt["env_check"] = self.opts.env_checker(plan, self._env_prefix()).get("check")
            except MfnError as e:
                problem = e.message
        if problem:
            srec.status, srec.ended, srec.passed = "failed", problem, False
            self._end_job(rec, run_dir, plan, stage, attempt)
            return 1
        self._write(run_dir, rec)
        self._install_signals(extra=(signal.SIGUSR1,))
        try:
            self._run_stages(plan, rec, run_dir, run_dir / "tree")
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

    def _end_job(self, rec, run_dir, plan, stage, attempt, interrupted_code: int = 1) -> int:
        """The end of a Slurm job's stage: the attempt's end, the record and the report are written, and only
        then are other jobs cancelled (a failed stage's dependents): whatever this process knows is on disk
        before it asks Slurm for anything that may end it."""
        from mfnpatch.cluster.slurm import scancel

        srec = rec.stage(stage)
        attempt["finished"], attempt["ended"] = _now(), srec.ended
        names = [s.name for s in plan.stages]
        later = [rec.stage(n) for n in names[names.index(stage) + 1 :]]
        dependents: list[StageRecord] = []
        if srec.status in ("interrupted", "cancelled"):
            code = interrupted_code if srec.status == "interrupted" else 1
        elif srec.status in ("done", "skipped") and srec.passed is not False:
            code = 0
            if not any(s.job and s.status in ("queued", "running") for s in later):  # the chain's last job
                rec.finished = _now()
                rec.status = _verdict(rec.stages)
        else:
            code = 1
            dependents = [s for s in later if s.job and s.status in ("queued", "running", "interrupted")]
            for s in dependents:
                s.status, s.ended = "cancelled", f"cancelled: stage {stage} did not pass"
                self._touched.add(s.name)
            rec.status, rec.finished = "failed", _now()
        self._write(run_dir, rec)
        self._write_report(run_dir, rec)
        if dependents:
            try:
                scancel([s.job["id"] for s in dependents])  # type: ignore[index]
            except SlurmError as e:  # they wait on afterok of a failed job: they never start
                self.obs.note(f"scancel of the dependent jobs failed ({e.message}); they cannot start (afterok)")
        return code

    def _write(self, run_dir: Path, rec: RunRecord) -> None:
        """Write the record. In a Slurm job, under the run's lock and only this job's stages (others are
        other jobs' or `recipe cancel`'s); a cancellation made meanwhile is taken in."""
        if self._job_stage is None:
            write_record(run_dir, rec)
            return
        from mfnpatch.cluster.slurm import record_lock

        with record_lock(run_dir):
            cur = load_record(run_dir)
            mine = {self._job_stage} | self._touched
            cur.stages = [rec.stage(s.name) if s.name in mine else s for s in cur.stages]
            if cur.status == "cancelled":
                rec.status = "cancelled"
            else:
                cur.status, cur.finished = rec.status, rec.finished
            write_record(run_dir, cur)
        for i, s in enumerate(cur.stages):  # what other processes wrote, for this job's later decisions
            if s.name not in mine:
                rec.stages[i] = s

    def _selected(self, plan: Plan) -> list[PlannedStage]:
        names = [s.name for s in plan.stages]
        if self.opts.only:
            return [plan.stage(self.opts.only)]
        if self.opts.from_stage:
            return plan.stages[names.index(self.opts.from_stage) :]
        return plan.stages

    def _run_stages(self, plan: Plan, rec: RunRecord, run_dir: Path, tree_root: Path) -> None:
        selected = {s.name for s in self._selected(plan)}
        done: dict[str, StageRecord] = {s.name: s for s in rec.stages if s.status == "done"}
        for ps in plan.stages:
            srec = rec.stage(ps.name)
            if ps.name not in selected:
                continue
            if ps.skipped:
                srec.status, srec.skipped = "skipped", ps.skipped
                self._write(run_dir, rec)
                self.obs.stage_finished(ps, srec)
                continue
            inputs = self._resolve_inputs(ps, rec, run_dir, tree_root)
            ps = self._with_inputs(plan, ps, inputs)
            parts = self._provenance(plan, rec, ps, inputs)
            key = sha256_bytes(json.dumps(parts, sort_keys=True).encode())
            if srec.status == "done" and self.opts.resume:
                if srec.provenance == key:
                    self.obs.stage_reused(ps, srec)
                    continue
                changed = [
                    f"{k}: {srec.provenance_parts.get(k, '(absent)')[:12]} -> {v[:12]}"
                    for k, v in parts.items()
                    if srec.provenance_parts.get(k) != v
                ]
                if not self.opts.force:
                    raise RunError(
                        f"stage {ps.name} was completed with a different provenance; refusing to reuse or redo it",
                        details=changed,
                        hint="rerun it anyway with --force, or start a new run without --resume",
                    )
                self.obs.note(f"stage {ps.name}: provenance changed ({'; '.join(changed)}); running it again (--force)")
            resume = None
            started_before = srec.status == "queued" and srec.log  # resubmitted to Slurm after it had run
            if self.opts.resume and (
                srec.status in ("interrupted", "failed", "running", "cancelled") or started_before
            ):
                resume = self._resume_plan(ps, srec, run_dir, tree_root, key, parts)
            if resume == "complete":
                self._complete_from_segments(ps, srec, run_dir, tree_root)
                self._write(run_dir, rec)
                done[ps.name] = srec
                continue
            self._check_input_files(ps, inputs, tree_root)
            srec = self._execute(ps, rec, run_dir, tree_root, inputs, resume, (key, parts))  # type: ignore[arg-type]
            self._write(run_dir, rec)
            done[ps.name] = srec
            if srec.status == "interrupted":
                rec.status = "interrupted"
                return
            if srec.status != "done" or srec.passed is False:
                if not self.opts.keep_going:
                    rec.status = "failed"
                    return

    def _check_resumable(self, plan: Plan, rec: RunRecord, run_dir: Path, tree_root: Path) -> None:
        """--resume: every stage it would reuse or continue still has the provenance it was run with (or
        --force); checked before anything is written, so a refusal changes nothing."""
        if self.opts.force:
            return
        for ps in self._selected(plan):
            srec = rec.stage(ps.name)
            if not srec.provenance or ps.skipped:
                continue
            if srec.status != "done":  # continued from its checkpoints only if it is training and saved some
                merged = stage_summary(run_dir, srec) if ps.kind == "train" and srec.log else None
                if srec.status not in ("interrupted", "failed", "running", "cancelled", "queued") or not (
                    merged and merged.checkpoints
                ):
                    continue
            try:
                inputs = self._resolve_inputs(ps, rec, run_dir, tree_root)
            except RunError:
                continue  # an input is missing: the stage cannot run anyway, and says so when it is reached
            parts = self._provenance(plan, rec, self._with_inputs(plan, ps, inputs), inputs)
            key = sha256_bytes(json.dumps(parts, sort_keys=True).encode())
            if srec.provenance == key:
                continue
            changed = [
                f"{k}: {srec.provenance_parts.get(k, '(absent)')[:12]} -> {v[:12]}"
                for k, v in parts.items()
                if srec.provenance_parts.get(k) != v
            ]
            how = "completed" if srec.status == "done" else "stopped part way"
            raise RunError(
                f"stage {ps.name} was {how} with a different provenance; refusing to reuse or redo it; nothing changed",
                details=changed,
                hint="rerun it anyway with --force, or start a new run without --resume",
            )

    def _with_inputs(self, plan: Plan, ps: PlannedStage, inputs: dict[str, str]) -> PlannedStage:
        """Render the stage's command again with its inputs resolved from the logs."""
        if not inputs:
            return ps
        from mfnpatch.runs.recipe import Scope

        scope = Scope(dict(plan.parameters), self._builtins)
        scope.outputs = dict(self._outputs)
        scope.inputs = inputs
        argv = render_argv(ps.template, scope)
        copies = [(scope.render(c.checkpoint), scope.render(c.to)) for c in ps.template.copy_]
        return PlannedStage(**{**ps.__dict__, "argv": argv, "copies": copies})

    def _provenance(self, plan: Plan, rec: RunRecord, ps: PlannedStage, inputs: dict[str, str]) -> dict[str, str]:
        h = lambda obj: sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())  # noqa: E731
        ups = {}
        for key, pin in ps.inputs.items():
            ups[key] = rec.stage(pin.ref.stage).provenance or ""
        return {
            "recipe": plan.loaded.sha256,
            "profile": h(self.profile),
            "parameters": h(plan.parameters),
            "command": h({"argv": ps.argv, "env": ps.env, "cwd": ps.cwd, "copy": ps.copies}),
            "patches": h(rec.patches),
            "environment": h({k: v for k, v in rec.environment.items() if k in ("name", "lock_sha256")}),
            "inputs": h(ups),
            "seed": h(plan.seed),
        }

    # -- inputs

    def _resolve_inputs(self, ps: PlannedStage, rec: RunRecord, run_dir: Path, tree_root: Path) -> dict[str, str]:
        out = {}
        for key, pin in ps.inputs.items():
            ref = pin.ref
            src = rec.stage(ref.stage)
            if src.status != "done" or not src.log:
                raise RunError(
                    f"stage {ps.name} needs {pin.describe}, but stage {ref.stage} has not completed in this run",
                    hint=f"run it first, or continue a run that has it: --resume RUN_DIR (status of {ref.stage}: "
                    f"{src.status})",
                )
            summary = stage_summary(run_dir, src)
            number = self._pick_checkpoint(ref, summary, ps.name)
            prefix = self._outputs.get(ref.stage, {}).get("checkpoint")
            if prefix is None:
                raise RunError(f"stage {ref.stage} declares no checkpoint output for {ps.name} to use")
            c = summary.checkpoints.get(number, {}) if summary else {}
            if c.get("segment"):  # saved by a resumed segment: its own prefix and save number
                seg = next(x for x in src.segments if x["index"] == c["segment"])
                prefix, number = seg["prefix"], c["number"]
            src_cwd = tree_root / self._cwd_of[ref.stage]
            same_cwd = self._cwd_of[ref.stage] == ps.cwd
            out[key] = f"{prefix if same_cwd else _abs_prefix(prefix, src_cwd)},{number}"
        return out

    def _check_input_files(self, ps: PlannedStage, inputs: dict[str, str], tree_root: Path) -> None:
        """Right before a stage runs: the checkpoints its log-resolved inputs name are on disk."""
        cwd = tree_root / ps.cwd
        for key, value in inputs.items():
            prefix, _, num = value.rpartition(",")
            missing = [str(p) for p in checkpoint_files(prefix, int(num), cwd) if not p.is_file()]
            if missing:
                src = ps.inputs[key].ref.stage
                raise RunError(
                    f"stage {ps.name} needs checkpoint {num} of {src}: its log saved it, but "
                    f"{', '.join(missing)} is missing",
                    hint=f"the checkpoint files were moved or deleted; rerun stage {src}",
                )

    def _pick_checkpoint(self, ref, s: Summary | None, user: str) -> int:
        if s is None:
            raise RunError(f"stage {user} needs a checkpoint of {ref.stage}, whose log is missing")
        saved = {n: c for n, c in s.checkpoints.items() if c.get("path") or c.get("step") is not None}
        have = f"it saved {_ranges(sorted(saved))}" if saved else "it saved none"
        if ref.checkpoint is not None:
            if ref.checkpoint not in saved:
                raise RunError(
                    f"stage {user} needs checkpoint {ref.checkpoint} of {ref.stage}, which its log "
                    f"never saved ({have})",
                    hint=f"see: mfnpatch log summary of the {ref.stage} log",
                )
            return int(ref.checkpoint)
        if ref.step is not None:
            for n, c in saved.items():
                if c.get("step") == ref.step:
                    return n
            raise RunError(
                f"stage {user} needs the {ref.stage} checkpoint saved at step {ref.step}; its log has "
                f"none there ({have}, every --verbose steps)"
            )
        if ref.last:
            if not saved:
                raise RunError(f"stage {user} needs the last checkpoint of {ref.stage}; {have}")
            return max(saved)
        target = ref.best
        accs = s.verifications.get(target or "", {})
        best = None
        for n, c in sorted(saved.items()):
            st = c.get("step")
            if st in accs and (
                best is None
                or accs[st][0] > accs[best[1]][0]
                or (ref.tie == "latest" and accs[st][0] == accs[best[1]][0])
            ):
                best = (n, st)
        if best is None:
            raise RunError(
                f"stage {user} needs the {ref.stage} checkpoint with the best {target}; the log has no "
                f"{target} result at a saved checkpoint ({have})"
            )
        return best[0]

    # -- one stage

    def _resume_plan(self, ps, srec, run_dir, tree_root, key, parts) -> ResumePlan | str | None:
        """How an interrupted or failed training stage continues: a resumed segment from its last saved
        checkpoint, "complete" when it had already reached its stop point, None to run it from the start."""
        if ps.kind != "train" or not srec.log:
            return None
        merged = stage_summary(run_dir, srec)
        if merged is None or not merged.checkpoints:
            return None
        if srec.provenance and srec.provenance != key:
            if self.opts.force:
                self.obs.note(f"stage {ps.name}: provenance changed; running it again from its start (--force)")
                return None
            changed = [
                f"{k}: {srec.provenance_parts.get(k, '(absent)')[:12]} -> {v[:12]}"
                for k, v in parts.items()
                if srec.provenance_parts.get(k) != v
            ]
            raise RunError(
                f"stage {ps.name} stopped part way with a different provenance; refusing to continue it",
                details=changed,
                hint="run it again from its start with --force, or start a new run without --resume",
            )
        prefix0 = self._outputs.get(ps.name, {}).get("checkpoint") or ""
        usable = usable_checkpoints(merged, prefix0, tree_root / ps.cwd)
        if not usable:
            return None
        if ps.stop and ps.stop[0] == "checkpoint" and max(usable) >= ps.stop[1]:
            return "complete"
        try:
            return plan_resume(ps.argv, merged, len(srec.segments), ps.stop, usable)
        except ResumeError as e:
            raise RunError(f"stage {ps.name} cannot be resumed: {e.message}", hint=e.hint or "") from None

    def _complete_from_segments(self, ps, srec, run_dir, tree_root) -> None:
        """The stage saved its stop checkpoint before it was interrupted: it is done; check it."""
        merged = stage_summary(run_dir, srec)
        srec.status = "done"
        srec.ended = f"reached checkpoint {ps.stop[1]} before it was interrupted"  # type: ignore[index]
        srec.metrics = stage_metrics(merged) if merged else {}
        srec.checkpoints = checkpoint_hashes(merged, tree_root / ps.cwd) if merged else {}
        checks = self._checks(ps, srec, merged, tree_root / ps.cwd)
        srec.checks = [c.__dict__ for c in checks]
        srec.passed = all(c.verdict == "pass" for c in checks if c.required)
        self.obs.stage_finished(ps, srec)

    def _execute(
        self,
        ps: PlannedStage,
        rec: RunRecord,
        run_dir: Path,
        tree_root: Path,
        inputs: dict[str, str],
        resume: ResumePlan | None = None,
        provenance: tuple[str, dict[str, str]] | None = None,
    ) -> StageRecord:
        srec = rec.stage(ps.name)
        cwd = tree_root / ps.cwd
        if provenance is not None:
            srec.provenance, srec.provenance_parts = provenance
        if resume is None:
            log_rel = f"stages/{ps.name}.log"
            srec.status, srec.argv, srec.cwd, srec.env = "running", ps.argv, ps.cwd, ps.env
            srec.seed_command, srec.stands_in, srec.inputs = ps.seed_command, ps.stands_in, inputs
            srec.stop = {"kind": ps.stop[0], "value": ps.stop[1], "why": ps.stop_why} if ps.stop else None
            srec.started, srec.log, srec.exit_code, srec.ended, srec.checks, srec.passed = (
                _now(), log_rel, None, None, [], None,
            )  # fmt: skip
            srec.seconds, srec.segments, srec.notes = None, [], []
            run_ps, offsets = ps, (0, 0)
        else:
            log_rel = f"stages/{ps.name}.r{resume.segment}.log"
            srec.status, srec.exit_code, srec.ended, srec.checks, srec.passed = "running", None, None, [], None
            srec.segments.append({
                "index": resume.segment, "log": log_rel, "prefix": resume.prefix, "argv": resume.argv,
                "start_step": resume.from_step, "start_save": resume.from_save, "pretrained": resume.pretrained,
                "lr": resume.lr, "lr_steps": resume.lr_steps, "started": _now(), "notes": resume.notes,
            })  # fmt: skip
            if not srec.notes:
                srec.notes = [f"a resumed segment differs from an uninterrupted run: {d}" for d in DIFFERENCES]
            run_ps = PlannedStage(**{**ps.__dict__, "argv": resume.argv, "stop": resume.stop})
            offsets = (resume.from_step, resume.from_save)
            self.obs.note(f"{ps.name}: {resume.describe()}")
        if self._job_stage is not None and "CUDA_VISIBLE_DEVICES" in run_ps.env:
            from mfnpatch.cluster.slurm import allocated_gpus

            gpus = allocated_gpus()
            if gpus is not None and gpus != run_ps.env["CUDA_VISIBLE_DEVICES"]:
                srec.notes.append(
                    f"CUDA_VISIBLE_DEVICES={gpus}: the GPUs Slurm allocated to the job "
                    f"(the recipe's {run_ps.env['CUDA_VISIBLE_DEVICES']!r} names GPUs of a whole machine)"
                )
                run_ps = PlannedStage(**{**run_ps.__dict__, "env": {**run_ps.env, "CUDA_VISIBLE_DEVICES": gpus}})
        log_path = run_dir / log_rel
        self._write(run_dir, rec)
        total = total_steps(ps)
        self.obs.stage_started(ps, total)
        t0 = time.monotonic()
        if log_path.exists():  # a rerun of the stage (--resume): keep the old log beside the new one
            log_path.rename(log_path.with_name(f"{log_path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.log"))
        try:
            cwd.mkdir(parents=True, exist_ok=True)
            for src, dst in run_ps.copies:
                self._copy_checkpoint(src, dst, cwd)
            code, ended, _ = self._spawn(run_ps, cwd, log_path, total, offsets)
        except OSError as e:
            code, ended = None, f"could not start: {e}"
        seconds = round(time.monotonic() - t0, 3)
        srec.seconds = round((srec.seconds or 0.0) + seconds, 3) if resume else seconds
        srec.finished = _now()
        srec.exit_code = code
        if log_path.exists() and resume is None:
            srec.log_sha256 = sha256_file(log_path)
        if resume is not None:
            seg = srec.segments[-1]
            seg.update({"finished": srec.finished, "seconds": seconds, "exit_code": code, "ended": ended})
            if log_path.exists():
                seg["log_sha256"] = sha256_file(log_path)
            ended = f"{ended} (segment {resume.segment}, resumed from checkpoint {resume.from_save})"
        srec.ended = ended
        summary = stage_summary(run_dir, srec) if ps.kind == "train" else None
        if summary is not None:
            srec.metrics = stage_metrics(summary)
            srec.checkpoints = checkpoint_hashes(summary, cwd)
        if self._signal:
            srec.status = "interrupted"
        elif ended.startswith("stopped at") or code == 0:
            srec.status = "done"
        else:
            srec.status = "failed"
        if (
            srec.status == "done"
            and ps.kind == "train"
            and ps.stop
            and ps.stop[0] == "checkpoint"
            and ended.startswith("exited")
        ):
            got = summary.checkpoints.get(ps.stop[1]) if summary else None
            if not got:
                srec.status = "failed"
                srec.ended = f"{ended}, before its stop point (checkpoint {ps.stop[1]})"
        if srec.status == "done":
            checks = self._checks(ps, srec, summary, cwd)
            srec.checks = [c.__dict__ for c in checks]
            srec.passed = all(c.verdict == "pass" for c in checks if c.required)
        self.obs.stage_finished(ps, srec)
        return srec

    def _checks(self, ps: PlannedStage, srec: StageRecord, summary: Summary | None, cwd: Path) -> list[Check]:
        checks = [
            Check("exit", "pass", f"{ps.name}: {srec.ended}", True, "planned stop or exit 0", srec.ended, "stage")
        ]
        checks += evaluate_stage(ps.expect, summary, cwd)
        return checks

    def _copy_checkpoint(self, src: str, dst: str, cwd: Path) -> None:
        prefix, _, num = src.rpartition(",")
        if not num.isdigit():
            raise RunError(f"copy: {src!r} is not PREFIX,EPOCH")
        n = int(num)
        sym, params = checkpoint_files(prefix, n, cwd)
        dsym, dparams = checkpoint_files(dst, n, cwd)
        for a, b in ((sym, dsym), (params, dparams)):
            if not a.is_file():
                raise RunError(f"copy: {a} does not exist", hint="the stage that writes it did not complete")
            atomic_write(b, a.read_bytes())

    def _env_prefix(self) -> Path:
        return Path(self.opts.env_prefix or sys.prefix).absolute()

    def _base_env(self) -> dict[str, str]:
        """The process environment of every stage: the recipe environment's bin/ first on PATH."""
        env = dict(os.environ)
        env["PATH"] = str(self._env_prefix() / "bin") + os.pathsep + env.get("PATH", "")
        return env

    def _spawn(self, ps: PlannedStage, cwd: Path, log_path: Path, total: int | None, offsets: tuple[int, int] = (0, 0)):
        """Run the stage's process; events reach observers in stage steps (``offsets``: the step and save
        number a resumed segment starts from), stop points are checked in the process's own numbering."""
        env = {**self._base_env(), **ps.env}
        env.update(seed_env(self._seed, env))
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(
            ps.argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_child_setup,
        )
        parser = LogParser(events=True, path=str(log_path))
        self._symbols: set[Path] = set()  # the symbol files the trainer writes (rewritten at every save)
        live = LiveState(total=total)
        stop_reason: str | None = None
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        pending = bytearray()
        last = 0.0

        def process() -> None:
            nonlocal stop_reason, last
            last = time.monotonic()
            if not pending:
                return
            data = bytes(pending)
            pending.clear()
            log.flush()
            if ps.kind != "train":
                self.obs.stage_output(ps, data.decode("utf-8", "replace"))
            t = time.process_time()
            events = parser.feed_bytes(data)
            self.parse_cpu += time.process_time() - t
            for ev in events:
                if isinstance(ev, CheckpointWritten):
                    self._symbols.add(checkpoint_files(ev.path.rsplit("-", 1)[0], 0, cwd)[0])
                if stop_reason is None:
                    stop_reason = self._reached_stop(ps, ev, cwd)
                if offsets != (0, 0):
                    ev = _shift(ev, *offsets)
                self._update(live, ev)
                self.obs.stage_event(ps, ev, live)

        # Output goes to the log as it comes; it is flushed and parsed at most PARSE_HZ times a second,
        # in batches, so a chatty process costs the runner little (a stop point is seen <= 1/PARSE_HZ s late).
        with open(log_path, "ab") as log:
            eof = False
            while not eof:
                r, _, _ = select.select([fd], [], [], 1.0 / PARSE_HZ)
                data = b""
                if r:
                    data = os.read(fd, 1 << 16)
                    if data:
                        log.write(data)
                        pending += data
                    else:
                        eof = True
                saved = ps.stop is not None and b"Saved checkpoint" in data  # a stop point may have come: look now
                if eof or saved or time.monotonic() - last >= 1.0 / PARSE_HZ or len(pending) > (1 << 20):
                    process()
                elif data and len(data) < (1 << 16) and stop_reason is None and self._signal is None:
                    # little output: let more collect in the pipe until the next tick (a full read skips this)
                    time.sleep(max(0.0, last + 1.0 / PARSE_HZ - time.monotonic()))
                if stop_reason is None and self._signal is None:
                    continue
                self._terminate(proc)
                while True:  # drain what the process printed before it ended
                    r, _, _ = select.select([fd], [], [], 1.0)
                    if not r:
                        break
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        break
                    log.write(chunk)
                    pending += chunk
                process()
                break
            parser.close()
        code = proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        summary = parser.summary()
        if self._signal:
            ended = f"interrupted ({self._signal}); the process was stopped"
        elif stop_reason:
            kind, n = ps.stop  # type: ignore[misc]
            off = offsets[1] if kind == "checkpoint" else offsets[0]  # in the stage's numbering
            ended = f"stopped at {kind} {n + off} (planned), by mfnpatch"
            beyond = max(summary.checkpoints, default=0) if kind == "checkpoint" else (summary.last_step or 0)
            if beyond > n:
                ended += f"; it had written up to {kind} {beyond + off} when it ended"
        elif code == 0:
            ended = "exited 0"
        else:
            why = summary.how_it_ended() if summary.ending else ""
            ended = f"exited {code}" + (f": {why}" if why else "")
        return code, ended, summary

    def _reached_stop(self, ps: PlannedStage, ev: Event, cwd: Path) -> str | None:
        if ps.stop is None:
            return None
        kind, n = ps.stop
        if kind == "checkpoint" and isinstance(ev, CheckpointWritten) and ev.number is not None and ev.number >= n:
            prefix = ev.path.rsplit("-", 1)[0]
            sym, params = checkpoint_files(prefix, ev.number, cwd)
            if sym.is_file() and params.is_file():
                return f"checkpoint {ev.number}"
        if kind == "step":
            step = getattr(ev, "step", None)
            if isinstance(step, int) and step >= n:
                return f"step {step}"
        return None

    @staticmethod
    def _update(live: LiveState, ev: Event) -> None:
        step = getattr(ev, "step", None)
        if isinstance(step, int):
            live.step = max(live.step or 0, step)
        if isinstance(ev, Speed):
            live.samples_per_sec = ev.samples_per_sec
        elif isinstance(ev, Verification):
            live.accuracy[ev.target] = ev.accuracy
        elif isinstance(ev, CheckpointWritten):
            live.checkpoint = ev.number
        lr = getattr(ev, "lr", None)
        if isinstance(lr, float):
            live.lr = lr

    def _terminate(self, proc: subprocess.Popen) -> None:
        """Stop the stage's process group between two saves: frozen (SIGSTOP) at a moment no symbol file is
        half rewritten (the pinned code rewrites PREFIX-symbol.json in place at every save), then SIGTERM,
        which it meets before it can write again; SIGKILL after TERM_GRACE."""
        if proc.poll() is not None:
            return
        try:
            deadline = time.monotonic() + SAVE_GRACE
            while True:
                os.killpg(proc.pid, signal.SIGSTOP)
                if time.monotonic() > deadline or all(_whole_json(p) for p in getattr(self, "_symbols", ())):
                    break
                os.killpg(proc.pid, signal.SIGCONT)  # in the middle of a save: let it finish
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGTERM)
            os.killpg(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        try:
            proc.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    # -- signals

    def _install_signals(self, extra: tuple = ()) -> None:
        self._old = {}

        def handler(signum, frame):
            self._signal = signal.Signals(signum).name

        for s in (signal.SIGINT, signal.SIGTERM, *extra):
            try:
                self._old[s] = signal.signal(s, handler)
            except ValueError:  # not the main thread
                pass

    def _restore_signals(self) -> None:
        for s, h in getattr(self, "_old", {}).items():
            signal.signal(s, h)

    # -- report

    def _write_report(self, run_dir: Path, rec: RunRecord) -> None:
        from mfnpatch.runs.report import run_markdown

        try:
            atomic_write(run_dir / "report.md", run_markdown(run_dir, rec))
        except Exception as e:  # the record is what matters; a report failure must not hide it
            self.obs.note(f"report.md not written: {e}")


def _whole_json(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
        return True
    except FileNotFoundError:
        return True  # nothing there to be half written
    except (OSError, ValueError):
        return False


def _child_setup() -> None:
    """In the stage's process before exec: its own process group (so a stop reaches everything it starts),
    and on Linux SIGTERM when the runner dies, even by SIGKILL (no orphan trains on unwatched)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _shift(ev: Event, step_off: int, save_off: int) -> Event:
    """An event of a resumed segment in its stage's steps and save numbers."""
    import dataclasses

    changes: dict[str, Any] = {}
    if isinstance(getattr(ev, "step", None), int):
        changes["step"] = ev.step + step_off  # type: ignore[attr-defined]
    if isinstance(ev, CheckpointWritten | CheckpointSaved) and isinstance(ev.number, int):
        changes["number"] = ev.number + save_off
    return dataclasses.replace(ev, **changes) if changes else ev


def _ranges(nums: list[int]) -> str:
    if not nums:
        return "none"
    out, start, prev = [], nums[0], nums[0]
    for n in nums[1:]:
        if n != prev + 1:
            out.append(f"{start}" if start == prev else f"{start}..{prev}")
            start = n
        prev = n
    out.append(f"{start}" if start == prev else f"{start}..{prev}")
    return ", ".join(out)


def run_recipe(
    spec: str, profile: str | None, overrides: dict[str, str], opts: RunOptions, observer: Observer | None = None
) -> tuple[Path, RunRecord]:
    from mfnpatch.runs.recipe import load_recipe

    loaded = load_recipe(spec)
    runner = Runner(loaded, profile, overrides, opts, observer)
    return runner.run()


def _verdict(stages: list[StageRecord]) -> str:
    """A run's end: failed if a stage that ran did not pass, incomplete if stages were left out (--only,
    --from, a stop), else passed."""
    ran = [s for s in stages if s.status != "pending"]
    if not all(s.status in ("done", "skipped") and s.passed is not False for s in ran):
        return "failed"
    return "passed" if len(ran) == len(stages) else "incomplete"


def _remove_new_run_dir(run_dir: Path, keep_dir: bool) -> None:
    if not keep_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for p in run_dir.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run_job(run_dir: Path, stage: str, observer: Observer | None = None, env_checker=None) -> int:
    """`mfnpatch recipe job RUN STAGE`: what each Slurm job runs."""
    from mfnpatch.runs.recipe import load_recipe

    run_dir = Path(run_dir).absolute()
    rec = load_record(run_dir)
    ex = rec.executor
    if ex.get("kind") != "slurm":
        raise RunError(f"{run_dir} is not a Slurm run (its executor is {ex.get('kind') or 'local'})")
    rec.stage(stage)  # an unknown stage is an error here, not in the job's log only
    opts = RunOptions(
        tree=run_dir / "tree",
        resume=run_dir,
        only=stage,
        executor="slurm",
        slurm=SlurmOptions(**ex.get("options", {})),
        env_prefix=Path(rec.environment["prefix"]) if rec.environment.get("prefix") else None,
        env_check=env_checker is not None and ex.get("env_check", True),
        env_checker=env_checker,
    )
    loaded = load_recipe(str(run_dir / "recipe.yaml"))
    runner = Runner(loaded, rec.recipe.get("profile"), rec.recipe.get("overrides") or {}, opts, observer)
    return runner.job(stage)


@dataclass
class CancelResult:
    kind: str
    cancelled_jobs: list[str]
    signalled_pid: int | None
    stages: list[str]
    message: str


def cancel_run(run_dir: Path) -> CancelResult:
    """`mfnpatch recipe cancel RUN`: cancel what is queued or running (Slurm jobs, or a local runner)."""
    from mfnpatch.cluster.slurm import record_lock, scancel

    run_dir = Path(run_dir).absolute()
    with record_lock(run_dir):
        rec = load_record(run_dir)
        kind = rec.executor.get("kind", "local")
        if kind == "slurm":
            active = [s for s in rec.stages if s.job and s.status in ("queued", "running", "interrupted")]
            if not active:
                return CancelResult(kind, [], None, [], "nothing is queued or running")
            ids = [s.job["id"] for s in active]  # type: ignore[index]
            rec.status, rec.finished = "cancelled", _now()
            for s in active:
                if s.status != "running":  # a running job records its own end when it is stopped
                    s.status, s.ended = "cancelled", "cancelled (mfnpatch recipe cancel) before it ran"
            write_record(run_dir, rec)
            scancel(ids)
            return CancelResult(kind, ids, None, [s.name for s in active], f"cancelled {len(ids)} job(s)")
    pid, host = rec.executor.get("pid"), rec.executor.get("host")
    if rec.status != "running" or not pid:
        return CancelResult(kind, [], None, [], f"the run is {rec.status}: nothing to cancel")
    if host and host != platform.node():
        raise RunError(f"the run is running on {host}, not here", hint=f"run mfnpatch recipe cancel on {host}")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return CancelResult(kind, [], None, [], f"its runner (pid {pid}) is no longer running")
    if b"mfnpatch" not in cmdline:
        return CancelResult(kind, [], None, [], f"pid {pid} is no longer this run's runner")
    os.kill(int(pid), signal.SIGTERM)
    return CancelResult(
        kind,
        [],
        int(pid),
        [s.name for s in rec.stages if s.status == "running"],
        f"sent SIGTERM to the runner (pid {pid}); it stops the stage and records it as interrupted",
    )


def live_rows(run_dir: Path, rec: RunRecord, states: dict[str, dict] | None = None) -> list[dict]:
    """One row per stage for `recipe status`: status, Slurm job state, progress from the log as it grows."""
    rows = []
    for s in rec.stages:
        row: dict[str, Any] = {"stage": s.name, "status": s.status, "ended": s.ended or s.skipped or ""}
        if s.job:
            row["job"] = s.job["id"]
            st = (states or {}).get(s.job["id"])
            if st:
                row["job_state"] = st["state"] + (f" ({st['reason']})" if st.get("reason") not in ("", "None") else "")
            if len(s.attempts) > 1:
                row["requeued"] = len(s.attempts) - 1
        if s.checks:
            row["checks"] = f"{sum(c['verdict'] == 'pass' for c in s.checks)}/{len(s.checks)}"
        if s.kind == "train" and s.status in ("running", "interrupted", "done", "failed") and s.log:
            summ = stage_summary(run_dir, s)
            if summ is not None:
                row["step"] = summ.last_step
                if s.stop and s.stop.get("kind") == "checkpoint":
                    row["total"] = s.stop["value"] * _verbose(s.argv)
                elif s.stop:
                    row["total"] = s.stop["value"]
                row["accuracy"] = {t: x.last_accuracy for t, x in summ.targets().items()}
        rows.append(row)
    return rows
