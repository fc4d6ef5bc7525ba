"""The Slurm executor: each stage of a run becomes a batch job, chained with afterok dependencies.

Generated sbatch scripts, not submitit: the stages are shell commands (the pinned train_softmax.py), which
submitit does not requeue on a time limit (its CommandFunction is not checkpointable), and resuming one
needs a *different* command (mfnpatch.runs.resume). So each job runs ``mfnpatch recipe job RUN STAGE``, the same
runner code as a local run — the stage's log tee, live parser, stop points, checks and run record — on the
compute node. The scripts are plain files in RUN/slurm/, readable and resubmittable by hand.

    #SBATCH --requeue --signal=B:USR1@GRACE     time limit near: stop the trainer, requeue, resume later
    #SBATCH --kill-on-invalid-dep=yes           a failed stage's dependents are cancelled by Slurm too

The patched tree is frozen into RUN/tree at submission with a manifest of its files' hashes; each job
checks it before it starts, so a job that starts days later runs the code that was submitted.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write, atomic_write_json, one_line, sha256_file
from mfnpatch.runs.record import SlurmOptionsInfo
from mfnpatch.runs.status import JobState

FROZEN_TREE = "tree"
MANIFEST = "tree.manifest.json"
SCRIPTS = "slurm"
# Job states in which a job is still queued, running or about to run again (squeue's %T)
ACTIVE_JOB_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                               "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"})  # fmt: skip


class SlurmError(MfnError):
    pass


# The options of a Slurm run are the record's model (runs/record.py): one definition, one set of defaults.
SlurmOptions = SlurmOptionsInfo


# --------------------------------------------------------------------------------------------
# Commands


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise SlurmError(
            f"{name} is not on PATH: --executor slurm needs the Slurm client commands",
            hint="run on a Slurm login node (or load its module); see docs/slurm.md",
        )
    return exe


def slurm(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run([_exe(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in {timeout:.0f} s (is slurmctld up?)") from None
    if check and r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise SlurmError(f"{shlex.join(argv[:3])} failed (exit {r.returncode}): {msg[-1] if msg else ''}")
    return r


def sbatch(script: Path, dependency: str | None = None) -> str:
    argv = ["sbatch", "--parsable"]
    if dependency:
        argv.append(f"--dependency={dependency}")
    r = slurm(*argv, str(script))
    return r.stdout.strip().split(";")[0]


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        slurm("scancel", *job_ids, check=False)


def requeue(job_id: str) -> None:
    slurm("scontrol", "requeue", job_id)


def job_state(state: str, reason: str = "", time: str = "", node: str = "") -> JobState:
    return JobState(state=state, reason=reason, active=state in ACTIVE_JOB_STATES, time=time, node=node)


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """The state of each job Slurm still knows (squeue, then scontrol for finished ones)."""
    out: dict[str, JobState] = {}
    if not job_ids:
        return out
    r = slurm("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%r|%M|%N", check=False)
    for line in r.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            out[parts[0]] = job_state(parts[1], parts[2], parts[3] if len(parts) > 3 else "",
                                      parts[4] if len(parts) > 4 else "")  # fmt: skip
    for jid in job_ids:
        if jid in out:
            continue
        r = slurm("scontrol", "show", "job", "-o", jid, check=False)
        fields = dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)
        if fields.get("JobState"):
            out[jid] = job_state(fields["JobState"], fields.get("Reason", ""))
    return out


# --------------------------------------------------------------------------------------------
# The frozen tree


def freeze_tree(src: Path, run_dir: Path) -> dict[str, str]:
    """Copy the patched tree into RUN/tree (without .git) and write the manifest of its files' sha256."""
    dst = run_dir / FROZEN_TREE
    if dst.exists():
        raise SlurmError(f"{dst} exists: the run already has a frozen tree")
    parent = Path(tempfile.mkdtemp(prefix=f".{FROZEN_TREE}.", dir=run_dir))  # exclusive: never a planted link
    tmp = parent / FROZEN_TREE
    shutil.copytree(src, tmp, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    manifest = {
        str(p.relative_to(tmp)): sha256_file(p)
        for p in sorted(tmp.rglob("*"))
        if p.is_file() and not p.is_symlink() and ".mfnpatch" not in p.relative_to(tmp).parts
    }
    os.replace(tmp, dst)
    parent.rmdir()
    atomic_write_json(run_dir / MANIFEST, manifest)
    return manifest


def check_frozen_tree(run_dir: Path) -> None:
    root = run_dir / FROZEN_TREE
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise SlurmError(f"{run_dir / MANIFEST}: unreadable ({e})") from None
    changed = []
    for rel, digest in manifest.items():
        p = root / rel
        if not p.is_file():
            changed.append(f"{rel} (missing)")
        elif sha256_file(p) != digest:
            changed.append(rel)
    if changed:
        raise SlurmError(
            f"the run's frozen tree {root} changed since it was submitted: {', '.join(changed[:5])}"
            + (f" and {len(changed) - 5} more" if len(changed) > 5 else ""),
            hint="a job must run the code that was submitted: start a new run (mfnpatch recipe run ...)",
        )


# --------------------------------------------------------------------------------------------
# Scripts


def script_text(run_dir: Path, run_id: str, stage: str, resources: dict[str, str], opts: SlurmOptions) -> str:
    from mfnpatch.recipes.recipe import check_resource

    res = dict(resources)
    for key in ("time", "gpus_per_node", "cpus_per_task", "mem"):
        v = getattr(opts, key)
        if v is not None and (key != "gpus_per_node" or key in res):  # GPUs only for stages that ask for them
            res[key] = str(v)
    # every value written into the script is one Slurm token: a newline cannot add a line to the script
    for key, v in [*res.items(), ("partition", opts.partition), ("account", opts.account)]:
        if v is not None:
            check_resource(str(v), f"--{key.replace('_', '-')}")

    def sbatch_line(option: str, value: object) -> str:  # the one place a value becomes an #SBATCH line
        one_line(
            value,
            f"{option} value",
            file="the stage's sbatch script (one #SBATCH option per line)",
            no_space=True,
            hint="a runs directory, run id and stage name without spaces, tabs or newlines",
        )
        return f"#SBATCH {option}={value}"

    lines = [
        "#!/bin/bash",
        f"# mfnpatch run {run_id}, stage {stage}: written by `mfnpatch recipe run --executor slurm`.",
        "# It runs the stage with mfnpatch's runner (log, live checks, run record) on the compute node;",
        "# resubmitting it by hand (sbatch THIS_FILE) continues the stage from its last checkpoint.",
        sbatch_line("--job-name", f"mfn-{stage}-{run_id}"[:99]),
        sbatch_line("--output", f"{run_dir / SCRIPTS / stage}-%j.out"),
        "#SBATCH --open-mode=append",
        sbatch_line("--chdir", run_dir),
        "#SBATCH --requeue",
        sbatch_line("--signal", f"B:USR1@{opts.requeue_grace}"),
        "#SBATCH --kill-on-invalid-dep=yes",
        "#SBATCH --nodes=1",
    ]
    if opts.partition:
        lines.append(sbatch_line("--partition", opts.partition))
    if opts.account:
        lines.append(sbatch_line("--account", opts.account))
    for key in ("time", "gpus_per_node", "cpus_per_task", "mem"):
        if res.get(key) not in (None, "") and not (key == "gpus_per_node" and res[key] == "0"):
            lines.append(sbatch_line(f"--{key.replace('_', '-')}", res[key]))
    for a in opts.sbatch_args:
        if not a.startswith("-"):
            raise SlurmError(f"--sbatch-arg {a!r}: one sbatch option (it starts with '-')",
                             hint="e.g. --sbatch-arg=--qos=long")  # fmt: skip
        one_line(a, "--sbatch-arg", file="the stage's sbatch script (one #SBATCH option per line)", no_space=True,
                 hint="one sbatch option without spaces or newlines, e.g. --sbatch-arg=--qos=long")  # fmt: skip
        lines.append(f"#SBATCH {a}")
    cmd = [sys.executable, "-m", "mfnpatch", "recipe", "job", str(run_dir), stage]
    lines += ["", f"exec {shlex.join(cmd)}", ""]
    return "\n".join(lines)


def write_script(run_dir: Path, index: int, run_id: str, stage: str, resources: dict[str, str],
                 opts: SlurmOptions) -> Path:  # fmt: skip
    p = run_dir / SCRIPTS / f"{index:02d}-{stage}.sbatch"
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, script_text(run_dir, run_id, stage, resources, opts))
    p.chmod(0o755)
    return p


# --------------------------------------------------------------------------------------------
# The run record lock (jobs, `recipe cancel` and `recipe status` touch one record.json)


def job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def allocated_gpus() -> str | None:
    """The GPUs Slurm gave this job, as CUDA_VISIBLE_DEVICES (None when it gave none)."""
    if not (os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS")):
        return None
    return os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("SLURM_JOB_GPUS")
