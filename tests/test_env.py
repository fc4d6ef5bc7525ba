"""Environments: manifests and locks, lock/create for real, the doctor on recorded nvidia-smi output and real
ELF files."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
import tomllib

from mfnpatch.environments.create import create_env
from mfnpatch.environments.doctor import check
from mfnpatch.environments.gpu import covered, fatbin_archs, parse_query_csv, query_gpus
from mfnpatch.environments.lock import lock_env
from mfnpatch.environments.spec import EnvError, list_envs, load_env, normalize, parse_lock

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
H200 = DATA / "nvidia-smi-h200"


def pypi_reachable() -> bool:
    try:
        urllib.request.urlopen("https://pypi.org/simple/easydict/", timeout=5)
        return True
    except OSError:
        return False


needs_pypi = pytest.mark.skipif(not pypi_reachable(), reason="PyPI is not reachable: the resolver needs it")
needs_mxnet = pytest.mark.skipif(importlib.util.find_spec("mxnet") is None, reason="MXNet is not installed here")


# --------------------------------------------------------------------------------------------
# The bundled environments


def test_bundled_environments():
    envs = {e.name: e for e in list_envs()}
    assert set(envs) == {"cpu", "cu101", "cu112"}
    cpu, cu101, cu112 = envs["cpu"], envs["cu101"], envs["cu112"]
    assert cpu.spec.python == "3.11" and cpu.spec.mxnet.cuda is None
    assert cu101.spec.mxnet.cuda == "10.1" and cu101.spec.mxnet.driver_min == "418.39"
    assert cu101.spec.mxnet.gpu_archs == [30, 50, 60, 70, 75] and cu101.spec.mxnet.ptx == []
    assert cu112.spec.mxnet.gpu_archs == [50, 60, 70, 80, 86]
    for e in (cu101, cu112):
        vp = (e.dir / "virtual-packages.yml").read_text()
        assert f'__cuda: "{e.spec.mxnet.cuda}"' in vp
        assert f"cudatoolkit={e.spec.mxnet.cuda}" in (e.dir / "environment.yml").read_text()
        assert "why" in e.spec.model_fields_set and len(e.spec.why) > 200


def test_locks_pin_what_the_facts_say():
    lock = parse_lock(load_env("cpu").dir / "requirements.lock")
    pins = {k: v["version"] for k, v in lock.items()}
    assert pins["mxnet"] == "1.9.1" and pins["numpy"] == "1.23.5" and pins["scipy"] == "1.11.4"
    assert pins["scikit-learn"] == "1.3.2" and pins["scikit-image"] == "0.22.0"
    assert pins["opencv-python-headless"] == "4.11.0.86" and pins["easydict"] == "1.14"
    assert tuple(int(x) for x in pins["onnx"].split(".")[:2]) < (1, 16)
    assert {"onnxruntime", "ncnn"} <= set(pins) and "torch" not in pins
    assert all(v["hashes"] for v in lock.values())
    nodeps = parse_lock(load_env("cpu").dir / "nodeps.lock")
    assert set(nodeps) == {"pnnx"}
    for name, pkg in (("cu101", "mxnet-cu101"), ("cu112", "mxnet-cu112")):
        gpu = parse_lock(load_env(name).dir / "pip.lock")
        assert gpu[pkg]["version"] == "1.9.1" and gpu["numpy"]["version"] == "1.23.5" and "mxnet" not in gpu


def test_the_cpu_lock_covers_mfnpatchs_own_dependencies():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d for d in deps["dependencies"] + deps["optional-dependencies"]["test"]]
    lock = parse_lock(load_env("cpu").dir / "requirements.lock")
    import re

    for d in names:
        assert normalize(re.split(r"[<>=!~ ;\[]", d)[0]) in lock, d


def test_unknown_env_and_broken_locks(tmp_path):
    with pytest.raises(EnvError, match="unknown environment 'cu999'") as e:
        load_env("cu999")
    assert "cpu, cu101, cu112" in e.value.hint
    with pytest.raises(EnvError, match="no lock file"):
        parse_lock(tmp_path / "requirements.lock")
    bad = tmp_path / "x.lock"
    bad.write_text("numpy==1.23.5 \\\n    --hash=sha256:" + "a" * 64 + "\neasydict==1.14\n")
    with pytest.raises(EnvError, match=r"x.lock:3: easydict==1.14 has no --hash"):
        parse_lock(bad)


# --------------------------------------------------------------------------------------------
# Kernels in ELF files


def _container(entries: list[tuple[int, int]]) -> bytes:
    """A fatbin container: (kind, sm) entries, kind 1 = PTX, 2 = SASS, each with a small payload."""
    body = b""
    for kind, sm in entries:
        payload = (b"\x7fELF" if kind == 2 else b"//PTX\n") + bytes(11)
        padded = payload + bytes(-len(payload) % 8)
        header = struct.pack("<HHIQIIII", kind, 0x0101, 64, len(padded), 0, len(payload), 0, sm)
        header += bytes(64 - len(header))
        body += header + padded
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def _elf_with_fatbin(tmp_path: Path, blob: bytes | None) -> Path:
    src = tmp_path / "k.c"
    lines = ["int answer(void) { return 42; }"]
    if blob is not None:
        data = ", ".join(str(b) for b in blob)
        lines.insert(
            0, f'__attribute__((section(".nv_fatbin"), used, aligned(8))) const unsigned char fatbin[] = {{{data}}};'
        )
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / ("libk.so" if blob is not None else "libplain.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def test_fatbin_in_a_real_elf_built_here(tmp_path):
    blob = _container([(2, 80), (1, 80), (2, 86)]) + bytes(8) + _container([(2, 86), (2, 70)])
    lib = _elf_with_fatbin(tmp_path, blob)
    info = fatbin_archs(lib)
    assert info.has_section and info.containers == 2
    assert info.sass == {70: 1, 80: 1, 86: 2} and info.ptx == {80: 1}
    assert "SASS sm_70, sm_80, sm_86; compute_80" in info.describe()
    plain = fatbin_archs(_elf_with_fatbin(tmp_path, None))
    assert not plain.has_section and "a CPU build" in plain.describe()
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an elf at all")
    with pytest.raises(EnvError, match="junk.so: not an ELF file"):
        fatbin_archs(junk)


@needs_mxnet
def test_the_cpu_wheels_libmxnet_has_no_gpu_code():
    spec = importlib.util.find_spec("mxnet")
    lib = Path(next(iter(spec.submodule_search_locations))) / "libmxnet.so"
    info = fatbin_archs(lib)
    assert not info.has_section and info.containers == 0


@pytest.mark.parametrize("name,size", [("cu101", "360 MB"), ("cu112", "500 MB")])
def test_the_real_gpu_wheels_match_their_manifests(name, size, tmp_path):
    """The kernel lists in envs/NAME/env.yaml are what the real wheel's libmxnet.so holds."""
    var = f"MFNPATCH_{name.upper()}_WHEEL"
    if not os.environ.get(var):
        pytest.skip(f"set {var} to the mxnet-{name} 1.9.1 wheel ({size}) to read its real libmxnet.so")
    with zipfile.ZipFile(os.environ[var]) as z:
        z.extract("mxnet/libmxnet.so", tmp_path)
    info = fatbin_archs(tmp_path / "mxnet/libmxnet.so")
    spec = load_env(name).spec
    assert info.containers == 198 and info.ptx == {} and spec.mxnet.ptx == []
    assert sorted(info.sass) == spec.mxnet.gpu_archs and set(info.sass.values()) == {198}


