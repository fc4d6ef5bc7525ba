"""A one-node Slurm cluster on localhost for the tests: munged, slurmctld and slurmd with every file in
one temporary directory, on free ports, stopped at the end. Needs Debian's slurm-wlm and munge."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def _which(b: str) -> str:
    return shutil.which(b) or f"/usr/sbin/{b}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    conf: Path
    gpus: int = 0  # gres/gpu the node declares (0 when the device files could not be made)
    procs: list = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [_which(argv[0]), *argv[1:]], env=self.env, capture_output=True, text=True, check=check, timeout=60
        )

    def log(self, name: str) -> str:
        p = self.root / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        if self.procs and self.procs[-1].poll() is None:  # cancel what is left, so no job outlives the cluster
            self.run("scancel", "--partition=debug", check=False)
            t = time.monotonic() + 20
            while time.monotonic() < t and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def start(root: Path, cpus: int = 2, gpus: int = 2) -> Cluster:
    """gpus: GPUs the node declares as gres/gpu, backed by plain files (root/dev/nvidiaN) — Slurm allocates
    them and sets CUDA_VISIBLE_DEVICES / SLURM_JOB_GPUS for a job as it does for real GPUs."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool", "munge"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = root / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    mem = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    gres = ""
    (root / "dev").mkdir(exist_ok=True)
    try:
        for i in range(gpus):  # Slurm wants character devices: /dev/null's numbers (needs CAP_MKNOD)
            os.mknod(root / "dev" / f"nvidia{i}", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        gpus = 0
    if gpus:
        (root / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={host} Name=gpu File={root / 'dev'}/nvidia[0-{gpus - 1}]\n"
        )
        gres = f" Gres=gpu:{gpus}"
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=mfnpatch-test",
                f"SlurmctldHost={host}(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                f"SlurmUser={user}",
                f"SlurmdUser={user}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={sock}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'slurmd.log'}",
                "SlurmctldDebug=info",
                "SlurmdDebug=info",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=sched_interval=1",
                "MpiDefault=none",
                "GresTypes=gpu",
                "ReturnToService=2",
                "JobRequeue=1",
                "KillWait=10",
                "MinJobAge=600",
                "InactiveLimit=0",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "JobCompType=jobcomp/none",
                f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem}{gres} State=UNKNOWN",
                # jobs in "urgent" preempt jobs in "debug" when the node is full: requeued, as on a real cluster
                "PreemptType=preempt/partition_prio",
                "PreemptMode=REQUEUE",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1",
                f"PartitionName=urgent Nodes={host} MaxTime=INFINITE State=UP PriorityTier=10",
                "",
            ]
        )
    )
    c = Cluster(root, conf, gpus)
    env = c.env

    def spawn(argv: list[str], name: str) -> None:
        out = open(root / f"{name}.stdout", "wb")
        c.procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    spawn(
        [
            _which("munged"),
            "-F",
            "--force",
            f"--socket={sock}",
            f"--key-file={key}",
            f"--pid-file={root / 'munge' / 'munged.pid'}",
            f"--log-file={root / 'munge' / 'munged.log'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
        ],
        "munged",
    )
    _wait(lambda: sock.exists(), 20, "munged did not create its socket", c)
    spawn([_which("slurmctld"), "-D", "-i", "-f", str(conf)], "slurmctld")
    _wait(lambda: c.run("scontrol", "ping", check=False).stdout.count("UP") > 0, 30, "slurmctld did not come up", c)
    spawn([_which("slurmd"), "-D", "-f", str(conf)], "slurmd")

    def idle() -> bool:
        r = c.run("sinfo", "-h", "-o", "%T", check=False)
        return r.returncode == 0 and r.stdout.strip() in ("idle", "idle*") and "*" not in r.stdout

    _wait(idle, 60, "the node did not become idle", c)
    return c


def _wait(cond, timeout: float, what: str, c: Cluster) -> None:
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return
        if any(p.poll() is not None for p in c.procs):
            break
        time.sleep(0.3)
    logs = {n: c.log(n)[-1500:] for n in ("slurmctld", "slurmd")}
    stdouts = {p.name: p.read_text(errors="replace")[-800:] for p in c.root.glob("*.stdout")}
    c.stop()
    raise RuntimeError(f"{what}\n{logs}\n{stdouts}")
