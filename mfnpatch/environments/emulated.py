"""The emulated ARM environment (``kind: emulated``, ``envs/arm64-qemu``): locked, created and checked like the
others, but made of Debian packages and aarch64 wheels instead of a venv.

- ``env lock``: each package of ``debs.in`` resolved against Debian's own indexes (``Packages.xz`` of each suite,
  fetched over HTTP: no apt configuration is changed, nothing needs root), the newest version across the suites
  (python-debian's version order), recorded with its URL, size and sha256 in ``debs.lock``; the wheels as for
  every pip environment (uv, hashes).
- ``env create``: each deb downloaded (or taken from the cache or ``--find-links``), its sha256 checked, and
  unpacked into ``PREFIX/sysroot`` with python-debian (absolute links made relative, nothing written outside);
  the emulator's static binary out of qemu-user-static into ``PREFIX/bin``; the wheels installed for aarch64
  with pip (``--platform``, ``--only-binary``, ``--require-hashes``, ``--target PREFIX/site``).
- ``env check``: the worker started on each CPU class, and what that CPU really exposes (ncnn's
  ``cpu_support_arm_*``, the auxv hwcaps) held against what deploy's target expects; ncnn's version against this
  machine's.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mfnpatch.emulator import MARKER, open_emulator
from mfnpatch.environments.spec import INCOMPLETE, Env, EnvError, parse_lock
from mfnpatch.fsutil import atomic_write, sha256_file
from mfnpatch.resources import cache_dir

MIRROR = {"debian": "http://deb.debian.org/debian", "debian-security": "http://deb.debian.org/debian-security"}
MAX_DEB = 256 << 20


# --------------------------------------------------------------------------------------------
# env lock


def _index(suite: str, arch: str) -> list[dict]:
    """The paragraphs of one suite's Packages index (``debian:bookworm/main`` or ``debian-security:...``)."""
    from debian.deb822 import Packages

    archive, rest = suite.split(":", 1)
    dist, comp = rest.rsplit("/", 1)
    base = MIRROR[archive]
    url = f"{base}/dists/{dist}/{comp}/binary-{arch}/Packages.xz"
    with urllib.request.urlopen(url, timeout=120) as r:
        text = lzma.decompress(r.read()).decode("utf-8", "replace")
    out = []
    for p in Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
        out.append({"name": p["Package"], "version": p["Version"], "arch": p["Architecture"],
                    "url": f"{base}/{p['Filename']}", "size": int(p["Size"]), "sha256": p["SHA256"]})  # fmt: skip
    return out


def lock_debs(env: Env) -> list[str]:
    """Resolve ``debs.in`` (``name:arch`` per line) into ``debs.lock``; what was locked, one line each."""
    from debian.debian_support import Version

    em = env.spec.emulated
    assert em is not None
    wanted = [ln.split("#")[0].strip() for ln in env.path(em.debs_in).read_text().splitlines()]
    wanted = [w for w in wanted if w]
    archs = sorted({w.split(":")[1] for w in wanted})
    best: dict[str, dict] = {}
    for arch in archs:
        for suite in em.suites:
            for p in _index(suite, arch):
                key = f"{p['name']}:{p['arch']}"
                if key in wanted and (key not in best or Version(p["version"]) > Version(best[key]["version"])):
                    best[key] = p
    missing = [w for w in wanted if w not in best]
    if missing:
        raise EnvError(f"{env.path(em.debs_in)}: {', '.join(missing)} not in {', '.join(em.suites)}",
                       hint="name packages as NAME:ARCH of the suites env.yaml lists")  # fmt: skip
    lock = {"schema": 1, "suites": em.suites, "packages": [best[w] for w in wanted]}
    atomic_write(env.path(em.debs), json.dumps(lock, indent=1) + "\n")
    return [f"{em.debs}: {len(wanted)} Debian packages from {', '.join(em.suites)}"]


