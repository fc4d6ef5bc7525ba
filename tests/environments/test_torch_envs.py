"""The PyTorch lineage's environments (torch-cpu, torch-cu12): their manifests and locks, the doctor's verdicts
on the recorded H200 nvidia-smi output for every bundled GPU environment, the kernel list read from the real
torch wheel when it is given, and torch-cpu made from its lock for real (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from envkit import fake_smi

from mfnpatch.environments.doctor import Facts, diagnose, kernel_fix
from mfnpatch.environments.elf import read_elf
from mfnpatch.environments.gpu import fatbin_archs, parse_driver_cuda, query_gpus
from mfnpatch.environments.spec import load_env, parse_lock

DATA = Path(__file__).resolve().parents[1] / "data"
H200 = DATA / "nvidia-smi-h200"
TORCH_WHEELS = Path(os.environ.get("MFNPATCH_TORCH_WHEELS", "/opt/wheels"))


def h200(tmp_path: Path) -> str:
    return fake_smi(tmp_path, (H200 / "nvidia-smi-query.csv").read_text(),
                    version=(H200 / "nvidia-smi-version.txt").read_text())  # fmt: skip


def installed_as_locked(name: str, smi: str) -> tuple:
    """The facts of an environment made exactly from its lock (every locked package at its version, the
    framework importing), on the machine nvidia-smi describes: what a user who ran env create there has.
    Its library is not here, so the kernels are the manifest's (which test_the_real_torch_wheel checks)."""
    env = load_env(name)
    locked: dict[str, str] = {}
    for lock, _ in env.locks():
        locked.update({k: v["version"] for k, v in parse_lock(lock).items()})
    info = {"python": "3.11.7", "prefix": "/opt/envs/" + name, "executable": "/opt/envs/bin/python",
            "packages": dict(locked), "mxnet": "1.9.1", "features": {}}  # fmt: skip
    if env.spec.torch:
        info |= {"torch": env.spec.torch.version, "torch_cuda": env.spec.torch.cuda}
    facts = Facts(name, info["executable"], info, locked, env.lock_sha256(), None, None, query_gpus(smi))
    return env, facts


# --------------------------------------------------------------------------------------------
# Manifests and locks


def test_torch_environments_are_locked_with_hashes():
    cpu, cu12 = load_env("torch-cpu"), load_env("torch-cu12")
    assert cpu.spec.lineage == cu12.spec.lineage == "arcface_torch"
    assert cpu.spec.build is cpu.spec.torch and cpu.spec.build.cuda is None
    assert cu12.spec.build.cuda == "12.8" and 90 in cu12.spec.build.gpu_archs and cu12.spec.build.ptx == []
    lc, lg = parse_lock(cpu.path("requirements.lock")), parse_lock(cu12.path("requirements.lock"))
    assert lc["torch"]["version"] == "2.13.0+cpu" and cpu.spec.pip.index == "https://download.pytorch.org/whl/cpu"
    assert lg["torch"]["version"] == "2.10.0" and cu12.spec.pip.index is None  # PyPI's own wheel is the CUDA one
    # the CPU lock has no CUDA wheel; the CUDA 12 lock has every NVIDIA runtime wheel torch 2.10.0 asks for
    assert not [k for k in lc if k.startswith("nvidia-")]
    assert {"nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12", "nvidia-cudnn-cu12", "nvidia-nccl-cu12"} <= set(lg)
    # arcface_torch's .rec/.bin reader: the CPU MXNet wheel (not a CUDA build) with numpy below 1.24
    for lock in (lc, lg):
        assert lock["mxnet"]["version"] == "1.9.1" and lock["numpy"]["version"] == "1.23.5"
        assert not [k for k in lock if k.startswith("mxnet-")] and "torchvision" not in lock


def test_the_local_torch_file_is_the_locked_one():
    """The CPU wheel this machine holds is byte for byte the file the lock pins (what PyTorch's index serves)."""
    wheel = next(TORCH_WHEELS.glob("torch-2.13.0+cpu-cp311-*.whl"), None) if TORCH_WHEELS.is_dir() else None
    if wheel is None:
        pytest.skip(f"no torch-2.13.0+cpu wheel in {TORCH_WHEELS} (set MFNPATCH_TORCH_WHEELS)")
    import hashlib

    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert digest in parse_lock(load_env("torch-cpu").path("requirements.lock"))["torch"]["hashes"]


