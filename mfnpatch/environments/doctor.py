"""The doctor (`mfnpatch env check`): an interpreter (the current one, or a created environment) probed, then
diagnosed. ``gather`` runs the probe (packages, Python, MXNet's import and build features, the library's GPU
code, nvidia-smi); ``diagnose`` decides from those facts alone: each locked package at its locked version,
the Python version, whether the MXNet library has kernels for the GPUs and whether the driver is new enough
for the CUDA runtime. It ends with one verdict line, the most fundamental blocker first."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.environments.create import HOOK, wheel_lib_dirs
from mfnpatch.environments.elf import Closure, link_closure
from mfnpatch.environments.gpu import FatbinInfo, GpuReport, covered, fatbin_archs, query_gpus, version_tuple
from mfnpatch.environments.spec import (
    INCOMPLETE,
    MARKER,
    Env,
    EnvError,
    MXNetBuild,
    list_envs,
    load_env,
    normalize,
    parse_lock,
)
from mfnpatch.lineages import LINEAGES
from mfnpatch.lineages import get as get_lineage

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
spec = importlib.util.find_spec("torch")
if spec and spec.submodule_search_locations:
    out["torch_dir"] = list(spec.submodule_search_locations)[0]
    try:
        import torch
        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
    except Exception as e:
        out["torch_error"] = f"{type(e).__name__}: {e}"[:400]
import sysconfig
out["purelib"] = sysconfig.get_paths()["purelib"]
hook = sys.modules.get("_mfnpatch_cuda_libs")
out["loader_hook"] = None if hook is None else {"failed": hook._done[0] if hook._done else None}
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

    @property
    def exit_code(self) -> int:
        return 0 if self.can_run else 1

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


@dataclass
class Facts:
    """What the probe found, and what diagnosing it needs from disk (locks, the library's GPU code, GPUs)."""

    name: str
    interpreter: str
    info: dict  # the interpreter's own report (PROBE)
    locked: dict[str, str]  # package -> locked version, every lock of the environment
    lock_sha256: str | None
    library: str | None  # libmxnet.so of the installed build, when it is the environment's build
    fatbin: FatbinInfo | None  # its GPU code
    gpu: GpuReport
    closure: Closure | None = None  # libmxnet.so's link closure, as the environment's loader finds it
    wheel_dirs: list[str] = field(default_factory=list)  # site-packages/nvidia/*/lib, preloaded or not
    marker: dict | str | None = None  # the environment's marker: what env create wrote, "unreadable", or None


def gather(name: str | None = None, prefix: Path | None = None, nvidia_smi: str | None = None) -> tuple[Env, Facts]:
    """Probe the interpreter of ``prefix`` (or this one) and the machine."""
    name = name or env_of_prefix(prefix) or "cpu"
    env = load_env(name)
    python = interpreter_for(prefix)
    info = probe(python)
    locked: dict[str, str] = {}
    for lock, _ in env.locks():
        locked.update({pkg: entry["version"] for pkg, entry in parse_lock(lock).items()})
    build = env.spec.build
    installed = {normalize(k): v for k, v in info["packages"].items()}
    mod_dir = info.get(f"{build.import_name}_dir")
    lib = Path(mod_dir).parent / build.library if mod_dir else None
    if installed_build(installed, build) not in (None, (normalize(build.package), build.version)):
        lib = None  # its library says nothing about the environment's build
    fat = fatbin_archs(lib) if lib is not None and lib.is_file() else None
    closure, wheel_dirs = None, []
    if lib is not None and lib.is_file():
        purelib = Path(info.get("purelib") or Path(mod_dir or "").parent)
        wheel_dirs = wheel_lib_dirs(purelib)
        hooked = _hooked_dirs(purelib) if info.get("loader_hook") is not None else []
        if env.spec.kind == "conda":
            hooked.append(Path(info["prefix"]) / "lib")
        cuda = env.spec.cuda_libraries
        closure = link_closure(lib, hooked, driver=cuda.driver if cuda else ("libcuda.so.1",),
                               providers=cuda.wheels if cuda else {})  # fmt: skip
    return env, Facts(name, python, info, locked, env.lock_sha256(), str(lib) if fat else None, fat,
                      query_gpus(nvidia_smi), closure, [str(d) for d in wheel_dirs],
                      read_marker(Path(info.get("prefix") or sys.prefix)))  # fmt: skip


def installed_build(installed: dict[str, str], build: MXNetBuild) -> tuple[str, str] | None:
    """(distribution, version) of the installed build of the environment's framework: for MXNet any mxnet*
    distribution (mxnet, mxnet-cu117, ...), for PyTorch the torch distribution; None when none is."""
    if build.import_name == "mxnet":
        name = next((k for k in installed if k == "mxnet" or k.startswith("mxnet-")), None)
    else:
        name = normalize(build.package) if normalize(build.package) in installed else None
    return (name, installed[name]) if name else None


def read_marker(prefix: Path) -> dict | str | None:
    """What `env create` wrote into the environment: its name and the sha256 of the lock it was made from."""
    m = Path(prefix) / MARKER
    if not m.is_file():
        return None
    try:
        data = json.loads(m.read_text()[:100_000])
    except (OSError, ValueError):
        return "unreadable"
    return data if isinstance(data, dict) and data.get("name") and data.get("lock_sha256") else "unreadable"


def _hooked_dirs(purelib: Path) -> list[Path]:
    """The folders whose libraries the environment's loader hook preloads (from its load order)."""
    try:
        order = json.loads((purelib / f"{HOOK}.json").read_text())["load_order"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted({(purelib / rel).parent for rel in order})


def check(name: str | None = None, prefix: Path | None = None, nvidia_smi: str | None = None) -> Doctor:
    env = load_env(name) if name else None
    if env is not None and not env.spec.trains:  # an emulated phone CPU: its own doctor
        from mfnpatch.environments.emulated import check_emulated

        e = check_emulated(env, prefix)
        return Doctor(e.env, e.interpreter, [Finding(f.what, f.ok, f.detail, f.fix) for f in e.findings], e.verdict,
                      e.can_run, e.fix, e.facts)  # fmt: skip
    return diagnose(*gather(name, prefix, nvidia_smi))


def diagnose(env: Env, facts: Facts) -> Doctor:
    """The verdict from the facts alone: no process, no file."""
    name, info = facts.name, facts.info
    doc = Doctor(env=name, interpreter=facts.interpreter)
    doc.facts.update(
        {
            "python": info["python"],
            "mxnet": info.get("mxnet"),
            "prefix": info["prefix"],
            "lock_sha256": facts.lock_sha256,
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
    for pkg, version in facts.locked.items():
        have = installed.get(pkg)
        if have is None:
            missing.append(f"{pkg}=={version}")
        elif have != version:
            wrong.append(f"{pkg} {have} (locked {version})")
    n = len(facts.locked)
    detail = f"{n - len(missing) - len(wrong)}/{n} locked packages at their locked versions"
    if wrong:
        detail += "; different: " + ", ".join(wrong[:8]) + (" …" if len(wrong) > 8 else "")
    if missing:
        detail += "; missing: " + ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
    doc.findings.append(
        Finding("lock", not missing and not wrong, detail, None if not (missing or wrong) else create_fix)
    )
    # Which lock the environment was made from (its marker says; the packages above are what is installed)
    if facts.marker == "unreadable":
        doc.findings.append(Finding("marker", False, f"{MARKER} is unreadable or incomplete: the environment's "
                                    "origin is unknown", create_fix))  # fmt: skip
    elif isinstance(facts.marker, dict):
        made, now = facts.marker.get("lock_sha256"), facts.lock_sha256
        same = made == now and facts.marker.get("name") == name
        text = f"made by env create from the {facts.marker.get('name')} lock {str(made)[:12]}"
        if not same:
            text += f"; the {name} lock is now {str(now)[:12]}"
        doc.findings.append(Finding("marker", same, text, None if same else create_fix))
    build = env.spec.build
    # MXNet (the framework of the mxnet lineage; in a torch environment, the CPU wheel of its .rec reader)
    if env.spec.mxnet is not None:
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
                fix = f"the CUDA {env.spec.mxnet.cuda} runtime is missing: the {name} environment brings it"
            doc.findings.append(Finding("mxnet", False, f"import mxnet failed: {err}", fix))
    # PyTorch (the arcface_torch lineage)
    if env.spec.torch is not None:
        if "torch" in info:
            cuda = f"built with CUDA {info['torch_cuda']}" if info.get("torch_cuda") else "a CPU build"
            doc.findings.append(Finding("torch", True, f"PyTorch {info['torch']} imports; {cuda}"))
            doc.facts["torch"] = info["torch"]
        else:
            err = info.get("torch_error", "not installed")
            doc.findings.append(Finding("torch", False, f"import torch failed: {err}", create_fix))
    # The library's GPU code
    have = installed_build({normalize(k): v for k, v in info["packages"].items()}, build)
    if have is not None and have != (normalize(build.package), build.version):
        doc.findings.append(
            Finding(
                build.import_name,
                False,
                f"the installed {build.import_name} build is {have[0]} {have[1]}, the {name} environment's is "
                f"{build.package} {build.version}",
                create_fix,
            )
        )
    library = Path(build.library).name
    if facts.fatbin is not None:
        doc.findings.append(Finding("kernels", None, f"{facts.library}: {facts.fatbin.describe()}"))
        sass, ptx = sorted(facts.fatbin.sass), sorted(facts.fatbin.ptx)
        source = library
    else:
        sass, ptx = build.gpu_archs, build.ptx
        source = f"the {name} manifest ({build.package} {build.version} is not installed here)"
    doc.facts["sass"], doc.facts["ptx"] = sass, ptx
    # Link closure: what the library needs, found where the loader will look
    if facts.closure is not None:
        doc.findings += _link_findings(env, facts)
    # GPUs and driver
    gpu = facts.gpu
    doc.facts["gpus"] = [asdict(g) for g in gpu.gpus]
    doc.facts["driver_cuda"] = gpu.cuda
    needs_gpu = build.cuda is not None
    if not gpu.found:
        doc.findings.append(
            Finding(
                "gpu",
                False if needs_gpu else None,
                gpu.problem or "no GPU",
                f"the {name} environment needs an NVIDIA GPU; on this machine use the "
                f"{_cpu_env(env)} environment ({_recipe_line(_cpu_env(env))})"
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
                    f"GPU {g.index} {g.name} ({cc}): no kernels for it in {build.package} {build.version} (SASS "
                    f"{', '.join(f'sm_{a}' for a in sass) or 'none'}; "
                    f"{'PTX ' + ', '.join(str(a) for a in ptx) if ptx else 'no PTX'}; from {source})",
                    kernel_fix(g.cc, env),
                )
            )
        if build.driver_min:
            ok = version_tuple(g.driver) >= version_tuple(build.driver_min)
            major = build.cuda.split(".")[0] if build.cuda else ""
            says = f", CUDA {gpu.cuda}" if gpu.cuda else ""
            if ok and gpu.cuda and version_tuple(gpu.cuda)[:1] < version_tuple(major):
                ok = False  # a driver for an older CUDA major cannot run this runtime at all
            doc.findings.append(
                Finding(
                    "driver",
                    ok,
                    f"driver {g.driver}{says} ({build.package} {build.version}'s CUDA {build.cuda} needs a CUDA "
                    f"{major} driver >= {build.driver_min})",
                    None if ok else f"update the NVIDIA driver to {build.driver_min} or newer",
                )
            )
    # the verdict names the most fundamental blocker first: hardware cannot be fixed by reinstalling
    order = {"libcuda": 0, "gpu": 1, "driver": 2, "python": 3, "links": 4, "mxnet": 5, "torch": 5, "lock": 6}
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


def _link_findings(env: Env, facts: Facts) -> list[Finding]:
    """The link closure as findings: every library found (and where), each missing one named with the wheel
    that provides it; the driver's libraries looked for on the machine."""
    closure = facts.closure
    assert closure is not None
    cuda = env.spec.cuda_libraries
    driver = set(cuda.driver if cuda else ("libcuda.so.1",))
    create_fix = f"recreate the environment: mfnpatch env create {env.name} --prefix DIR --force"
    out: list[Finding] = []
    missing = [x for x in closure.missing if x.soname not in driver]
    counts = {w: len(closure.found(w)) for w in ("environment", "beside", "system")}
    if not missing:
        parts = [f"{counts['environment']} from the environment's NVIDIA wheels" if counts["environment"] else "",
                 f"{counts['beside']} beside {Path(closure.root).name}" if counts["beside"] else "",
                 f"{counts['system']} from the system" if counts["system"] else ""]  # fmt: skip
        n = len(closure.links) - len(closure.missing) - len(closure.found("driver"))
        found = ", ".join(p for p in parts if p)
        out.append(Finding("links", True, f"{Path(closure.root).name}'s link closure: {n} libraries found ({found})"))
    for x in missing:
        detail = f"{x.soname} (needed by {x.needed_by}) is not found"
        where = [d for d in facts.wheel_dirs if (Path(d) / x.soname).is_file()]
        if where and facts.info.get("loader_hook") is None:
            detail += f"; it is in {where[0]}, but the environment's loader hook ({HOOK}.pth) is not installed"
        if x.note:
            detail += f"; {x.note}"
        if x.provider:
            detail += f"; the {x.provider} wheel provides it"
        out.append(Finding("links", False, detail, create_fix))
    for soname in sorted(driver & {x.soname for x in closure.links}):
        x = next(x for x in closure.links if x.soname == soname)
        if x.where == "driver":
            out.append(Finding("libcuda", True, f"{soname} (the NVIDIA driver's) at {x.path}"))
        else:
            need = f" >= {env.spec.build.driver_min}" if env.spec.build.driver_min else ""
            detail = (f"the NVIDIA driver is not installed on this machine: {soname}, which {x.needed_by} needs, "
                      "is not found (it comes with the driver, never with the environment)")  # fmt: skip
            fix = (f"install the NVIDIA driver{need} (it provides {soname}); on a machine without an NVIDIA GPU "
                   f"use the {_cpu_env(env)} environment ({_recipe_line(_cpu_env(env))})")  # fmt: skip
            out.append(Finding("libcuda", False, detail, fix))
    return out


def recipe_for(env_name: str) -> tuple[str, str | None] | None:
    """(recipe, profile) of a bundled recipe that runs in the environment: its default environment, else a
    profile's (the smoke profile last)."""
    import yaml

    from mfnpatch.resources import data_dir

    found: list[tuple[int, str, str | None]] = []
    for p in sorted(data_dir("recipes", bundled=True).glob("*.yaml")):
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(d, dict) or d.get("schema") != 1 or not isinstance(d.get("stages"), dict):
            continue
        if d.get("environment") == env_name:
            found.append((0, p.stem, None))
        for prof, pd in (d.get("profiles") or {}).items():
            if isinstance(pd, dict) and pd.get("environment") == env_name:
                found.append((1 if prof != "smoke" else 2, p.stem, prof))
    # the newest plan of a lineage first: may16 over may09
    found.sort(key=lambda t: (t[0], [-ord(c) for c in t[1]]))
    return (found[0][1], found[0][2]) if found else None


def _recipe_line(env_name: str) -> str:
    r = recipe_for(env_name)
    if r is None:
        return "mfnpatch recipe run RECIPE"
    return f"mfnpatch recipe run {r[0]}" + (f" --profile {r[1]}" if r[1] else "")


def _cpu_env(env: Env) -> str:
    return get_lineage(env.spec.lineage).cpu_environment or "cpu"


def kernel_fix(cc: tuple[int, int] | None, env: Env) -> str:
    """The environment to use instead, from what the bundled manifests say their libraries carry: the same
    lineage first, pip-only first; else the other lineage, said as such."""
    if cc is None:
        return (
            "find the GPU's compute capability; then choose the environment whose build has kernels for it "
            "(mfnpatch env gpus)"
        )
    sm = f"sm_{cc[0]}{cc[1]}"
    fits = [
        e
        for e in list_envs(bundled=True)
        if e.spec.trains and e.spec.build.cuda and covered(cc, e.spec.build.gpu_archs, e.spec.build.ptx)
    ]
    fits.sort(key=lambda e: (e.spec.lineage != env.spec.lineage, e.spec.kind != "pip", e.name))
    if not fits:
        return (f"no build mfnpatch knows has kernels for {sm}: run the CPU smoke profile "
                f"({_recipe_line(_cpu_env(env))}), or build the framework from source for {sm}")  # fmt: skip
    e = fits[0]
    b = e.spec.build
    how = covered(cc, b.gpu_archs, b.ptx)
    prep = f"mfnpatch env create {e.name} --prefix DIR, then {_recipe_line(e.name)} --env-prefix DIR"
    text = (f"use the {e.name} environment ({'pip only; ' if e.spec.kind == 'pip' else ''}{b.package} {b.version} "
            f"has {how} kernels for {sm}): {prep}")  # fmt: skip
    if e.spec.lineage != env.spec.lineage:
        what, note = get_lineage(e.spec.lineage).title, get_lineage(env.spec.lineage).no_gpu_build
        text += (f"; that is the {e.spec.lineage} lineage ({what}): no {env.spec.build.import_name} build mfnpatch "
                 f"knows has kernels for {sm}" + (f" ({note})" if note else ""))  # fmt: skip
    return text


def gpu_table() -> list[dict]:
    """Which environment runs which GPU, from the bundled manifests' kernel lists (what the doctor decides
    with): one row per compute capability of the GPUs the doctor knows by name, oldest first."""
    from mfnpatch.environments.gpu import KNOWN_CC

    envs = [e for e in list_envs(bundled=True) if e.spec.trains and e.spec.build.cuda]
    by_cc: dict[tuple[int, int], list[str]] = {}
    for name, cc in KNOWN_CC.items():
        by_cc.setdefault(cc, []).append(name)
    rows = []
    for cc in sorted(by_cc):
        kernels = {e.name: covered(cc, e.spec.build.gpu_archs, e.spec.build.ptx) for e in envs}
        best = {}
        # a column for each registered lineage whose recipes mfnpatch runs (it has a CPU environment)
        for lineage in (name for name, lin in LINEAGES.items() if lin.cpu_environment):
            fits = [e for e in envs if e.spec.lineage == lineage and kernels[e.name]]
            fits.sort(key=lambda e: (e.spec.kind != "pip", e.name))
            best[lineage] = fits[0].name if fits else None
        rows.append({"cc": f"sm_{cc[0]}{cc[1]}", "gpus": sorted(by_cc[cc]), "kernels": kernels, "use": best})
    return rows


def gpu_table_markdown() -> str:
    rows = gpu_table()
    envs = list(rows[0]["kernels"]) if rows else []
    lineages = list(rows[0]["use"]) if rows else []
    head = ["GPUs", "arch", *envs, *(get_lineage(name).column or name for name in lineages)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [", ".join(r["gpus"]), r["cc"]]
        cells += [(r["kernels"][e] or "—").replace(" (compiled by the driver at first use)", "") for e in envs]
        cells += [r["use"][name] or "none: no build" for name in lineages]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def only_this_machine(doc: Doctor) -> bool:
    """The environment is whole; what fails is this machine's GPUs or driver (a login node, a container build)."""
    failing = [f for f in doc.findings if f.ok is False]
    return bool(failing) and all(map(_about_this_machines_gpus, failing))


def _about_this_machines_gpus(f: Finding) -> bool:
    """A finding about the GPUs (or the CUDA libraries) of the machine the check runs on."""
    return f.what in ("gpu", "libcuda") or (f.what == "mxnet" and ("libcud" in f.detail or "libnccl" in f.detail))


def recipe_env_check(name: str, prefix: Path | None = None, gpus_checked_by_jobs: bool = False) -> dict:
    """Called by recipe run: the recipe's environment must be able to run here, else an error with the fix.

    gpus_checked_by_jobs: submitting to Slurm from a login node, whose GPUs (often none) say nothing about
    the compute nodes: findings about this machine's GPUs do not fail the submission; each job checks its
    node before its stage starts."""
    doc = check(name, prefix)
    failing = [f for f in doc.findings if f.ok is False]
    if not doc.can_run and gpus_checked_by_jobs and failing and all(map(_about_this_machines_gpus, failing)):
        return {
            "name": name,
            "lock_sha256": doc.facts.get("lock_sha256"),
            "check": f"deferred to each job's compute node (on the submitting machine: {doc.verdict})",
            "deferred": True,
            "gpus": doc.facts.get("gpus"),
            "features": doc.facts.get("features"),
        }
    if not doc.can_run and gpus_checked_by_jobs and failing:  # lead with what the jobs' nodes cannot fix
        first = next(f for f in failing if not _about_this_machines_gpus(f))
        raise EnvError(
            f"environment {name}: CANNOT RUN: {first.detail}",
            details=[f.detail for f in failing if f is not first and not _about_this_machines_gpus(f)],
            hint=(first.fix or doc.fix or "") + " (or skip this check: --no-env-check)",
        )
    if not doc.can_run:
        raise EnvError(
            f"environment {name}: {doc.verdict}",
            details=[f.detail for f in doc.findings if f.ok is False][1:],
            hint=(doc.fix or "") + " (or skip this check: --no-env-check)",
        )
    return {
        "name": name,
        "lock_sha256": doc.facts.get("lock_sha256"),
        "check": doc.verdict,
        "gpus": doc.facts.get("gpus"),
        "features": doc.facts.get("features"),
    }
