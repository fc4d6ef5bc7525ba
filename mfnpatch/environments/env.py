"""Locked environments and the doctor: `mfnpatch env list|lock|create|check`.

An environment lives in ``envs/<name>/``: ``env.yaml`` (what it is and why), the pip requirements and their
hash-pinned lock (made by uv), an optional no-deps part (packages whose declared dependencies are not
needed, e.g. pnnx's torch), and for conda environments the conda spec, a conda-lock virtual-packages
file and, when the channels could be reached, ``conda-lock.yml``.

The doctor checks an interpreter (the current one, or a created environment): each locked package at its
locked version, the Python version, MXNet's import and build features, the GPUs (nvidia-smi), whether
the MXNet library has kernels for them (SASS/PTX architectures read from ``libmxnet.so``'s ``.nv_fatbin``
section) and whether the driver is new enough for the CUDA runtime. It ends with one verdict line.
"""

from __future__ import annotations

import csv
import io
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write, sha256_bytes
from mfnpatch.resources import data_dir
from mfnpatch.schema import Strict, load_model

MARKER = "mfnpatch-env.json"  # written into a created environment when it is complete
INCOMPLETE = ".mfnpatch-incomplete"  # present while an environment is being created


class EnvError(MfnError):
    pass


# --------------------------------------------------------------------------------------------
# Manifests


class LockPart(Strict):
    requirements: str
    lock: str


class CondaPart(Strict):
    environment: str
    virtual_packages: str
    lock: str = "conda-lock.yml"
    platform: str = "linux-64"


class MXNetBuild(Strict):
    package: str
    version: str
    cuda: str | None = None
    driver_min: str | None = None
    gpu_archs: list[int] = Field(default_factory=list, description="SASS architectures in libmxnet.so")
    ptx: list[int] = Field(default_factory=list, description="PTX architectures in libmxnet.so")


class EnvSpec(Strict):
    schema_: Literal[1] = Field(alias="schema")
    name: str
    kind: Literal["pip", "conda"]
    description: str
    python: str
    platform: str = Field(description="uv's --python-platform for the pip lock")
    pip: LockPart
    no_deps: LockPart | None = None
    conda: CondaPart | None = None
    mxnet: MXNetBuild
    patches: str
    why: str


@dataclass
class Env:
    spec: EnvSpec
    dir: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def path(self, rel: str) -> Path:
        return self.dir / rel

    def locks(self) -> list[tuple[Path, bool]]:
        """(lock file, install without dependencies)."""
        out = [(self.path(self.spec.pip.lock), False)]
        if self.spec.no_deps:
            out.append((self.path(self.spec.no_deps.lock), True))
        return out

    def lock_sha256(self) -> str | None:
        parts = []
        for p, _ in self.locks():
            if not p.is_file():
                return None
            parts.append(p.read_bytes())
        if self.spec.conda and self.path(self.spec.conda.lock).is_file():
            parts.append(self.path(self.spec.conda.lock).read_bytes())
        return sha256_bytes(b"\0".join(parts))


def list_envs() -> list[Env]:
    root = data_dir("envs")
    return [load_env(d.name) for d in sorted(root.iterdir()) if (d / "env.yaml").is_file()]


def load_env(name: str) -> Env:
    root = data_dir("envs")
    d = root / name
    if not (d / "env.yaml").is_file():
        names = ", ".join(sorted(p.name for p in root.iterdir() if (p / "env.yaml").is_file())) or "none"
        raise EnvError(f"unknown environment '{name}'", hint=f"environments: {names} (see: mfnpatch env list)")
    spec = load_model(d / "env.yaml", EnvSpec)
    if spec.name != name:
        raise EnvError(f"{d / 'env.yaml'}: declares '{spec.name}' but lives in envs/{name}/")
    return Env(spec, d)


# --------------------------------------------------------------------------------------------
# Lock files (pip's requirements format with --hash)