def test_the_real_torch_cu12_wheel_matches_its_manifest(tmp_path):
    """The kernel list in envs/torch-cu12/env.yaml is what the real wheel's libtorch_cuda.so holds, and every
    CUDA library it needs comes from a wheel of the lock (found through the library's own RPATH)."""
    var = "MFNPATCH_TORCH_CU12_WHEEL"
    if not os.environ.get(var):
        pytest.skip(f"set {var} to the torch 2.10.0 cp311 manylinux_2_28_x86_64 wheel (915 MB) to read it")
    with zipfile.ZipFile(os.environ[var]) as z:
        z.extract("torch/lib/libtorch_cuda.so", tmp_path)
    lib = tmp_path / "torch/lib/libtorch_cuda.so"
    spec = load_env("torch-cu12").spec
    info = fatbin_archs(lib)
    assert info.containers == 456 and info.ptx == {} and spec.build.ptx == []
    assert sorted(info.sass) == spec.build.gpu_archs
    elf = read_elf(lib)
    cuda = {n for n in elf.needed if n.startswith(("libcu", "libnccl", "libcudnn"))}
    assert cuda == {
        "libcudart.so.12",
        "libcublas.so.12",
        "libcublasLt.so.12",
        "libcudnn.so.9",
        "libcufft.so.11",
        "libcufile.so.0",
        "libcurand.so.10",
        "libcusparse.so.12",
        "libcusparseLt.so.0",
        "libnccl.so.2",
    }
    rpath_wheels = {p.split("/")[-2] for p in elf.rpath if "/nvidia/" in p}
    locked = set(parse_lock(load_env("torch-cu12").path("requirements.lock")))
    for w in rpath_wheels - {"cusparselt"}:  # each RPATH folder nvidia/<w>/lib is a locked nvidia-<w>-cu12 wheel
        assert f"nvidia-{w.replace('_', '-')}-cu12" in locked, w


# --------------------------------------------------------------------------------------------
# The doctor on the H200


def test_driver_cuda_version_is_read_from_nvidia_smi():
    assert parse_driver_cuda((H200 / "nvidia-smi-version.txt").read_text()) == "13.0"
    assert parse_driver_cuda((H200 / "nvidia-smi.txt").read_text()) == "13.0"
    assert parse_driver_cuda("NVIDIA-SMI 470.57.02 Driver Version: 470.57.02 CUDA Version: 11.4") == "11.4"
    assert parse_driver_cuda("index, name\n0, NVIDIA H200") is None


def test_doctor_h200_torch_cu12_can_run(tmp_path):
    doc = diagnose(*installed_as_locked("torch-cu12", h200(tmp_path)))
    assert doc.can_run, doc.verdict
    assert doc.verdict == "OK: the torch-cu12 environment can run the recipes here, on 1 GPU(s)"
    gpu = next(f for f in doc.findings if f.what == "gpu")
    assert gpu.ok and gpu.detail.startswith("GPU 0 NVIDIA H200 (sm_90): kernels from SASS sm_90")
    driver = next(f for f in doc.findings if f.what == "driver")
    assert driver.ok and driver.detail.startswith("driver 580.159.04, CUDA 13.0 (torch 2.10.0's CUDA 12.8 needs")
    torch = next(f for f in doc.findings if f.what == "torch")
    assert torch.ok and "built with CUDA 12.8" in torch.detail
    assert doc.facts["driver_cuda"] == "13.0"


@pytest.mark.parametrize("name", ["cu101", "cu112", "cu117"])
def test_doctor_h200_mxnet_environments_have_no_kernels_and_name_torch_cu12(tmp_path, name):
    doc = diagnose(*installed_as_locked(name, h200(tmp_path)))
    assert not doc.can_run
    assert doc.verdict.startswith(f"CANNOT RUN: GPU 0 NVIDIA H200 (sm_90): no kernels for it in mxnet-{name} 1.9.1")
    assert doc.fix.startswith("use the torch-cu12 environment (pip only; torch 2.10.0 has SASS sm_90 kernels "
                              "for sm_90)")  # fmt: skip
    assert "mfnpatch env create torch-cu12 --prefix DIR" in doc.fix and "the arcface_torch lineage" in doc.fix


def test_doctor_torch_cu12_on_a_p40_names_the_mxnet_lineage(tmp_path):
    p40 = fake_smi(tmp_path, "index, name, compute_cap, driver_version\n0, Tesla P40, 6.1, 535.104.05",
                   version="CUDA Version : 12.2")  # fmt: skip
    doc = diagnose(*installed_as_locked("torch-cu12", p40))
    assert doc.verdict.startswith("CANNOT RUN: GPU 0 Tesla P40 (sm_61): no kernels for it in torch 2.10.0")
    assert doc.fix.startswith("use the cu117 environment (pip only; mxnet-cu117 1.9.1 has SASS sm_60 kernels "
                              "for sm_61)")  # fmt: skip
    assert "that is the insightface_mxnet lineage (the pinned MXNet code" in doc.fix
    driver = next(f for f in doc.findings if f.what == "driver")
    assert driver.ok  # 535 with CUDA 12.2 runs a 12.8 runtime (minor-version compatibility, no PTX)