def read_debs(env: Env) -> list[dict]:
    em = env.spec.emulated
    assert em is not None
    path = env.path(em.debs)
    if not path.is_file():
        raise EnvError(f"{path}: no lock", hint=f"make it with: mfnpatch env lock {env.name}")
    try:
        doc = json.loads(path.read_text())
        pkgs = doc["packages"]
        assert all(len(p["sha256"]) == 64 and p["url"].startswith("http") for p in pkgs)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise EnvError(
            f"{path}: not a lock of Debian packages", hint=f"regenerate it: mfnpatch env lock {env.name}"
        ) from None
    return pkgs


# --------------------------------------------------------------------------------------------
# env create


def _fetch(p: dict, find_links: Path | None, offline: bool, on_line) -> Path:
    """The deb of lock entry ``p``, its sha256 checked: from --find-links, the cache, or its URL."""
    name = PurePosixPath(p["url"]).name
    cache = cache_dir() / "debs"
    cached = cache / f"{p['sha256']}.deb"
    for cand in ([Path(find_links) / name] if find_links else []) + [cached]:
        if cand.is_file() and sha256_file(cand) == p["sha256"]:
            return cand
    if offline:
        raise EnvError(f"{name} is not in --find-links {find_links} (offline)", hint="put the lock's .deb files there")
    if on_line:
        on_line(f"Downloading {name} ({p['size'] / 1e6:.1f} MB)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{p['sha256']}.{os.getpid()}.part"
    try:
        with urllib.request.urlopen(p["url"], timeout=300) as r, open(tmp, "wb") as f:
            n = 0
            while block := r.read(1 << 20):
                n += len(block)
                if n > min(MAX_DEB, p["size"]):
                    raise EnvError(f"{p['url']}: more bytes than the lock's {p['size']}")
                f.write(block)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EnvError(f"{p['url']}: could not download ({e})", hint=f"{p['name']}={p['version']} may have left "
                       "Debian's archive: relock with mfnpatch env lock arm64-qemu, or give the .deb with "
                       "--find-links DIR") from None  # fmt: skip
    if sha256_file(tmp) != p["sha256"]:
        tmp.unlink()
        raise EnvError(f"{p['url']}: its sha256 is not the lock's", hint="a corrupt download or a changed archive")
    os.replace(tmp, cached)
    return cached


def _unpack(deb: Path, root: Path, only: str | None = None) -> None:
    """A deb's files into ``root``: an absolute link made relative inside ``root``, nothing written outside it."""
    from debian.debfile import DebFile

    root = root.resolve()

    def keep(m: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        name = m.name.lstrip("./")
        if only is not None and name != only:
            return None
        if m.issym() and m.linkname.startswith("/"):
            here = PurePosixPath("/", name).parent
            m = m.replace(linkname=os.path.relpath(m.linkname, str(here)), deep=False)
        return tarfile.data_filter(m, dest)

    with DebFile(str(deb)).data.tgz() as tf:
        tf.extraction_filter = keep
        tf.extractall(root)


def create_emulated(env: Env, prefix: Path, find_links: Path | None, offline: bool,
                    on_line: Callable[[str], None] | None) -> None:  # fmt: skip
    em = env.spec.emulated
    assert em is not None
    pkgs = read_debs(env)
    ((lock, _),) = env.locks()
    parse_lock(lock)  # a wheel lock without hashes is refused before anything is made
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / INCOMPLETE).write_text("mfnpatch env create is writing this environment\n")
    try:
        (prefix / "sysroot").mkdir()
        (prefix / "bin").mkdir()
        for p in pkgs:
            deb = _fetch(p, find_links, offline, on_line)
            if p["arch"] == em.arch.replace("aarch64", "arm64"):
                _unpack(deb, prefix / "sysroot")
            else:  # the emulator: only its static binary, from the host's package
                _unpack(deb, prefix / "stage", only=f"usr/bin/{em.qemu}")
                os.replace(prefix / "stage" / "usr" / "bin" / em.qemu, prefix / "bin" / em.qemu)
                shutil.rmtree(prefix / "stage")
        if not (prefix / "bin" / em.qemu).is_file():
            raise EnvError(f"{env.path(em.debs)}: no package holds usr/bin/{em.qemu}")
        plats = [a for t in em.pip_platforms for a in ("--platform", t)]
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
               "--target", str(prefix / "site"), *plats, "--python-version", env.spec.python, "--implementation",
               "cp", "--only-binary=:all:", "--no-deps", "--require-hashes", "-r", str(lock)]  # fmt: skip
        if find_links:
            cmd += ["--find-links", str(find_links)]
        if offline:
            cmd += ["--no-index"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        for ln in r.stdout.splitlines():
            if on_line:
                on_line(ln)
        if r.returncode != 0:
            raise EnvError("installing the aarch64 wheels failed", details=r.stderr.strip().splitlines()[-5:])
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        marker = {"name": env.name, "lock_sha256": env.lock_sha256(), "created": created, "python": env.spec.python,
                  "kind": "emulated", "cpus": list(em.cpus)}  # fmt: skip
        atomic_write(prefix / MARKER, json.dumps(marker, indent=2) + "\n")
        (prefix / INCOMPLETE).unlink()
    except BaseException:
        shutil.rmtree(prefix, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# env check


@dataclass
class _Finding:  # the doctor's Finding, field for field (doctor.py wraps these)
    what: str
    ok: bool | None
    detail: str
    fix: str | None = None


@dataclass
class _Doc:
    env: str
    interpreter: str
    findings: list[_Finding] = field(default_factory=list)
    verdict: str = ""
    can_run: bool = False
    fix: str | None = None
    facts: dict = field(default_factory=dict)


def check_emulated(env: Env, prefix: Path | None) -> _Doc:
    """The doctor for the emulated environment: the worker on each CPU class, and what each exposes."""
    from importlib.metadata import PackageNotFoundError, version

    Finding = _Finding  # noqa: N806

    em = env.spec.emulated
    assert em is not None
    doc = _Doc(env=env.name, interpreter="")
    try:
        emu = open_emulator(prefix)
    except EnvError as e:
        doc.verdict, doc.fix = e.message, e.hint
        return doc
    except Exception as e:  # EmulatorError: no environment there
        doc.verdict, doc.fix = getattr(e, "message", str(e)), getattr(e, "hint", None)
        return doc
    doc.interpreter = f"{emu.python} under {emu.qemu.name}"
    want_lock = env.lock_sha256()
    got_lock = emu.marker.get("lock_sha256")
    doc.findings.append(Finding("lock", got_lock == want_lock, "made from the current lock" if got_lock == want_lock
                                else "made from another lock than envs/arm64-qemu's",
                                None if got_lock == want_lock else f"mfnpatch env create {env.name} --prefix "
                                f"{emu.prefix} --force"))  # fmt: skip
    ok = True
    for cpu in em.cpus:
        try:
            info = emu.run(cpu, {"mode": "probe"}, timeout=300)
        except Exception as e:
            doc.findings.append(Finding(cpu, False, getattr(e, "message", str(e))))
            ok = False
            continue
        feats = info["features"]
        have = sorted(k for k, v in feats.items() if v)
        missing = [f for f in em.cpus[cpu] if not feats.get(f, False)]
        doc.facts[cpu] = info
        detail = (f"{info['machine']}, Python {info['python']}, ncnn {info['ncnn']}; hwcaps: {', '.join(have)}; "
                  f"ncnn sees asimdhp {info['ncnn_cpu']['asimdhp']}")  # fmt: skip
        doc.findings.append(Finding(cpu, not missing, detail + (f"; missing {', '.join(missing)}" if missing else "")))
        ok = ok and not missing
        for pkg in em.same_version_as_host:
            try:
                host = version(pkg)
            except PackageNotFoundError:
                host = None
            if info.get(pkg) != host:
                doc.findings.append(
                    Finding(
                        pkg,
                        False,
                        f"{pkg} {info.get(pkg)} emulated, {host} on this machine: "
                        "the ARM rows would not measure the same build",
                        "relock both",
                    )
                )
                ok = False
    doc.can_run = ok and got_lock == want_lock
    doc.verdict = (f"{env.name} runs {', '.join(em.cpus)} with the same ncnn as this machine" if doc.can_run
                   else f"{env.name} cannot run every CPU class as deploy expects")  # fmt: skip
    return doc
