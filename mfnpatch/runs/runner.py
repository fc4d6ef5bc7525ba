"""Running a recipe on this machine: the patched tree, the run record, each stage in order (``execute``), the
hand-over of checkpoints decided from logs (``handover``), provenance and resume, the report.

A run directory holds ``record.json`` (``record``), ``stages/<name>.log`` (each stage's output, as printed),
``report.md`` and ``curves-<stage>.png``. ``--resume`` reuses stages completed with the same provenance
(recipe, parameters, command, patch sets, environment, inputs, seed) and refuses, saying what changed and
writing nothing, when it differs. Ctrl-C or SIGTERM stops the stage's process group, records the stage as
interrupted and leaves the record whole.

The Slurm executor (``mfnpatch.cluster``) is this runner with other hooks: where the tree is, how the
environment is checked, how the stages are launched, how the record is written.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfnpatch import __version__
from mfnpatch.emulator import arm_cpus
from mfnpatch.errors import Interrupted, MfnError
from mfnpatch.fsutil import Busy, atomic_write, confined, locked
from mfnpatch.lineages import of_argv
from mfnpatch.lineages.base import ResumeError, ResumeRequest
from mfnpatch.logs.sentinels import all_off
from mfnpatch.recipes.expand import FitRequest, Plan, PlannedStage, expand
from mfnpatch.recipes.recipe import LoadedRecipe
from mfnpatch.runs.dataplan import Checker, check_made_data, preflight
from mfnpatch.runs.determinism import describe as describe_determinism
from mfnpatch.runs.determinism import free_cpus, seed_env
from mfnpatch.runs.eta import eta_of
from mfnpatch.runs.execute import Observer, StageRun
from mfnpatch.runs.files import refuse_changed
from mfnpatch.runs.handover import as_seen_from, input_checkpoint, pick_checkpoint
from mfnpatch.runs.liveness import boot_id, run_lock_path, start_ticks
from mfnpatch.runs.provenance import changed_parts, stage_parts
from mfnpatch.runs.provenance import key as provenance_key
from mfnpatch.runs.record import (
    RECORD,
    DeterminismInfo,
    EnvironmentInfo,
    ExecutorInfo,
    HostInfo,
    InterpreterInfo,
    PatchSetInfo,
    PinInfo,
    RecipeInfo,
    RunError,
    RunRecord,
    StageRecord,
    load_record,
    now,
    write_record,
)
from mfnpatch.runs.resume import Reached, ResumePlan
from mfnpatch.runs.summaries import checkpoint_hashes, stage_metrics, stage_summary


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
    env_checker: Callable[..., dict] | None = None  # (environment name, prefix, **kw) -> what the record keeps
    env_prefix: Path | None = None  # the environment the stages run in (its bin/ goes first on PATH)
    data_check: bool = True
    data_checker: Checker | None = None  # (dataset dir, targets, variant) -> the check's result (runs/dataplan.py)
    sentinels: bool = True  # False: --no-sentinels (each stage's record says what was watched)
    fit: FitRequest | None = None  # --gpus/--fit: the plan fitted to the GPUs (recipes/fit.py)


def probe_python(python: str, env: dict[str, str]) -> InterpreterInfo:
    """The interpreter a recipe runs: its path, Python, MXNet and PyTorch versions (either may be absent)."""
    exe = shutil.which(python, path=env.get("PATH"))
    out: dict[str, Any] = {"python": python, "path": exe}
    if exe is None:
        return InterpreterInfo(**out, error=f"{python} is not on PATH")
    code = (
        "import sys, json; d = {'version': sys.version.split()[0]}\n"
        "try:\n import mxnet as mx; d['mxnet'] = mx.__version__\n"
        " d['mxnet_features'] = sorted(f.name for f in mx.runtime.Features().values() if f.enabled)\n"
        "except Exception as e:\n d['mxnet_error'] = type(e).__name__ + ': ' + str(e)[:200]\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('torch'):\n"
        " try:\n  import torch; d['torch'] = torch.__version__; d['torch_cuda'] = torch.version.cuda\n"
        " except Exception:\n  pass\n"
        "print(json.dumps(d))"
    )
    try:
        r = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        out.update(json.loads(r.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError, OSError) as e:
        out["error"] = f"probe failed: {e}"
    return InterpreterInfo(**out)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One runner per run directory: a second `recipe run` (a --resume, or the same --run-dir) while the
    first still runs is refused at once, before it writes anything. The lock file sits beside the run
    directory (``.NAME.mfnpatch-lock``), so the run directory holds only the run."""
    lock = locked(run_lock_path(run_dir), f"the run {run_dir}", timeout=0,
                  on_wait=lambda text: None)  # fmt: skip
    try:
        lock.__enter__()
    except Busy:
        raise RunError(
            f"{run_dir} is being run by {lock.holder()} on this machine; nothing changed",
            hint=f"follow it with: mfnpatch recipe status {run_dir} --follow (or stop it: mfnpatch recipe cancel "
            f"{run_dir})",
        ) from None
    try:
        yield
    finally:
        lock.__exit__()