@pytest.mark.parametrize(
    "cc,sass,ptx,expect",
    [
        ((6, 1), [30, 50, 60, 70, 75], [], "SASS sm_60"),  # P40 on cu101
        ((7, 5), [30, 50, 60, 70, 75], [], "SASS sm_75"),
        ((8, 0), [30, 50, 60, 70, 75], [], None),  # A100 on cu101
        ((8, 6), [50, 60, 70, 80, 86], [], "SASS sm_86"),
        ((8, 9), [50, 60, 70, 80, 86], [], "SASS sm_86"),  # sm_86 cubin runs on sm_89 (same major)
        ((9, 0), [50, 60, 70, 80, 86], [], None),  # H100/H200: no official MXNet build
        ((9, 0), [30, 50, 60, 70, 75], [75], "PTX compute_75 (compiled by the driver at first use)"),
    ],
)
def test_kernel_coverage_rule(cc, sass, ptx, expect):
    assert covered(cc, sass, ptx) == expect


# --------------------------------------------------------------------------------------------
# nvidia-smi and the doctor


def fake_smi(tmp_path: Path, query: str | None = None, *, rc: int = 0, old_driver: bool = False) -> str:
    exe = tmp_path / "nvidia-smi"
    script = "#!/bin/sh\n"
    if rc:
        script += (
            "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
            'Make sure that the latest NVIDIA driver is installed and running."\n'
            f"exit {rc}\n"
        )
    elif old_driver:
        script += (
            'case "$*" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2;; '
            "esac\n"
            f"cat <<'EOF'\n{query}\nEOF\n"
        )
    else:
        script += f"cat <<'EOF'\n{query}\nEOF\n"
    exe.write_text(script)
    exe.chmod(0o755)
    return str(exe)