def test_doctor_a_cuda_11_driver_cannot_run_torch_cu12(tmp_path):
    a100 = fake_smi(tmp_path, "index, name, compute_cap, driver_version\n0, NVIDIA A100-SXM4-40GB, 8.0, 470.57.02",
                    version="CUDA Version : 11.4")  # fmt: skip
    doc = diagnose(*installed_as_locked("torch-cu12", a100))
    driver = next(f for f in doc.findings if f.what == "driver")
    assert not driver.ok and doc.verdict.startswith("CANNOT RUN: driver 470.57.02, CUDA 11.4")
    assert doc.fix == "update the NVIDIA driver to 525.60.13 or newer"


def test_kernel_fix_knows_each_gpu_generation():
    cu117 = load_env("cu117")
    assert kernel_fix((8, 6), cu117).startswith("use the cu117 environment")  # its own lineage, pip first
    blackwell = kernel_fix((10, 0), cu117)
    assert blackwell.startswith("use the torch-cu12 environment (pip only; torch 2.10.0 has SASS sm_100")
    assert kernel_fix((12, 0), load_env("torch-cu12")).startswith("use the torch-cu12")
    assert "no build mfnpatch knows has kernels for sm_21" in kernel_fix((2, 1), cu117)  # Fermi


def test_doctor_torch_cpu_here_is_ok_on_the_cpu(tmp_path):
    doc = diagnose(*installed_as_locked("torch-cpu", h200(tmp_path)))
    assert doc.can_run and doc.verdict == "OK: the torch-cpu environment can run the recipes here, on the CPU"
    assert any("runs on the CPU and does not use it" in f.detail for f in doc.findings)


# --------------------------------------------------------------------------------------------
# torch-cpu made from its lock, for real


@pytest.mark.slow
def test_env_create_torch_cpu(tmp_path, cli):
    """env create torch-cpu from its lock (torch from --find-links: the CPU wheel on this machine's disk, the
    rest from the configured index), then the doctor inside it: PyTorch and MXNet import side by side."""
    if not next(TORCH_WHEELS.glob("torch-2.13.0+cpu-*.whl"), None):
        pytest.skip(f"no torch-2.13.0+cpu wheel in {TORCH_WHEELS}; PyTorch's CPU index is not reachable here")
    prefix = tmp_path / "torch-cpu"
    r = cli("env", "create", "torch-cpu", "--prefix", prefix, "--find-links", TORCH_WHEELS)
    assert r.code == 0, r.out + r.err
    assert "OK: the torch-cpu environment can run the recipes here, on the CPU" in r.out
    d = cli("env", "check", "--prefix", prefix, "--json").json()
    assert d["env"] == "torch-cpu" and d["can_run"] and d["facts"]["torch"] == "2.13.0+cpu"
    kinds = {f["what"]: f for f in d["findings"]}
    assert kinds["mxnet"]["ok"] and kinds["torch"]["ok"] and kinds["lock"]["ok"]
    code = ("import numpy, torch, mxnet as mx; x = torch.from_numpy(numpy.arange(6, dtype=numpy.float32)); "
            "print(json.dumps([float(x.sum()), mx.nd.array(x.numpy()).sum().asscalar().item()]))")  # fmt: skip
    out = subprocess.run([str(prefix / "bin/python"), "-c", "import json; " + code], capture_output=True, text=True)
    assert json.loads(out.stdout) == [15.0, 15.0], out.stderr


def test_env_gpus_table_is_the_one_in_the_docs(cli):
    """docs/environments.md's table is what `env gpus --markdown` prints from the manifests, so it stays true."""
    r = cli("env", "gpus", "--markdown")
    assert r.code == 0
    assert r.out in (Path(__file__).resolve().parents[2] / "docs/environments.md").read_text()
    rows = {row["cc"]: row for row in cli("env", "gpus", "--json").json()}
    assert rows["sm_90"]["use"] == {"insightface_mxnet": None, "arcface_torch": "torch-cu12"}
    assert rows["sm_61"]["use"] == {"insightface_mxnet": "cu117", "arcface_torch": None}
    assert "H200" in rows["sm_90"]["gpus"] and rows["sm_120"]["kernels"]["torch-cu12"] == "SASS sm_120"


def test_the_plan_for_an_h100_uses_torch_cu12_and_the_doctor_agrees(tmp_path, cli):
    h100 = fake_smi(tmp_path, "index, name, compute_cap, driver_version, memory.total [MiB]\n"
                    "0, NVIDIA H100 80GB HBM3, 9.0, 550.54.15, 81559 MiB", version="CUDA Version : 12.4")  # fmt: skip
    plan = cli("recipe", "plan", "mbf", "--json").json()
    assert plan["environment"] == "torch-cu12"
    doc = diagnose(*installed_as_locked(plan["environment"], h100))
    assert doc.can_run and doc.verdict == "OK: the torch-cu12 environment can run the recipes here, on 1 GPU(s)"
    seed = diagnose(*installed_as_locked(cli("recipe", "plan", "may16", "--json").json()["environment"], h100))
    assert not seed.can_run and "use the torch-cu12 environment" in seed.fix and "recipe run mbf" in seed.fix