_REQ = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(path: Path) -> dict[str, dict]:
    """name -> {version, hashes, line}; raises when a pin has no hash (a lock must be --require-hashes)."""
    if not path.is_file():
        raise EnvError(f"{path}: no lock file", hint=f"make it with: mfnpatch env lock {path.parent.name}")
    out: dict[str, dict] = {}
    current = None
    for i, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _REQ.match(line)
        if m:
            current = normalize(m.group(1))
            out[current] = {"version": m.group(2), "hashes": [], "line": i}
        for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            if current is None:
                raise EnvError(f"{path}:{i}: a hash before any requirement")
            out[current]["hashes"].append(h)
    for name, entry in out.items():
        if not entry["hashes"]:
            raise EnvError(
                f"{path}:{entry['line']}: {name}=={entry['version']} has no --hash",
                hint=f"regenerate the lock: mfnpatch env lock {path.parent.name}",
            )
    return out


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


def _lock_pip(env: Env, part: LockPart, no_deps: bool, report: LockReport, uv: str) -> None:
    req, lock = env.path(part.requirements), env.path(part.lock)
    old = parse_lock(lock) if lock.is_file() else {}
    tmp = lock.with_name(f".{lock.name}.new")
    cmd = [uv, "pip", "compile", str(req), "--generate-hashes", "--python-version", env.spec.python,
           "--python-platform", env.spec.platform, "--output-file", str(tmp),
           "--custom-compile-command", f"mfnpatch env lock {env.name}"]  # fmt: skip
    if no_deps:
        cmd.append("--no-deps")
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


def lock_env(name: str) -> LockReport:
    """Resolve the environment's locks with the real resolvers; keep a previous lock when one fails."""
    env = load_env(name)
    report = LockReport(env=name)
    uv = _uv()
    _lock_pip(env, env.spec.pip, False, report, uv)
    if env.spec.no_deps:
        _lock_pip(env, env.spec.no_deps, True, report, uv)
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
    if prefix.exists() and any(prefix.iterdir()):
        if (prefix / INCOMPLETE).exists():
            shutil.rmtree(prefix)  # a create that was killed: nothing of value in it
        elif force:
            shutil.rmtree(prefix)
        else:
            raise EnvError(f"{prefix} exists", hint="choose another --prefix, or --force to replace it")
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
        for lock, no_deps in locks:
            cmd = [*pip, "install", "--require-hashes", "--progress-bar", "off", *src, "-r", str(lock)]
            if no_deps:
                cmd.insert(cmd.index("--require-hashes"), "--no-deps")
            _run_logged(cmd, on_line)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        marker = {"name": name, "lock_sha256": env.lock_sha256(), "created": created, "python": env.spec.python}
        atomic_write(prefix / MARKER, json.dumps(marker, indent=2) + "\n")
        (prefix / INCOMPLETE).unlink()
    except BaseException:
        shutil.rmtree(prefix, ignore_errors=True)
        raise
    return prefix


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


# --------------------------------------------------------------------------------------------
# ELF and fatbin: which GPU architectures a library carries code for


FATBIN_MAGIC = 0xBA55ED50


@dataclass
class FatbinInfo:
    path: str
    has_section: bool
    containers: int = 0
    sass: dict[int, int] = field(default_factory=dict)  # sm -> number of containers with SASS for it
    ptx: dict[int, int] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.has_section:
            return "no .nv_fatbin section: a CPU build, no GPU code"
        s = ", ".join(f"sm_{a}" for a in sorted(self.sass)) or "none"
        p = ", ".join(f"compute_{a}" for a in sorted(self.ptx)) or "no PTX"
        return f"{self.containers} fatbins; SASS {s}; {p}"