def test_recorded_h200_query_parses(tmp_path):
    gpus = parse_query_csv((H200 / "nvidia-smi-query.csv").read_text())
    assert [(g.index, g.name, g.cc, g.driver) for g in gpus] == [(0, "NVIDIA H200", (9, 0), "580.159.04")]
    rep = query_gpus(fake_smi(tmp_path, (H200 / "nvidia-smi-query.csv").read_text()))
    assert rep.found and rep.gpus[0].cc == (9, 0)


def test_nvidia_smi_absent_failing_and_old(tmp_path, monkeypatch):
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rep = query_gpus()
    assert not rep.found and rep.problem == "nvidia-smi not found: no NVIDIA driver on this machine"
    monkeypatch.setenv("PATH", path)
    rep = query_gpus(fake_smi(tmp_path, rc=9))
    assert not rep.found and rep.problem.startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed")
    old = fake_smi(tmp_path, "index, name, driver_version\n0, Tesla P40, 410.48", old_driver=True)
    rep = query_gpus(old)
    assert rep.found and (rep.gpus[0].name, rep.gpus[0].cc, rep.gpus[0].driver) == ("Tesla P40", (6, 1), "410.48")


@pytest.mark.slow
def test_doctor_h200_with_cu101(tmp_path, gpu_envs, cli):
    smi = fake_smi(tmp_path, (H200 / "nvidia-smi-query.csv").read_text())
    doc = check("gpu101", None, smi)
    assert not doc.can_run
    assert doc.verdict.startswith("CANNOT RUN: GPU 0 NVIDIA H200 (sm_90): no kernels for it in mxnet-cu101 1.9.1")
    assert "no official MXNet build has kernels for sm_90" in doc.fix and "--profile smoke" in doc.fix
    assert any(f.what == "driver" and f.ok for f in doc.findings)  # 580 >= 418.39
    r = cli("env", "check", "gpu101", "--nvidia-smi", smi)
    assert r.code == 1 and "CANNOT RUN" in r.out and "fix:" in r.out
    d = cli("env", "check", "gpu101", "--nvidia-smi", smi, "--json").json()
    assert d["can_run"] is False and d["facts"]["gpus"][0]["cc"] == [9, 0]


@pytest.mark.slow
def test_doctor_other_gpus(tmp_path, gpu_envs):
    a100 = fake_smi(tmp_path, "index, name, compute_cap, driver_version\n0, NVIDIA A100-SXM4-40GB, 8.0, 470.57.02")
    doc = check("gpu101", None, a100)
    assert not doc.can_run and doc.fix == "use the cu112 environment (mxnet-cu112 1.9.1 has sm_80 and sm_86 kernels)"
    p40 = fake_smi(tmp_path, "index, name, driver_version\n0, Tesla P40, 410.48", old_driver=True)
    doc = check("gpu101", None, p40)
    gpu = next(f for f in doc.findings if f.what == "gpu")
    assert gpu.ok and "Tesla P40 (sm_61): kernels from SASS sm_60" in gpu.detail
    assert doc.verdict.startswith("CANNOT RUN: driver 410.48 (CUDA 10.1 needs >= 418.39)")
    failing = fake_smi(tmp_path, rc=9)
    doc = check("gpu101", None, failing)
    assert doc.verdict.startswith("CANNOT RUN: nvidia-smi failed (exit 9)") and "cpu environment" in doc.fix


@needs_mxnet
def test_doctor_cpu_environment_with_a_gpu_present(tmp_path, gpu_envs):
    smi = fake_smi(tmp_path, (H200 / "nvidia-smi-query.csv").read_text())
    doc = check("cpuish", None, smi)
    assert doc.can_run, doc.verdict
    assert doc.verdict == "OK: the cpuish environment can run the recipes here, on the CPU"
    assert any("does not use it" in f.detail for f in doc.findings)


