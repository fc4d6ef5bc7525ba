"""`mfnpatch env create NAME --prefix DIR`: an environment made from its committed lock, all or nothing (a
marker says it is complete; an interrupted creation is recognised and remade)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mfnpatch.environments.spec import INCOMPLETE, MARKER, Env, EnvError, load_env, parse_lock
from mfnpatch.fsutil import atomic_write

# --------------------------------------------------------------------------------------------
# env create


def find_python(version: str) -> str:
    """An interpreter of the wanted major.minor: this one, else python3.X on PATH."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    exe = shutil.which(f"python{version}")
    if exe:
        return exe
    raise EnvError(
        f"the environment needs Python {version}; this is {sys.version.split()[0]} and python{version} is not on PATH",
        hint=f"install Python {version} (e.g. pyenv install {version}) and rerun",
    )


def create_env(
    name: str,
    prefix: Path,
    *,
    find_links: Path | None = None,
    offline: bool = False,
    force: bool = False,
    on_line: Callable[[str], None] | None = None,
) -> Path:
    """A venv at ``prefix`` with the locked packages (pip --require-hashes). Whole, or nothing left behind."""
    env = load_env(name)
    if env.spec.kind == "conda":
        return _create_conda(env, prefix)
    prefix = Path(prefix).absolute()
    old: Path | None = None
    if prefix.is_symlink() or (prefix.exists() and not prefix.is_dir()):
        raise EnvError(f"--prefix {prefix} is {'a symlink' if prefix.is_symlink() else 'a file'}: refused",
                       hint="give the path of a new directory, or of an environment mfnpatch made")  # fmt: skip
    if prefix.exists() and any(prefix.iterdir()):
        if (prefix / INCOMPLETE).exists():
            shutil.rmtree(prefix)  # a create that was killed: nothing of value in it
        elif not (prefix / MARKER).is_file():
            raise EnvError(
                f"{prefix} exists and is not an environment mfnpatch made (no {MARKER}): refused, nothing deleted"
                + (", --force or not" if force else ""),
                hint="choose another --prefix; --force replaces only an environment made by mfnpatch env create",
            )
        elif not force:
            raise EnvError(f"{prefix} exists", hint="choose another --prefix, or --force to replace it")
        else:  # moved aside, not deleted, until the new one is complete (a venv cannot be built elsewhere and moved)
            old = Path(tempfile.mkdtemp(prefix=f".{prefix.name}.mfnpatch-old-", dir=prefix.parent))
            os.rename(prefix, old / "env")
    try:
        if env.spec.kind == "emulated":
            from mfnpatch.environments.emulated import create_emulated

            create_emulated(env, prefix, find_links, offline, on_line)
        else:
            _create_venv(env, name, prefix, find_links, offline, on_line)
    except BaseException:
        if old is not None:  # the previous environment comes back as it was
            shutil.rmtree(prefix, ignore_errors=True)
            os.rename(old / "env", prefix)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return prefix


