"""Running code on an emulated phone CPU: the layout of an emulated environment (``mfnpatch env create
arm64-qemu --prefix DIR``) and the one command line that starts its Python under QEMU user mode.

    DIR/bin/qemu-aarch64-static   the emulator (from Debian's qemu-user-static, a static binary)
    DIR/sysroot/                  Debian's arm64 packages (Python 3.11 and the C libraries it and ncnn need)
    DIR/site/                     the aarch64 wheels (numpy, ncnn), on the emulated Python's path
    DIR/mfnpatch-env.json         written last: the environment is complete

``qemu-aarch64-static -cpu CPU -L DIR/sysroot DIR/sysroot/usr/bin/python3.11 …`` needs neither binfmt nor a
chroot nor root: ``-L`` makes the emulator look up the aarch64 loader and libraries (and any absolute path that
exists there) in the sysroot. The worker it runs (``emulated/worker.py``) imports only numpy and ncnn.

Both ``deploy/`` (the ARM engines) and ``environments/`` (the doctor) start it from here.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.errors import MfnError

MARKER = "mfnpatch-env.json"
ENV_NAME = "arm64-qemu"
WORKER = Path(__file__).resolve().parent / "emulated" / "worker.py"


class EmulatorError(MfnError):
    pass


def default_prefix() -> Path:
    """Where the emulated environment is looked for: MFNPATCH_ARM_ENV, else $XDG_DATA_HOME/mfnpatch/arm64-qemu."""
    if os.environ.get("MFNPATCH_ARM_ENV"):
        return Path(os.environ["MFNPATCH_ARM_ENV"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "mfnpatch" / ENV_NAME


@dataclass(frozen=True)
class Emulator:
    prefix: Path
    qemu: Path
    sysroot: Path
    site: Path
    marker: dict

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    def argv(self, cpu: str, *args: str) -> list[str]:
        return [str(self.qemu), "-cpu", cpu, "-L", str(self.sysroot), str(self.python), "-I", "-S", *args]

    def env(self) -> dict[str, str]:
        """The emulated Python's environment: its site directory, nothing of this machine's Python."""
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
        return keep | {"MFNPATCH_SITE": str(self.site), "OMP_WAIT_POLICY": "PASSIVE"}

    def run(self, cpu: str, job: dict, timeout: float = 7200,
            on_line: Callable[[str], None] | None = None) -> dict:  # fmt: skip
        """The worker on ``cpu`` with ``job`` (JSON on its stdin): its result (the last line, JSON). Every other
        line it prints is handed to ``on_line`` (progress)."""
        for k, v in job.items():
            if k.endswith("_path") and isinstance(v, str) and (self.sysroot / v.lstrip("/")).exists():
                raise EmulatorError(
                    f"{v} also exists inside {self.sysroot}: under -L the emulated program would read that one",
                    hint="keep models and scratch files outside the sysroot",
                )
        p = subprocess.Popen(self.argv(cpu, str(WORKER)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=self.env())  # fmt: skip
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(json.dumps(job))
        p.stdin.close()
        last = ""
        try:
            for line in p.stdout:
                line = line.rstrip("\n")
                if line.startswith("{"):
                    last = line
                elif on_line is not None:
                    on_line(line)
            p.wait(timeout=timeout)
        except BaseException:
            p.kill()
            p.wait()
            raise
        stderr = p.stderr.read() if p.stderr else ""
        if p.returncode != 0 or not last:
            tail = (stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise EmulatorError(
                f"the emulated worker on {cpu} failed (exit {p.returncode}): {tail}",
                hint=f"check the environment: mfnpatch env check {ENV_NAME} --prefix {self.prefix}",
            )
        return json.loads(last)


def open_emulator(prefix: Path | None = None) -> Emulator:
    """The emulated environment at ``prefix`` (default: ``default_prefix()``), checked to be complete."""
    d = Path(prefix).expanduser().absolute() if prefix else default_prefix().absolute()
    make = f"mfnpatch env create {ENV_NAME} --prefix {d}"
    if not (d / MARKER).is_file():
        raise EmulatorError(
            f"no emulated ARM environment at {d}" + (" (it is incomplete)" if d.exists() else ""),
            hint=f"make it with: {make} (or point MFNPATCH_ARM_ENV / --arm-env at one)",
        )
    try:
        marker = json.loads((d / MARKER).read_text())
    except (OSError, ValueError):
        raise EmulatorError(f"{d / MARKER}: unreadable", hint=f"make it again: {make} --force") from None
    if not isinstance(marker, dict) or marker.get("name") != ENV_NAME:
        raise EmulatorError(f"{d} is not an {ENV_NAME} environment (its marker says {marker!r:.80})", hint=make)
    em = Emulator(d, d / "bin" / "qemu-aarch64-static", d / "sysroot", d / "site", marker)
    for p in (em.qemu, em.python, em.site):
        if not p.exists():
            raise EmulatorError(f"{d}: {p} is missing", hint=f"make it again: {make} --force")
    return em


def arm_cpus() -> str:
    """``all`` when an emulated ARM environment is found (the recipes' ${arm_cpus}: their convert stage then checks
    the phone's CPU classes), else empty (the check is left out)."""
    try:
        open_emulator(None)
    except EmulatorError:
        return ""
    return "all"