def test_recipe_run_refuses_an_environment_that_cannot_run(runfx, cli, tmp_path, monkeypatch, gpu_envs):
    runfx.recipe.write_text(runfx.recipe.read_text().replace("environment: cpu", "environment: gpu101"))
    monkeypatch.setenv("MFNPATCH_NVIDIA_SMI", fake_smi(tmp_path, (H200 / "nvidia-smi-query.csv").read_text()))
    rd = runfx.run_dir()
    r = cli("recipe", "run", runfx.recipe, "--tree", runfx.tree, "--run-dir", rd)
    assert r.code == 1
    assert "environment gpu101: CANNOT RUN: GPU 0 NVIDIA H200 (sm_90)" in r.err and "--no-env-check" in r.err
    assert not (rd / "stages").exists()


# --------------------------------------------------------------------------------------------
# Creating and locking for real


def _wheel(tmp_path: Path, name: str = "mfnfixture", version: str = "1.0") -> Path:
    src = tmp_path / f"src-{name}"
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text("VALUE = 1\n")
    (src / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
    )
    return next(out.glob(f"{name}-{version}-*.whl"))


def _local_env(tmp_path: Path, monkeypatch, digest: str | None = None) -> tuple[str, Path]:
    import hashlib

    whl = _wheel(tmp_path)
    root = tmp_path / "envs"
    d = root / "local"
    d.mkdir(parents=True)
    h = digest or hashlib.sha256(whl.read_bytes()).hexdigest()
    (d / "pip.in").write_text("mfnfixture==1.0\n")
    (d / "pip.lock").write_text(f"mfnfixture==1.0 \\\n    --hash=sha256:{h}\n")
    (d / "env.yaml").write_text(json.dumps({
        "schema": 1, "name": "local", "kind": "pip", "description": "a tiny local environment", "why": "tests",
        "python": f"{sys.version_info.major}.{sys.version_info.minor}", "platform": "x86_64-manylinux_2_28",
        "pip": {"requirements": "pip.in", "lock": "pip.lock"}, "mxnet": {"package": "mxnet", "version": "1.9.1"},
        "patches": "mfn",
    }))  # fmt: skip
    monkeypatch.setenv("MFNPATCH_ENVS", str(root))
    return "local", whl.parent