def _create_venv(env: Env, name: str, prefix: Path, find_links: Path | None, offline: bool,
                 on_line: Callable[[str], None] | None) -> None:  # fmt: skip
    locks = env.locks()
    for lock, _ in locks:
        parse_lock(lock)  # a lock without hashes is refused before anything is made
    python = find_python(env.spec.python)
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / INCOMPLETE).write_text("mfnpatch env create is writing this environment\n")
    try:
        _run_logged([python, "-m", "venv", str(prefix)], on_line)
        pip = [str(prefix / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        src = []
        if find_links:
            src += ["--find-links", str(find_links)]
        if offline:
            src += ["--no-index"]
        parts = [env.spec.pip] + ([env.spec.no_deps] if env.spec.no_deps else [])
        for (lock, no_deps), part in zip(locks, parts, strict=True):
            extra = ["--extra-index-url", part.index] if part.index and not (find_links or offline) else []
            cmd = [*pip, "install", "--require-hashes", "--progress-bar", "off", *src, *extra, "-r", str(lock)]
            if no_deps:
                cmd.insert(cmd.index("--require-hashes"), "--no-deps")
            _run_logged(cmd, on_line)
        if env.spec.cuda_libraries is not None:
            install_loader_hook(env, site_packages(prefix / "bin" / "python"), on_line)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        marker = {"name": name, "lock_sha256": env.lock_sha256(), "created": created, "python": env.spec.python}
        atomic_write(prefix / MARKER, json.dumps(marker, indent=2) + "\n")
        (prefix / INCOMPLETE).unlink()
    except BaseException:
        shutil.rmtree(prefix, ignore_errors=True)
        raise


HOOK = "_mfnpatch_cuda_libs"  # the module, .pth and .json names in the environment's site-packages


def site_packages(python: Path) -> Path:
    r = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return Path(r.stdout.strip())


def wheel_lib_dirs(purelib: Path) -> list[Path]:
    """The library folders of NVIDIA's runtime wheels: site-packages/nvidia/*/lib."""
    return sorted(d for d in (purelib / "nvidia").glob("*/lib") if d.is_dir())


def install_loader_hook(env: Env, purelib: Path, on_line: Callable[[str], None] | None = None) -> list[str]:
    """Write the loader hook into the environment: the order to preload its NVIDIA libraries in, computed
    from libmxnet.so's link closure (each library after those it needs), the hook module and the .pth line
    that imports it. Refused (nothing written) when a library the closure needs is not in the environment."""
    from mfnpatch.environments.elf import link_closure
    from mfnpatch.environments.loader_hook import __file__ as hook_source

    assert env.spec.cuda_libraries is not None
    lib = purelib / "mxnet" / "libmxnet.so"
    if not lib.is_file():
        raise EnvError(f"{lib}: not installed; the {env.name} lock should have installed {env.spec.build.package}")
    wheels = env.spec.cuda_libraries
    closure = link_closure(lib, wheel_lib_dirs(purelib), driver=wheels.driver, providers=wheels.wheels)
    missing = [x for x in closure.missing if x.soname not in wheels.driver]
    if missing:
        raise EnvError(
            f"{lib}: {len(missing)} librar{'y' if len(missing) == 1 else 'ies'} it needs not in the environment: "
            + ", ".join(f"{x.soname} ({x.provider or 'no wheel known'})" for x in missing),
            details=[x.note for x in missing if x.note],
            hint=f"add the wheels to envs/{env.name}/pip.in and lock again: mfnpatch env lock {env.name}",
        )
    order = [str(Path(p).relative_to(purelib.resolve())) for p in closure.load_order]
    atomic_write(purelib / f"{HOOK}.json", json.dumps({"load_order": order}, indent=2) + "\n")
    atomic_write(purelib / f"{HOOK}.py", Path(hook_source).read_text())
    atomic_write(purelib / f"{HOOK}.pth", f"import {HOOK}\n")
    if on_line:
        on_line(f"Installed the loader hook: {len(order)} NVIDIA libraries preloaded before import mxnet")
    return order


def _run_logged(cmd: list[str], on_line: Callable[[str], None] | None) -> None:
    env = {**os.environ, "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    tail: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail = (tail + [line])[-15:]
                if on_line:
                    on_line(line)
    except BaseException:  # interrupted: stop the child before the caller removes what it was writing
        proc.kill()
        proc.wait()
        raise
    rc = proc.wait()
    if rc != 0:
        why = next((ln for ln in reversed(tail) if "ERROR" in ln or "error" in ln.lower()), tail[-1] if tail else "")
        raise EnvError(
            f"{Path(cmd[0]).name} {' '.join(cmd[1:4])} … failed (exit {rc}): {why}",
            details=tail[-8:],
            hint="see the lines above; a hash mismatch means the download is not the file the lock was made from",
        )


def _create_conda(env: Env, prefix: Path) -> Path:
    c = env.spec.conda
    assert c is not None
    lock = env.path(c.lock)
    if not lock.is_file():
        raise EnvError(
            f"environment {env.name} has no {c.lock}: its conda part was never locked (the conda channels were "
            "unreachable when it was locked)",
            hint=f"on a machine that reaches conda-forge: mfnpatch env lock {env.name}; then: conda-lock install "
            f"--prefix {prefix} {lock} && {prefix}/bin/pip install --require-hashes -r {env.path(env.spec.pip.lock)}",
        )
    exe = next((shutil.which(x) for x in ("micromamba", "mamba", "conda") if shutil.which(x)), None)
    if exe is None:
        raise EnvError("no conda, mamba or micromamba on PATH", hint="install micromamba, then rerun")
    cl = shutil.which("conda-lock") or str(Path(sys.executable).with_name("conda-lock"))
    prefix = Path(prefix).absolute()
    try:
        subprocess.run([cl, "install", "--conda", exe, "--prefix", str(prefix), str(lock)], check=True)
        subprocess.run(
            [
                str(prefix / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--require-hashes",
                "-r",
                str(env.path(env.spec.pip.lock)),
            ],
            check=True,
        )
    except (subprocess.CalledProcessError, BaseException):
        shutil.rmtree(prefix, ignore_errors=True)
        raise
    return prefix