def elf_sections(mm) -> dict[str, tuple[int, int]]:
    """Section name -> (file offset, size), for a little-endian ELF64 file."""
    if mm[:4] != b"\x7fELF":
        raise EnvError("not an ELF file")
    if mm[4] != 2 or mm[5] != 1:
        raise EnvError("only little-endian ELF64 files are read")
    shoff = struct.unpack_from("<Q", mm, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", mm, 0x3A)
    if shoff == 0 or shnum == 0:
        return {}
    headers = [struct.unpack_from("<IIQQQQIIQQ", mm, shoff + i * shentsize) for i in range(shnum)]
    str_off, str_size = headers[shstrndx][4], headers[shstrndx][5]
    names = mm[str_off : str_off + str_size]
    out = {}
    for h in headers:
        end = names.find(b"\0", h[0])
        out[names[h[0] : end].decode("ascii", "replace")] = (h[4], h[5])
    return out


def fatbin_archs(path: Path) -> FatbinInfo:
    """Read the SASS and PTX architectures of every fatbin container in a library's .nv_fatbin section."""
    path = Path(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise EnvError(f"{path}: empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                sections = elf_sections(mm)
            except EnvError as e:
                raise EnvError(f"{path}: {e.message}") from None
            if ".nv_fatbin" not in sections:
                return FatbinInfo(str(path), False)
            off, size = sections[".nv_fatbin"]
            info = FatbinInfo(str(path), True)
            sass: Counter = Counter()
            ptx: Counter = Counter()
            pos, end = off, off + size
            while pos + 16 <= end:
                magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", mm, pos)
                if magic != FATBIN_MAGIC:
                    pos += 8  # containers are 8-byte aligned; skip padding
                    continue
                info.containers += 1
                seen_sass, seen_ptx = set(), set()
                e, cend = pos + header_size, min(pos + header_size + fat_size, end)
                while e + 32 <= cend:
                    kind, _, entry_size, payload = struct.unpack_from("<HHIQ", mm, e)
                    arch = struct.unpack_from("<I", mm, e + 28)[0]
                    if entry_size == 0:
                        break
                    (seen_ptx if kind == 1 else seen_sass).add(arch)
                    e += entry_size + payload
                sass.update(seen_sass)
                ptx.update(seen_ptx)
                pos = max(cend, pos + 16)
            info.sass, info.ptx = dict(sorted(sass.items())), dict(sorted(ptx.items()))
            return info


def covered(cc: tuple[int, int], sass: list[int], ptx: list[int]) -> str | None:
    """How code for compute capability cc is available: SASS of the same major and a minor <= cc's runs
    as is; PTX for an architecture <= cc is compiled by the driver. None: no kernel can run."""
    major, minor = cc
    same = [a for a in sass if a // 10 == major and a % 10 <= minor]
    if same:
        return f"SASS sm_{max(same)}"
    jit = [a for a in ptx if (a // 10, a % 10) <= cc]
    if jit:
        return f"PTX compute_{max(jit)} (compiled by the driver at first use)"
    return None


# --------------------------------------------------------------------------------------------
# GPUs


# For drivers too old to report compute_cap: the GPUs this recipe meets.
KNOWN_CC = {
    "P40": (6, 1), "P100": (6, 0), "P4": (6, 1), "V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "A30": (8, 0),
    "A10": (8, 6), "A40": (8, 6), "RTX 30": (8, 6), "RTX 20": (7, 5), "TITAN V": (7, 0), "TITAN X": (6, 1),
    "GTX 10": (6, 1), "L4": (8, 9), "L40": (8, 9), "RTX 40": (8, 9), "H100": (9, 0), "H200": (9, 0),
    "H800": (9, 0), "GH200": (9, 0), "B200": (10, 0),
}  # fmt: skip


@dataclass
class Gpu:
    index: int
    name: str
    cc: tuple[int, int] | None
    driver: str


@dataclass
class GpuReport:
    found: bool
    gpus: list[Gpu]
    problem: str | None = None  # nvidia-smi absent or failing


def _cc_from_name(name: str) -> tuple[int, int] | None:
    for key, cc in sorted(KNOWN_CC.items(), key=lambda kv: -len(kv[0])):
        if key.lower() in name.lower():
            return cc
    return None


def parse_query_csv(text: str) -> list[Gpu]:
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    if not rows:
        return []
    header = [h.strip().split(" ")[0] for h in rows[0]]
    if "name" not in header:  # --format=csv,noheader
        header = ["index", "name", "compute_cap", "driver_version"][: len(rows[0])]
    else:
        rows = rows[1:]
    gpus = []
    for r in rows:
        d = dict(zip(header, (c.strip() for c in r), strict=False))
        cc = None
        cap = d.get("compute_cap", "")
        if re.fullmatch(r"\d+\.\d+", cap):
            a, b = cap.split(".")
            cc = (int(a), int(b))
        else:
            cc = _cc_from_name(d.get("name", ""))
        gpus.append(Gpu(int(d.get("index", len(gpus))), d.get("name", "?"), cc, d.get("driver_version", "?")))
    return gpus


def query_gpus(nvidia_smi: str | None = None) -> GpuReport:
    exe = nvidia_smi or os.environ.get("MFNPATCH_NVIDIA_SMI") or shutil.which("nvidia-smi")
    if not exe or not (Path(exe).exists() or shutil.which(exe)):
        return GpuReport(False, [], "nvidia-smi not found: no NVIDIA driver on this machine")
    fields = "index,name,compute_cap,driver_version"
    for attempt in (fields, "index,name,driver_version"):  # old drivers do not know compute_cap
        try:
            r = subprocess.run(
                [exe, f"--query-gpu={attempt}", "--format=csv"], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return GpuReport(False, [], f"nvidia-smi failed: {e}")
        if r.returncode == 0:
            return GpuReport(True, parse_query_csv(r.stdout))
        msg = (r.stdout + r.stderr).strip().splitlines()
        if attempt == fields and any("compute_cap" in m for m in msg):
            continue
        return GpuReport(False, [], f"nvidia-smi failed (exit {r.returncode}): {msg[-1] if msg else ''}")
    return GpuReport(False, [], "nvidia-smi failed")


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


# --------------------------------------------------------------------------------------------
# The doctor


PROBE = r"""
import json, sys, importlib.metadata as md, importlib.util
out = {"python": sys.version.split()[0], "executable": sys.executable, "prefix": sys.prefix,
       "packages": {d.metadata["Name"]: d.version for d in md.distributions() if d.metadata["Name"]}}
spec = importlib.util.find_spec("mxnet")
if spec and spec.submodule_search_locations:
    out["mxnet_dir"] = list(spec.submodule_search_locations)[0]
try:
    import mxnet as mx
    out["mxnet"] = mx.__version__
    out["features"] = {f.name: f.enabled for f in mx.runtime.Features().values()}
except Exception as e:
    out["mxnet_error"] = f"{type(e).__name__}: {e}"[:400]
print(json.dumps(out))
"""


@dataclass
class Finding:
    what: str
    ok: bool | None  # None: information
    detail: str
    fix: str | None = None


@dataclass
class Doctor:
    env: str
    interpreter: str
    findings: list[Finding] = field(default_factory=list)
    verdict: str = ""
    can_run: bool = False
    fix: str | None = None
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "env": self.env,
            "interpreter": self.interpreter,
            "can_run": self.can_run,
            "verdict": self.verdict,
            "fix": self.fix,
            "findings": [asdict(f) for f in self.findings],
            "facts": self.facts,
        }


def probe(python: str) -> dict:
    try:
        r = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=300)
    except OSError as e:
        raise EnvError(f"cannot run {python}: {e}") from None
    if r.returncode != 0:
        raise EnvError(f"{python} could not be probed", details=r.stderr.strip().splitlines()[-5:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def interpreter_for(prefix: Path | None) -> str:
    if prefix is None:
        return sys.executable
    p = Path(prefix)
    if (p / INCOMPLETE).exists():
        raise EnvError(
            f"{p} is an environment whose creation did not finish",
            hint="recreate it: mfnpatch env create NAME --prefix " + str(p),
        )
    py = p / "bin" / "python"
    if not py.exists():
        raise EnvError(
            f"{p} is not an environment (no bin/python)", hint="create one: mfnpatch env create cpu --prefix DIR"
        )
    return str(py)


def env_of_prefix(prefix: Path | None) -> str | None:
    if prefix is None:
        prefix = Path(sys.prefix)
    m = Path(prefix) / MARKER
    if m.is_file():
        try:
            return json.loads(m.read_text()).get("name")
        except ValueError:
            return None
    return None


def check(name: str | None = None, prefix: Path | None = None, nvidia_smi: str | None = None) -> Doctor:
    name = name or env_of_prefix(prefix) or "cpu"
    env = load_env(name)
    python = interpreter_for(prefix)
    doc = Doctor(env=name, interpreter=python)
    info = probe(python)
    doc.facts.update(
        {
            "python": info["python"],
            "mxnet": info.get("mxnet"),
            "prefix": info["prefix"],
            "lock_sha256": env.lock_sha256(),
        }
    )
    create_fix = f"mfnpatch env create {name} --prefix DIR (then use --env-prefix DIR)"
    # Python
    want = env.spec.python
    got = ".".join(info["python"].split(".")[:2])
    doc.findings.append(
        Finding(
            "python",
            got == want,
            f"Python {info['python']} (the {name} environment: {want})",
            None if got == want else create_fix,
        )
    )
    # Locked packages
    installed = {normalize(k): v for k, v in info["packages"].items()}
    missing, wrong = [], []
    for lock, _ in env.locks():
        for pkg, entry in parse_lock(lock).items():
            have = installed.get(pkg)
            if have is None:
                missing.append(f"{pkg}=={entry['version']}")
            elif have != entry["version"]:
                wrong.append(f"{pkg} {have} (locked {entry['version']})")
    n = sum(len(parse_lock(lock)) for lock, _ in env.locks())
    detail = f"{n - len(missing) - len(wrong)}/{n} locked packages at their locked versions"
    if wrong:
        detail += "; different: " + ", ".join(wrong[:8]) + (" …" if len(wrong) > 8 else "")
    if missing:
        detail += "; missing: " + ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
    doc.findings.append(
        Finding("lock", not missing and not wrong, detail, None if not (missing or wrong) else create_fix)
    )
    # MXNet
    if "mxnet" in info:
        feats = info.get("features", {})
        on = [k for k, v in feats.items() if v and k in ("CUDA", "CUDNN", "NCCL", "MKLDNN", "OPENMP", "BLAS_OPEN")]
        doc.findings.append(Finding("mxnet", True, f"MXNet {info['mxnet']} imports; features: {', '.join(on)}"))
        doc.facts["features"] = feats
    else:
        err = info.get("mxnet_error", "not installed")
        fix = create_fix
        if "np.bool" in err or "'bool'" in err:
            fix = "numpy >= 1.24 breaks MXNet 1.9 (np.bool): pin numpy<1.24, as the lock does; " + create_fix
        elif "libcud" in err or "libnccl" in err:
            fix = f"the CUDA {env.spec.mxnet.cuda} runtime is missing: the {name} environment brings it with conda"
        doc.findings.append(Finding("mxnet", False, f"import mxnet failed: {err}", fix))
    # The library's GPU code
    fat = None
    lib = Path(info["mxnet_dir"]) / "libmxnet.so" if info.get("mxnet_dir") else None
    build = env.spec.mxnet.package
    installed_build = next((normalize(k) for k in installed if k.startswith("mxnet")), None)
    if installed_build and installed_build != normalize(build):
        doc.findings.append(
            Finding(
                "mxnet",
                False,
                f"the installed MXNet build is {installed_build}, the {name} environment's is {build}",
                create_fix,
            )
        )
        lib = None  # its library says nothing about the environment's build
    if lib is not None and lib.is_file():
        fat = fatbin_archs(lib)
        doc.findings.append(Finding("kernels", None, f"{lib}: {fat.describe()}"))
        sass, ptx = sorted(fat.sass), sorted(fat.ptx)
        source = "libmxnet.so"
    else:
        sass, ptx = env.spec.mxnet.gpu_archs, env.spec.mxnet.ptx
        source = f"the {name} manifest ({env.spec.mxnet.package} {env.spec.mxnet.version} is not installed here)"
    doc.facts["sass"], doc.facts["ptx"] = sass, ptx
    # GPUs and driver
    gpu = query_gpus(nvidia_smi)
    doc.facts["gpus"] = [asdict(g) for g in gpu.gpus]
    needs_gpu = env.spec.mxnet.cuda is not None
    if not gpu.found:
        doc.findings.append(
            Finding(
                "gpu",
                False if needs_gpu else None,
                gpu.problem or "no GPU",
                "the cu environments need an NVIDIA GPU; on this machine use the cpu environment "
                "(mfnpatch recipe run may16 --profile smoke)"
                if needs_gpu
                else None,
            )
        )
    for g in gpu.gpus:
        cc = f"sm_{g.cc[0]}{g.cc[1]}" if g.cc else "unknown compute capability"
        if not needs_gpu:
            doc.findings.append(
                Finding(
                    "gpu",
                    None,
                    f"GPU {g.index} {g.name} ({cc}): the {name} environment runs on the CPU and does not use it",
                )
            )
            continue
        how = covered(g.cc, sass, ptx) if g.cc else None
        if how:
            doc.findings.append(Finding("gpu", True, f"GPU {g.index} {g.name} ({cc}): kernels from {how} ({source})"))
        else:
            doc.findings.append(
                Finding(
                    "gpu",
                    False,
                    f"GPU {g.index} {g.name} ({cc}): no kernels for it in "
                    f"{env.spec.mxnet.package} {env.spec.mxnet.version} (SASS "
                    f"{', '.join(f'sm_{a}' for a in sass) or 'none'}; "
                    f"{'PTX ' + ', '.join(str(a) for a in ptx) if ptx else 'no PTX'}; from {source})",
                    _kernel_fix(g.cc),
                )
            )
        if env.spec.mxnet.driver_min:
            ok = version_tuple(g.driver) >= version_tuple(env.spec.mxnet.driver_min)
            doc.findings.append(
                Finding(
                    "driver",
                    ok,
                    f"driver {g.driver} (CUDA {env.spec.mxnet.cuda} needs >= {env.spec.mxnet.driver_min})",
                    None if ok else f"update the NVIDIA driver to {env.spec.mxnet.driver_min} or newer",
                )
            )
    # the verdict names the most fundamental blocker first: hardware cannot be fixed by reinstalling
    order = {"gpu": 0, "driver": 1, "python": 2, "mxnet": 3, "lock": 4}
    bad = sorted((f for f in doc.findings if f.ok is False), key=lambda f: order.get(f.what, 9))
    doc.can_run = not bad
    if doc.can_run:
        where = "on the CPU" if not needs_gpu else f"on {len(gpu.gpus)} GPU(s)"
        doc.verdict = f"OK: the {name} environment can run the recipes here, {where}"
    else:
        first = bad[0]
        doc.verdict = f"CANNOT RUN: {first.detail}"
        doc.fix = first.fix
    return doc


def _kernel_fix(cc: tuple[int, int] | None) -> str:
    if cc is None:
        return "find the GPU's compute capability; then choose the environment whose MXNet build has kernels for it"
    if cc >= (9, 0):
        return (
            "no official MXNet build has kernels for sm_90 or newer: run the CPU smoke profile "
            "(mfnpatch recipe run may16 --profile smoke), or build MXNet from source with CUDA >= 11.8 for sm_90"
        )
    if cc >= (8, 0):
        return "use the cu112 environment (mxnet-cu112 1.9.1 has sm_80 and sm_86 kernels)"
    return "use the cu101 environment (sm_30 to sm_75)"


def _about_this_machines_gpus(f: Finding) -> bool:
    """A finding about the GPUs (or the CUDA libraries) of the machine the check runs on."""
    return f.what == "gpu" or (f.what == "mxnet" and ("libcud" in f.detail or "libnccl" in f.detail))


def recipe_env_check(plan, prefix: Path | None = None, gpus_checked_by_jobs: bool = False) -> dict:
    """Called by recipe run: the recipe's environment must be able to run here, else an error with the fix.

    gpus_checked_by_jobs: submitting to Slurm from a login node, whose GPUs (often none) say nothing about
    the compute nodes: findings about this machine's GPUs do not fail the submission; each job checks its
    node before its stage starts."""
    doc = check(plan.environment, prefix)
    failing = [f for f in doc.findings if f.ok is False]
    if not doc.can_run and gpus_checked_by_jobs and failing and all(map(_about_this_machines_gpus, failing)):
        return {
            "name": plan.environment,
            "lock_sha256": doc.facts.get("lock_sha256"),
            "check": f"deferred to each job's compute node (on the submitting machine: {doc.verdict})",
            "gpus": doc.facts.get("gpus"),
            "features": doc.facts.get("features"),
        }
    if not doc.can_run and gpus_checked_by_jobs and failing:  # lead with what the jobs' nodes cannot fix
        first = next(f for f in failing if not _about_this_machines_gpus(f))
        raise EnvError(
            f"environment {plan.environment}: CANNOT RUN: {first.detail}",
            details=[f.detail for f in failing if f is not first and not _about_this_machines_gpus(f)],
            hint=(first.fix or doc.fix or "") + " (or skip this check: --no-env-check)",
        )
    if not doc.can_run:
        raise EnvError(
            f"environment {plan.environment}: {doc.verdict}",
            details=[f.detail for f in doc.findings if f.ok is False][1:],
            hint=(doc.fix or "") + " (or skip this check: --no-env-check)",
        )
    return {
        "name": plan.environment,
        "lock_sha256": doc.facts.get("lock_sha256"),
        "check": doc.verdict,
        "gpus": doc.facts.get("gpus"),
        "features": doc.facts.get("features"),
    }