def test_create_from_a_lock_offline(tmp_path, monkeypatch):
    name, wheels = _local_env(tmp_path, monkeypatch)
    prefix = tmp_path / "env"
    create_env(name, prefix, find_links=wheels, offline=True)
    marker = json.loads((prefix / "mfnpatch-env.json").read_text())
    assert marker["name"] == "local" and not (prefix / ".mfnpatch-incomplete").exists()
    out = subprocess.run(
        [str(prefix / "bin/python"), "-c", "import mfnfixture; print(mfnfixture.VALUE)"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "1"
    doc = check(None, prefix)  # the name comes from the marker
    lock = next(f for f in doc.findings if f.what == "lock")
    assert doc.env == "local" and lock.ok and lock.detail.startswith("1/1 locked packages")
    with pytest.raises(EnvError, match="exists"):
        create_env(name, prefix, find_links=wheels, offline=True)


@pytest.mark.slow
def test_a_wrong_hash_leaves_nothing(tmp_path, monkeypatch):
    name, wheels = _local_env(tmp_path, monkeypatch, digest="0" * 64)
    prefix = tmp_path / "env"
    with pytest.raises(EnvError, match="failed") as e:
        create_env(name, prefix, find_links=wheels, offline=True)
    assert "hash" in (e.value.message + " ".join(e.value.details)).lower()
    assert not prefix.exists()


@pytest.mark.slow
def test_an_interrupted_create_leaves_nothing(tmp_path, monkeypatch):
    name, wheels = _local_env(tmp_path, monkeypatch)
    prefix = tmp_path / "env"

    def stop(line):
        if "mfnfixture" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        create_env(name, prefix, find_links=wheels, offline=True, on_line=stop)
    assert not prefix.exists()
    # a create that was killed outright leaves its sentinel: the next create starts over
    prefix.mkdir()
    (prefix / ".mfnpatch-incomplete").write_text("")
    (prefix / "junk").write_text("")
    create_env(name, prefix, find_links=wheels, offline=True)
    assert not (prefix / "junk").exists()
    with pytest.raises(EnvError, match="did not finish"):
        (prefix / ".mfnpatch-incomplete").write_text("")
        check(None, prefix)


def test_conda_create_without_a_conda_lock_says_why():
    with pytest.raises(EnvError, match="has no conda-lock.yml: its conda part was never locked") as e:
        create_env("cu101", Path("/tmp/never"))
    assert "conda-lock install" in e.value.hint


@pytest.mark.slow
@needs_pypi
def test_lock_for_real_and_keep_the_old_lock_when_resolution_fails(tmp_path, monkeypatch):
    root = tmp_path / "envs"
    shutil.copytree(ROOT / "envs" / "cu101", root / "cu101")
    monkeypatch.setenv("MFNPATCH_ENVS", str(root))
    d = root / "cu101"
    # the conda part cannot be locked here (a channel that does not exist): said, and the pip part still is
    env_yml = (d / "environment.yml").read_text().replace("  - conda-forge", "  - file:///nonexistent/channel")
    (d / "environment.yml").write_text(env_yml)
    (d / "pip.lock").unlink()
    rep = lock_env("cu101")
    assert rep.locked == ["pip.lock: 22 packages for Python 3.11 on x86_64-manylinux_2_17"]
    assert len(rep.not_locked) == 1 and "conda-lock.yml" in rep.not_locked[0]
    assert "no conda lock exists yet" in rep.not_locked[0]
    lock = parse_lock(d / "pip.lock")
    assert lock["mxnet-cu101"]["version"] == "1.9.1" and all(v["hashes"] for v in lock.values())
    before = (d / "pip.lock").read_bytes()
    (d / "pip.in").write_text("mxnet-cu101==0.0.1\n")
    rep = lock_env("cu101")
    assert rep.locked == [] and "kept the previous lock" in rep.not_locked[0]
    assert (d / "pip.lock").read_bytes() == before


@pytest.mark.slow
@needs_pypi
def test_create_and_check_the_cpu_environment_for_real(tmp_path, cli):
    """The real cpu lock (about 300 MB of wheels; pip's cache makes a second time quick)."""
    prefix = tmp_path / "cpu"
    r = cli("env", "create", "cpu", "--prefix", prefix)
    assert r.code == 0, r.err
    assert "OK: the cpu environment can run the recipes here, on the CPU" in r.out
    d = cli("env", "check", "--prefix", prefix, "--json").json()
    assert d["env"] == "cpu" and d["can_run"] and d["facts"]["mxnet"] == "1.9.1"
    assert d["facts"]["features"]["MKLDNN"] is True and d["facts"]["features"]["CUDA"] is False


@pytest.mark.slow
@needs_mxnet
def test_submitting_to_slurm_defers_only_this_machines_gpu_findings(tmp_path, gpu_envs, monkeypatch):
    """A login node without GPUs can submit a GPU recipe: its GPU findings are left to the jobs' nodes.
    Anything else wrong with the environment (a missing package) still stops the submission."""
    from mfnpatch.environments.doctor import recipe_env_check
    from mfnpatch.environments.spec import EnvError

    spec = gpu_envs / "gpu101" / "env.yaml"  # the build installed here, so only the GPU findings fail
    spec.write_text(spec.read_text().replace('"mxnet-cu101"', '"mxnet"'))
    monkeypatch.setenv("MFNPATCH_NVIDIA_SMI", str(tmp_path / "absent" / "nvidia-smi"))
    with pytest.raises(EnvError, match="environment gpu101: CANNOT RUN: nvidia-smi not found"):
        recipe_env_check("gpu101", None)
    got = recipe_env_check("gpu101", None, gpus_checked_by_jobs=True)
    assert got["check"] == (
        "deferred to each job's compute node (on the submitting machine: CANNOT RUN: nvidia-smi not found: "
        "no NVIDIA driver on this machine)"
    )
    lock = gpu_envs / "gpu101" / "pip.lock"
    lock.write_text(lock.read_text() + f"nosuchpackage==1.0 \\\n    --hash=sha256:{'1' * 64}\n")
    with pytest.raises(EnvError, match="missing: nosuchpackage==1.0"):
        recipe_env_check("gpu101", None, gpus_checked_by_jobs=True)