class Runner:
    """The local runner: every stage in this process's care, one after the other."""

    kind = "local"

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
        self._free: str | None = None
        self.stage_run = StageRun(self.obs, self._stage_env, lambda: self._signal, lambda: None, self._adjust)

    @property
    def parse_cpu(self) -> float:  # CPU seconds spent in the live parser (benchmarks/bench_runner.py)
        return self.stage_run.parse_cpu

    # -- hooks an executor overrides

    def tree_root(self, run_dir: Path) -> Path:
        """Where the stages run: the patched tree itself (a Slurm run: its frozen copy)."""
        return Path(self.opts.tree).absolute()

    def check_environment(self, plan: Plan) -> dict:
        if not (self.opts.env_check and self.opts.env_checker is not None):
            return {}
        return self.opts.env_checker(plan.environment, self._env_prefix())

    def launch(self, plan: Plan, rec: RunRecord, run_dir: Path, tree_root: Path, previous, fresh_dir) -> RunRecord:
        """Run the selected stages (a Slurm run submits them instead)."""
        rec.executor = ExecutorInfo(kind="local", pid=os.getpid(), host=platform.node(),
                                    pid_started=start_ticks(os.getpid()), boot_id=boot_id())  # fmt: skip
        self._write(run_dir, rec)
        self.obs.run_started(run_dir, plan)
        self._install_signals()
        try:
            self._run_stages(plan, rec, run_dir, tree_root)
        finally:
            self._restore_signals()
            rec.finished = now()
            if rec.status == "running":
                rec.status = rec.verdict()
            self._write(run_dir, rec)
            self._write_report(run_dir, rec)
        if rec.status == "interrupted":
            raise Interrupted(
                f"interrupted by {self._signal}; the run record is {run_dir / RECORD}",
                hint=f"continue with: mfnpatch recipe run {self.loaded.path} --resume {run_dir}",
            )
        return rec

    def _write(self, run_dir: Path, rec: RunRecord) -> None:
        write_record(run_dir, rec)

    def _adjust(self, ps: PlannedStage, srec: StageRecord) -> PlannedStage:
        return ps

    def _run_dir(self) -> Path:
        if self.opts.resume:
            return Path(self.opts.resume).absolute()
        if self.opts.run_dir:
            return Path(self.opts.run_dir).absolute()
        name = self.loaded.recipe.name + (f"-{self.profile}" if self.profile else "") + time.strftime("-%Y%m%d-%H%M%S")
        base = Path("runs") / confined(name, "the run's directory name")  # never outside runs/
        d, n = base, 1
        while d.exists():
            d, n = base.with_name(f"{base.name}.{n}"), n + 1
        return d.absolute()

    def _cpu_free(self, run_dir: Path) -> str:
        """${cpu_free}: sampled once when a run starts and recorded; a resumed run (or a Slurm job of the run)
        uses the recorded value, so its provenance does not change with the machine's load."""
        if self._free is None:
            recorded = None
            if (Path(run_dir) / RECORD).is_file():
                try:
                    recorded = load_record(run_dir).recipe.cpu_free
                except MfnError:
                    recorded = None
            self._free = str(recorded) if recorded else str(free_cpus())
        return self._free

    def plan(self, run_dir: Path) -> Plan:
        self._builtins: dict[str, Any] = {
            "run_dir": str(run_dir),
            "tree": str(self.tree_root(run_dir)),
            "cpu_count": str(os.cpu_count() or 1),
            "cpu_free": self._cpu_free(run_dir),
            "mfnpatch": [sys.executable, "-m", "mfnpatch"],
            "python_exe": sys.executable,
            "arm_cpus": arm_cpus(),
        }
        plan = expand(self.loaded, self.profile, self.overrides, self._builtins, self.opts.fit)
        if not self.opts.sentinels:
            for s in plan.stages:
                s.sentinels = all_off()
        self._seed = plan.seed
        self._cwd_of = {s.name: s.cwd for s in plan.stages}
        self._outputs = {s.name: s.outputs for s in plan.stages}
        return plan

    def _prepare_tree(self, plan: Plan, sets):
        from mfnpatch.source.command import prepare_and_apply

        prepared, outcome = prepare_and_apply(plan.recipe.pin, self.opts.tree, self.opts.source, sets,
                                              plan.recipe.paths, on_note=self.obs.note)  # fmt: skip
        self.obs.note(
            f"tree {prepared.tree.root}: {', '.join(outcome.sets)} at {prepared.tree.pin.short} "
            f"({'already applied' if outcome.action in ('nothing', 'adopted') else outcome.action})"
        )
        return prepared.tree

    # -- the run

    def run(self) -> tuple[Path, RunRecord]:
        run_dir = self._run_dir()
        with run_lock(run_dir):
            return self._run(run_dir)

    def _run(self, run_dir: Path) -> tuple[Path, RunRecord]:
        from mfnpatch.resources import data_dir
        from mfnpatch.source.patchset import Catalog, select_sets
        from mfnpatch.source.pin import resolve_pin

        plan = self.plan(run_dir)
        names = [s.name for s in plan.stages]
        only = [("--only", x.strip()) for x in (self.opts.only or "").split(",") if self.opts.only]
        for flag, v in (("--from", self.opts.from_stage), *only):
            if v is not None and v not in names:
                raise RunError(
                    f"{flag} {v}: recipe {plan.recipe.name} has no such stage", hint=f"stages: {', '.join(names)}"
                )
        previous = load_record(run_dir) if self.opts.resume else None
        if not self.opts.resume and run_dir.exists() and any(run_dir.iterdir()):
            raise RunError(
                f"{run_dir} exists and is not empty", hint="use --resume to continue it, or another --run-dir"
            )
        if previous is not None and previous.recipe.name != plan.recipe.name:
            raise RunError(
                f"{run_dir} is a run of recipe {previous.recipe.name}, not {plan.recipe.name}; nothing changed",
                hint=f"continue it with its own recipe: mfnpatch recipe run {previous.recipe.name} --resume {run_dir}",
            )
        fresh_dir = None if previous is not None else run_dir.exists()  # existed (empty) or not; None: resume
        pin = resolve_pin(plan.recipe.pin)
        sets = select_sets(Catalog.scan(data_dir("patches")), plan.patches, pin.commit)
        checked = {k: v for k, v in self.check_environment(plan).items() if k != "name"}
        datasets = self._preflight(plan, previous)  # before anything is probed, fetched or written
        env_info = EnvironmentInfo(name=plan.environment, prefix=str(self._env_prefix()), **checked)
        probe_env = {
            **self._base_env(),
            **next((s.env for s in plan.stages if s.kind == "train" and not s.skipped), {}),
        }
        env_info.interpreter = probe_python(plan.parameters.get("python", "python"), probe_env)
        determinism = describe_determinism(plan.seed, plan.recipe.lineage)
        rec = RunRecord(
            schema=2,
            run_id=run_dir.name,
            tool=f"mfnpatch {__version__}",
            started=now(),
            recipe=RecipeInfo(name=plan.recipe.name, path=str(self.loaded.path), sha256=self.loaded.sha256,
                              profile=self.profile, parameters=plan.parameters, seed_update=plan.recipe.seed_update,
                              lineage=plan.recipe.lineage),
            pin=PinInfo(commit=pin.commit, tree=pin.manifest.tree),
            tree=str(Path(self.opts.tree).absolute()),
            patches=[PatchSetInfo(name=s.name, version=s.version, sha256=s.sha256) for s in sets],
            environment=env_info,
            host=HostInfo(hostname=platform.node(), platform=platform.platform(), cpus=os.cpu_count(),
                          python=platform.python_version()),
            stages=[StageRecord(name=s.name, title=s.title, kind=s.kind) for s in plan.stages],
            seed=plan.seed,
            determinism=DeterminismInfo(**determinism),
        )  # fmt: skip
        if previous is not None:
            rec.stages = [self._previous_stage(previous, s) for s in rec.stages]
            rec.started = previous.started
            rec.executor = previous.executor
            # refused or not, decided here: a refused --resume writes nothing (record, tree, run directory)
            self._check_resumable(plan, rec, run_dir, Path(self.opts.tree).absolute())
        rec.datasets = datasets
        tree = self._prepare_tree(plan, sets)
        rec.tree = str(tree.root)
        (run_dir / "stages").mkdir(parents=True, exist_ok=True)
        rec.recipe.overrides = dict(self.overrides)
        rec.recipe.cpu_free = int(self._builtins["cpu_free"])
        rec.recipe.fit = plan.fit.to_dict() if plan.fit else None
        rec.recipe.warnings = list(plan.hazards)
        for h in plan.hazards:
            self.obs.note(f"warning: {h}")
        eta = eta_of(plan, platform.node(), self._builtins) if previous is None else None
        if eta is not None:
            rec.recipe.estimate, line = eta
            self.obs.note(line)
        return run_dir, self.launch(plan, rec, run_dir, tree.root, previous, fresh_dir)

    def _preflight(self, plan: Plan, previous: RunRecord | None):
        checker = self.opts.data_checker if self.opts.data_check else None
        why = "--no-data-check" if not self.opts.data_check else "no data checker"
        return preflight(plan, previous, Path(self.opts.tree).absolute(), checker, why, self.opts.force,
                         self.obs.note)  # fmt: skip

    @staticmethod
    def _previous_stage(previous: RunRecord, s: StageRecord) -> StageRecord:
        try:
            return previous.stage(s.name)
        except RunError:
            return s

    def _selected(self, plan: Plan) -> list[PlannedStage]:
        names = [s.name for s in plan.stages]
        if self.opts.only:  # one stage or several (data,train), in the plan's order
            return [s for s in plan.stages if s.name in {x.strip() for x in self.opts.only.split(",")}]
        if self.opts.from_stage:
            return plan.stages[names.index(self.opts.from_stage) :]
        return plan.stages

    def _run_stages(self, plan: Plan, rec: RunRecord, run_dir: Path, tree_root: Path) -> None:
        selected = {s.name for s in self._selected(plan)}
        self.stage_run.write = lambda: self._write(run_dir, rec)
        checker = self.opts.data_checker if self.opts.data_check else None
        if checker is not None:
            self.stage_run.more_checks = lambda ps, srec, root: check_made_data(
                plan, ps, srec, rec, root, checker, self.obs.note
            )
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
            ps = ps.with_inputs(inputs)
            parts = self._provenance(plan, rec, ps)
            key = provenance_key(parts)
            if srec.status == "done" and self.opts.resume:
                if srec.provenance == key:
                    self.obs.stage_reused(ps, srec)
                    continue
                changed = changed_parts(srec.provenance_parts, parts)
                if not self.opts.force:
                    raise RunError(
                        f"stage {ps.name} was completed with a different provenance; refusing to reuse or redo it",
                        details=changed,
                        hint="rerun it anyway with --force, or start a new run without --resume",
                    )
                self.obs.note(f"stage {ps.name}: provenance changed ({'; '.join(changed)}); running it again (--force)")
            resume: ResumePlan | Reached | None = None
            started_before = srec.status == "queued" and bool(srec.log)  # resubmitted to Slurm after it had run
            part_way = srec.status in ("interrupted", "failed", "running", "cancelled") or started_before
            if self.opts.resume and part_way:
                resume = self._resume_plan(ps, srec, run_dir, tree_root, key, parts)
            if isinstance(resume, Reached):
                self._complete_from_segments(ps, srec, run_dir, tree_root)
                self._write(run_dir, rec)
                continue
            self._check_input_files(ps, inputs, tree_root, rec)
            srec = self.stage_run.execute(ps, srec, run_dir, tree_root, inputs, resume, (key, parts))
            self._write(run_dir, rec)
            if srec.status == "interrupted":
                rec.status = "interrupted"
                return
            if not srec.ok and not self.opts.keep_going:
                rec.status = "failed"
                return

    # -- provenance and resume

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
            parts = self._provenance(plan, rec, ps.with_inputs(inputs))
            if srec.provenance == provenance_key(parts):
                continue
            how = "completed" if srec.status == "done" else "stopped part way"
            raise RunError(
                f"stage {ps.name} was {how} with a different provenance; refusing to reuse or redo it; nothing changed",
                details=changed_parts(srec.provenance_parts, parts),
                hint="rerun it anyway with --force, or start a new run without --resume",
            )

    def _provenance(self, plan: Plan, rec: RunRecord, ps: PlannedStage) -> dict[str, str]:
        inputs = {k: pin.ref.stage for k, pin in ps.inputs.items()}
        return stage_parts(plan.loaded.sha256, self.profile, plan.parameters, plan.seed, rec, ps.argv, ps.env,
                           ps.cwd, ps.copies, inputs)  # fmt: skip

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
            number = pick_checkpoint(ref, summary, ps.name)
            prefix = self._outputs.get(ref.stage, {}).get("checkpoint")
            if prefix is None:
                raise RunError(f"stage {ref.stage} declares no checkpoint output for {ps.name} to use")
            segments = {s.index: s.prefix or prefix for s in src.segments}
            ck = input_checkpoint(number, summary, prefix, segments) if summary else None
            src_cwd, user_cwd = tree_root / self._cwd_of[ref.stage], tree_root / ps.cwd
            out[key] = str(as_seen_from(ck, src_cwd, user_cwd)) if ck else f"{prefix},{number}"
        return out

    def _check_input_files(self, ps: PlannedStage, inputs: dict[str, str], tree_root: Path, rec: RunRecord) -> None:
        """Right before a stage runs: its log-resolved input checkpoints are on disk, with the recorded bytes."""
        from mfnpatch.checkpoint import Checkpoint

        for key, value in inputs.items():
            ck = Checkpoint.parse(value)
            src = ps.inputs[key].ref.stage
            missing = [str(p) for p in ck.missing(tree_root / ps.cwd)]
            if missing:
                raise RunError(
                    f"stage {ps.name} needs checkpoint {ck.number} of {src}: its log saved it, but "
                    f"{', '.join(missing)} is missing",
                    hint=f"the checkpoint files were moved or deleted; rerun stage {src}",
                )
            self._refuse_changed(rec.stage(src), ck.files(tree_root / ps.cwd), f"stage {ps.name}'s input {key}")

    def _refuse_changed(self, srec: StageRecord, files, what: str) -> None:
        refuse_changed(srec.checkpoints, srec.name, files, what, self.opts.force, self.obs.note)

    def _resume_plan(self, ps, srec, run_dir, tree_root, key, parts) -> ResumePlan | Reached | None:
        """How an interrupted or failed training stage continues: its lineage's next segment from what it saved,
        Reached when it had already saved its stop checkpoint, None to run it from the start."""
        if ps.kind != "train" or not srec.log:
            return None
        if (lin := of_argv(ps.argv)) is None or lin.capabilities.resume:  # said, never silently off
            why = lin.capabilities.resume if lin else "it runs no trainer of a known lineage"
            self.obs.note(f"stage {ps.name} cannot be resumed ({why}): it runs again from its start")
            return None
        merged = stage_summary(run_dir, srec)
        if merged is None:
            return None
        req = ResumeRequest(ps.argv, tree_root / ps.cwd, len(srec.segments) + 1, ps.stop, merged.checkpoints,
                            merged.config or {}, merged.lr_steps)  # fmt: skip
        try:
            plan, err = lin.resume(req), None
        except ResumeError as e:
            plan, err = None, e
        if plan is None and err is None:  # nothing saved yet
            return None
        if srec.provenance and srec.provenance != key:
            if self.opts.force:
                self.obs.note(f"stage {ps.name}: provenance changed; running it again from its start (--force)")
                return None
            raise RunError(
                f"stage {ps.name} stopped part way with a different provenance; refusing to continue it",
                details=changed_parts(srec.provenance_parts, parts),
                hint="run it again from its start with --force, or start a new run without --resume",
            )
        if err is not None:
            raise RunError(f"stage {ps.name} cannot be resumed: {err.message}", hint=err.hint or "") from None
        assert plan is not None
        self._refuse_changed(srec, plan.files, f"resuming stage {ps.name}")
        if plan.reached and ps.stop is not None:
            return Reached(ps.stop.value)
        return plan

    def _complete_from_segments(self, ps, srec, run_dir, tree_root) -> None:
        """The stage saved its stop checkpoint before it was interrupted: it is done; check it."""
        merged = stage_summary(run_dir, srec)
        srec.status, srec.end = "done", "stopped"
        srec.ended = f"reached checkpoint {ps.stop.value} before it was interrupted"
        if merged is not None:
            srec.metrics = stage_metrics(merged)
            srec.checkpoints = checkpoint_hashes(merged, tree_root / ps.cwd)
        self.stage_run.judge(ps, srec, merged, tree_root / ps.cwd)
        self.obs.stage_finished(ps, srec)

    # -- the stages' environment and signals

    def _env_prefix(self) -> Path:
        return Path(self.opts.env_prefix or sys.prefix).absolute()

    def _base_env(self) -> dict[str, str]:
        """The process environment of every stage: the recipe environment's bin/ first on PATH."""
        env = dict(os.environ)
        env["PATH"] = str(self._env_prefix() / "bin") + os.pathsep + env.get("PATH", "")
        return env

    def _stage_env(self, ps: PlannedStage) -> dict[str, str]:
        env = {**self._base_env(), **ps.env}
        env.update(seed_env(self._seed, env))
        env["PYTHONUNBUFFERED"] = "1"
        return env

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
        from mfnpatch.runs.report import gather, run_markdown

        try:
            atomic_write(run_dir / "report.md", run_markdown(rec, gather(run_dir, rec)))
        except Exception as e:  # the record is what matters; a report failure must not hide it
            self.obs.note(f"report.md not written: {e}")


def remove_new_run_dir(run_dir: Path, keep_dir: bool) -> None:
    """A new run that started nothing leaves nothing behind (the directory itself if it existed before)."""
    if not keep_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for p in run_dir.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run_recipe(
    spec: str, profile: str | None, overrides: dict[str, str], opts: RunOptions, observer: Observer | None = None
) -> tuple[Path, RunRecord]:
    from mfnpatch.recipes.recipe import load_recipe

    return Runner(load_recipe(spec), profile, overrides, opts, observer).run()
