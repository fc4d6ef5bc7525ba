"""`mfnpatch env lock NAME`: the environment's requirements resolved and hash-pinned by uv (pip part) and
conda-lock (conda part, when its channels can be reached)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.environments.spec import Env, EnvError, LockPart, load_env, parse_lock
from mfnpatch.fsutil import atomic_write

# --------------------------------------------------------------------------------------------
# env lock


@dataclass
class LockReport:
    env: str
    locked: list[str] = field(default_factory=list)
    not_locked: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.not_locked


def _uv() -> str:
    exe = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(exe).exists():
        raise EnvError("uv is not installed (it resolves the pip locks)", hint="pip install uv")
    return exe


def _lock_pip(env: Env, part: LockPart, no_deps: bool, report: LockReport, uv: str,
              find_links: Path | None = None) -> None:  # fmt: skip
    req, lock = env.path(part.requirements), env.path(part.lock)
    old = parse_lock(lock) if lock.is_file() else {}
    tmp = lock.with_name(f".{lock.name}.new")
    if lock.is_file():  # uv keeps the versions of an existing output file where they still satisfy (no upgrade)
        tmp.write_bytes(lock.read_bytes())
    cmd = [uv, "pip", "compile", str(req), "--generate-hashes", "--python-version", env.spec.python,
           "--python-platform", env.spec.platform, "--output-file", str(tmp),
           "--custom-compile-command", f"mfnpatch env lock {env.name}"]  # fmt: skip
    if no_deps:
        cmd.append("--no-deps")
    if part.index and not find_links:
        cmd += ["--extra-index-url", part.index, "--index-strategy", "unsafe-best-match"]
    if find_links:
        cmd += ["--find-links", str(Path(find_links).absolute())]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=env.dir)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        report.not_locked.append(
            f"{part.lock}: uv could not resolve {part.requirements} ({last}); "
            f"kept the previous lock" + ("" if lock.is_file() else " (there is none)")
        )
        return
    text = tmp.read_text()
    tmp.unlink()
    atomic_write(lock, text)
    new = parse_lock(lock)
    if not old:
        report.changes.append(f"{part.lock}: first lock")
        report.locked.append(f"{part.lock}: {len(new)} packages for Python {env.spec.python} on {env.spec.platform}")
        return
    for n in sorted(set(old) | set(new)):
        a, b = old.get(n, {}).get("version"), new.get(n, {}).get("version")
        if a != b:
            report.changes.append(f"{n}: {a or '(new)'} -> {b or '(removed)'}")
    report.locked.append(f"{part.lock}: {len(new)} packages for Python {env.spec.python} on {env.spec.platform}")


def lock_env(name: str, find_links: Path | None = None) -> LockReport:
    """Resolve the environment's locks with the real resolvers; keep a previous lock when one fails.
    find_links: a directory of wheels besides the indexes (not written into the lock)."""
    env = load_env(name)
    report = LockReport(env=name)
    uv = _uv()
    _lock_pip(env, env.spec.pip, env.spec.emulated is not None, report, uv, find_links)  # emulated: only what it names
    if env.spec.emulated:
        from mfnpatch.environments.emulated import lock_debs

        report.locked += lock_debs(env)
    if env.spec.no_deps:
        _lock_pip(env, env.spec.no_deps, True, report, uv, find_links)
    if env.spec.conda:
        c = env.spec.conda
        exe = shutil.which("conda-lock") or str(Path(sys.executable).with_name("conda-lock"))
        if not Path(exe).exists():
            report.not_locked.append(f"{c.lock}: conda-lock is not installed (pip install conda-lock)")
            return report
        kept = "kept the previous conda-lock.yml" if env.path(c.lock).is_file() else "no conda lock exists yet"
        unreachable = channels_unreachable(env.path(c.environment))
        if unreachable:
            report.not_locked.append(
                f"{c.lock}: the conda channels are unreachable from this machine ({unreachable}); "
                f"{kept}. The pip part above is locked; rerun mfnpatch env lock {name} where "
                "the channels are reachable"
            )
            return report
        tmp = env.path(f".{c.lock}.new")
        cmd = [exe, "lock", "--file", c.environment, "--virtual-package-spec", c.virtual_packages,
               "--platform", c.platform, "--lockfile", tmp.name]  # fmt: skip
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=env.dir, timeout=600)
            ok, why = r.returncode == 0, (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        except subprocess.TimeoutExpired:
            ok, why = False, "timed out after 600 s"
        if ok and tmp.is_file():
            atomic_write(env.path(c.lock), tmp.read_bytes())
            tmp.unlink()
            report.locked.append(f"{c.lock}: the conda part ({c.environment}) for {c.platform}")
        else:
            tmp.unlink(missing_ok=True)
            net = any(s in why.lower() for s in ("connection", "resolve", "http", "ssl", "timed out", "url"))
            cause = "the conda channels are unreachable from this machine" if net else "conda-lock failed"
            report.not_locked.append(
                f"{c.lock}: {cause} ({why[:200]}); {kept}. The pip part above is locked; "
                f"rerun mfnpatch env lock {name} where the channels are reachable"
            )
    return report


def channels_unreachable(environment_yml: Path) -> str | None:
    """Why the conda channels of an environment.yml cannot be reached (fast), or None."""
    import socket
    from urllib.parse import urlparse

    import yaml

    data = yaml.safe_load(environment_yml.read_text()) or {}
    for ch in data.get("channels") or ["conda-forge"]:
        ch = str(ch)
        if ch.startswith("file://"):
            if not Path(urlparse(ch).path).exists():
                return f"channel {ch} does not exist"
            continue
        host = urlparse(ch).hostname if "://" in ch else "conda.anaconda.org"
        try:
            socket.create_connection((host, 443), timeout=5).close()
        except OSError as e:
            return f"{host}: {e}"
    return None
