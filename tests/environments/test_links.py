"""The link closure (pyelftools) and the pip-only CUDA environment's loader hook, on real ELF files: the cpu
wheel's libmxnet.so, small libraries built here with chosen DT_NEEDED entries, and (slow, with the cu117
environment created: MFNPATCH_CU117_PREFIX) the real one."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from mfnpatch.environments.create import HOOK, install_loader_hook, wheel_lib_dirs
from mfnpatch.environments.doctor import Facts, diagnose
from mfnpatch.environments.elf import DEFAULT_DIRS, link_closure, read_elf
from mfnpatch.environments.gpu import GpuReport
from mfnpatch.environments.spec import EnvError, load_env

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc) to build test libraries")
needs_mxnet = pytest.mark.skipif(importlib.util.find_spec("mxnet") is None, reason="MXNet is not installed here")
CU117 = os.environ.get("MFNPATCH_CU117_PREFIX")
needs_cu117 = pytest.mark.skipif(
    not (CU117 and Path(CU117, "bin", "python").exists()),
    reason="set MFNPATCH_CU117_PREFIX to an environment made by `mfnpatch env create cu117 --prefix DIR` (3.8 GB)",
)
HERMETIC = {
    "system": {},
    "default_dirs": (),
    "ld_library_path": (),
}  # nothing of this machine's libraries in the fixture closures


def build(out: Path, soname: str | None, needed: list[Path] = (), rpath: str | None = None, body: str = "") -> Path:
    """A real shared library: its soname, DT_NEEDED on each of ``needed`` (libraries built before), an rpath."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".c")
    src.write_text(body or f"int f_{abs(hash(str(out)))}(void) {{ return 1; }}\n")
    cmd = ["cc", "-shared", "-fPIC", "-o", str(out), str(src), "-Wl,--no-as-needed"]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    for lib in needed:
        cmd += [f"-L{lib.parent}", f"-l:{lib.name}"]
    if rpath:
        cmd.append(f"-Wl,-rpath,{rpath},--disable-new-dtags")
    subprocess.run(cmd, check=True, capture_output=True)
    src.unlink()
    return out


@pytest.fixture
def site(tmp_path):
    """A site-packages laid out like the cu117 environment's: mxnet/libmxnet.so needing libraries from
    nvidia/*/lib wheels (one of which needs another), one beside it through $ORIGIN, and the driver's."""
    sp = tmp_path / "site-packages"
    stubs = tmp_path / "stubs"  # link-time stand-ins, never in the closure's search path
    baz = build(sp / "nvidia/baz/lib/libbaz.so.3", "libbaz.so.3")
    bar = build(sp / "nvidia/bar/lib/libbar.so.2", "libbar.so.2", [baz])
    foo = build(sp / "nvidia/foo/lib/libfoo.so.1", "libfoo.so.1")
    cudnn = build(stubs / "libcudnn.so.8", "libcudnn.so.8")
    cuda = build(stubs / "libcuda.so.1", "libcuda.so.1")
    build(sp / "nvidia/cudnn/lib/libcudnn.so.8", "libcudnn.so.8")
    blas = build(sp / "mxnet/libblas.so.0", "libblas.so.0")
    build(sp / "mxnet/libmxnet.so", "libmxnet.so", [foo, bar, cudnn, cuda, blas], rpath="$ORIGIN")
    return sp


@needs_cc
def test_closure_of_built_libraries_follows_needed_and_rpath(site):
    c = link_closure(site / "mxnet/libmxnet.so", wheel_lib_dirs(site), **HERMETIC)
    where = {x.soname: (x.where, x.needed_by) for x in c.links}
    assert where["libfoo.so.1"] == ("environment", "libmxnet.so")
    assert where["libbar.so.2"] == ("environment", "libmxnet.so")
    assert where["libbaz.so.3"] == ("environment", "libbar.so.2")  # followed through what libbar needs
    assert where["libblas.so.0"] == ("beside", "libmxnet.so")  # DT_RPATH $ORIGIN
    assert where["libcuda.so.1"][0] == "missing" and not c.found("driver")  # the driver: never from the env
    order = [Path(p).name for p in c.load_order]
    assert order.index("libbaz.so.3") < order.index("libbar.so.2")  # each after what it needs
    assert set(order) == {"libfoo.so.1", "libbar.so.2", "libbaz.so.3", "libcudnn.so.8"}
    info = read_elf(site / "mxnet/libmxnet.so")
    assert info.soname == "libmxnet.so" and info.rpath == ("$ORIGIN",) and info.runpath == ()
    assert info.needed[:2] == ("libfoo.so.1", "libbar.so.2")


@needs_cc
def test_the_driver_is_looked_for_on_the_machine(site, tmp_path):
    driver_dir = tmp_path / "driver"
    build(driver_dir / "libcuda.so.1", "libcuda.so.1")
    c = link_closure(
        site / "mxnet/libmxnet.so", wheel_lib_dirs(site), system={}, default_dirs=[str(driver_dir)], ld_library_path=()
    )
    (cuda,) = [x for x in c.links if x.soname == "libcuda.so.1"]
    assert cuda.where == "driver" and cuda.path == str((driver_dir / "libcuda.so.1").resolve())
    # a libcuda.so.1 inside the environment is not the driver's and is not taken
    build(site / "nvidia/foo/lib/libcuda.so.1", "libcuda.so.1")
    c = link_closure(site / "mxnet/libmxnet.so", wheel_lib_dirs(site), **HERMETIC)
    assert [x.where for x in c.links if x.soname == "libcuda.so.1"] == ["missing"]


@needs_cc
def test_a_removed_wheel_and_a_wrong_cudnn_major_are_named(site):
    shutil.rmtree(site / "nvidia/bar")  # a runtime wheel removed from the environment
    (site / "nvidia/cudnn/lib/libcudnn.so.8").unlink()
    build(site / "nvidia/cudnn/lib/libcudnn.so.9", "libcudnn.so.9")  # cuDNN 9 where 8 is needed
    providers = {"libbar.so.2": "nvidia-bar-cu11", "libcudnn.so.8": "nvidia-cudnn-cu11"}
    c = link_closure(site / "mxnet/libmxnet.so", wheel_lib_dirs(site), providers=providers, **HERMETIC)
    missing = {x.soname: x for x in c.missing if x.soname != "libc.so.6"}  # HERMETIC: not even libc is searched
    assert set(missing) == {"libbar.so.2", "libcudnn.so.8", "libcuda.so.1"}
    assert missing["libbar.so.2"].provider == "nvidia-bar-cu11"
    assert missing["libcudnn.so.8"].note == "found libcudnn.so.9 instead (another version: its soname differs)"
    assert "libbaz.so.3" not in {x.soname for x in c.links}  # only what is reachable


@needs_cc
def test_a_library_of_another_machine_is_skipped_as_the_loader_skips_it(site):
    lib = site / "nvidia/foo/lib/libfoo.so.1"
    data = bytearray(lib.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine: EM_AARCH64, as an arm64 wheel's library would say
    lib.write_bytes(bytes(data))
    assert read_elf(lib).machine == "EM_AARCH64"
    c = link_closure(site / "mxnet/libmxnet.so", wheel_lib_dirs(site), **HERMETIC)
    assert [x.where for x in c.links if x.soname == "libfoo.so.1"] == ["missing"]


def test_not_an_elf_file_is_named(tmp_path):
    junk = tmp_path / "libjunk.so"
    junk.write_text("not a library")
    with pytest.raises(EnvError, match="libjunk.so: not an ELF file"):
        read_elf(junk)


@needs_mxnet
def test_the_cpu_wheels_closure_is_complete_and_has_no_cuda():
    spec = importlib.util.find_spec("mxnet")
    lib = Path(next(iter(spec.submodule_search_locations))) / "libmxnet.so"
    c = link_closure(lib)
    assert not c.missing, [(x.soname, x.needed_by) for x in c.missing]
    names = {x.soname for x in c.links}
    assert "libopenblas.so.0" in names and "libc.so.6" in names
    assert not any(n.startswith(("libcu", "libnccl", "libnvrtc")) for n in names)
    assert [x.where for x in c.links if x.soname == "libopenblas.so.0"] == ["beside"]


# --------------------------------------------------------------------------------------------
# The loader hook: a real venv, a real `import mxnet` of a package whose library needs the wheels'


def _fake_env(site_packages: Path) -> None:
    """Make the fixture's libmxnet.so loadable by a package named mxnet (the hook's trigger)."""
    (site_packages / "mxnet/__init__.py").write_text(
        "import ctypes, os\n"
        "lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), 'libmxnet.so'))\n"
        "__version__ = 'fixture'\n"
    )


@needs_cc
def test_the_loader_hook_makes_the_wheels_libraries_loadable(tmp_path, site):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    for d in ("nvidia", "mxnet"):
        shutil.copytree(site / d, purelib / d)
    # the driver stand-in is found on the machine (as the real driver's would be), not in the environment
    driver = build(tmp_path / "driver/libcuda.so.1", "libcuda.so.1")
    _fake_env(purelib)
    env = load_env("cu117")
    env.spec.cuda_libraries.wheels.update({"libfoo.so.1": "nvidia-foo", "libbar.so.2": "nvidia-bar"})
    order = install_loader_hook(env, purelib)
    assert [Path(p).name for p in order].index("libbaz.so.3") < [Path(p).name for p in order].index("libbar.so.2")
    assert json.loads((purelib / f"{HOOK}.json").read_text())["load_order"] == order
    run_env = {**os.environ, "LD_LIBRARY_PATH": str(driver.parent)}
    code = "import mxnet, sys; print(mxnet.__version__, sys.modules['_mfnpatch_cuda_libs']._done)"
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=run_env)
    assert r.returncode == 0 and r.stdout.split() == ["fixture", "[[]]"], r.stderr
    # without the hook the loader does not look in site-packages/nvidia: the import fails on a wheel's library
    r = subprocess.run([str(py), "-c", "import mxnet"], capture_output=True, text=True,
                       env={**run_env, "MFNPATCH_CUDA_LIBS": "off"})  # fmt: skip
    assert r.returncode != 0 and "libfoo.so.1: cannot open shared object file" in r.stderr
    # a process that never imports mxnet loads nothing
    r = subprocess.run([str(py), "-c", "import sys; print(sys.modules['_mfnpatch_cuda_libs']._done)"],
                       capture_output=True, text=True, env=run_env)  # fmt: skip
    assert r.stdout.strip() == "[]"


@needs_cc
def test_the_hook_refuses_an_environment_missing_a_library(tmp_path, site):
    shutil.rmtree(site / "nvidia/bar")
    env = load_env("cu117")
    env.spec.cuda_libraries.wheels.update({"libbar.so.2": "nvidia-bar-cu11"})
    with pytest.raises(EnvError, match=r"1 library it needs not in the environment: libbar.so.2 \(nvidia-bar-cu11\)"):
        install_loader_hook(env, site)
    assert not list(site.glob(f"{HOOK}*"))  # nothing written


@needs_cc
def test_the_doctor_names_the_missing_wheel_and_the_driver(site):
    env = load_env("cu117")
    shutil.rmtree(site / "nvidia/bar")
    env.spec.cuda_libraries.wheels.update({"libbar.so.2": "nvidia-bar-cu11"})
    closure = link_closure(site / "mxnet/libmxnet.so", wheel_lib_dirs(site), providers=env.spec.cuda_libraries.wheels,
                           **HERMETIC)  # fmt: skip
    info = {"python": "3.11.7", "prefix": str(site.parent), "packages": {}, "mxnet_error": "OSError: libbar.so.2",
            "loader_hook": {"failed": []}}  # fmt: skip
    facts = Facts("cu117", "python", info, {}, None, None, None, GpuReport(False, [], "nvidia-smi not found"),
                  closure, [str(d) for d in wheel_lib_dirs(site)])  # fmt: skip
    doc = diagnose(env, facts)
    links = [f for f in doc.findings if f.what == "links" and "libc.so.6" not in f.detail]  # HERMETIC: no libc
    assert [f.ok for f in links] == [False]
    assert "libbar.so.2 (needed by libmxnet.so) is not found; the nvidia-bar-cu11 wheel provides it" in links[0].detail
    assert "mfnpatch env create cu117" in links[0].fix
    (cuda,) = [f for f in doc.findings if f.what == "libcuda"]
    assert not cuda.ok and "NVIDIA driver >= 450.80.02" in cuda.fix
    assert not doc.can_run and doc.verdict.startswith("CANNOT RUN: the NVIDIA driver is not installed on this machine")


@needs_cc
def test_with_the_driver_and_a_listed_gpu_the_doctor_says_the_recipes_can_run(site, tmp_path):
    """The driver's libcuda.so.1 found through LD_LIBRARY_PATH, as ld.so finds it, and an A100: OK."""
    from mfnpatch.environments.gpu import Gpu

    driver = build(tmp_path / "driver/libcuda.so.1", "libcuda.so.1")
    env = load_env("cu117")
    env.spec.cuda_libraries.wheels.update({"libfoo.so.1": "nvidia-foo", "libbar.so.2": "nvidia-bar"})
    path = [str(driver.parent), *DEFAULT_DIRS]  # the driver first, then where libc is
    closure = link_closure(site / "mxnet/libmxnet.so", wheel_lib_dirs(site), system={}, default_dirs=(),
                           ld_library_path=path)  # fmt: skip
    assert [x.where for x in closure.links if x.soname == "libcuda.so.1"] == ["driver"]
    info = {"python": "3.11.7", "prefix": str(site.parent), "packages": {}, "mxnet": "1.9.1",
            "features": {"CUDA": True, "CUDNN": True, "NCCL": True}, "loader_hook": {"failed": []}}  # fmt: skip
    gpu = GpuReport(True, [Gpu(0, "NVIDIA A100-SXM4-40GB", (8, 0), "470.57.02")])
    doc = diagnose(env, Facts("cu117", "python", info, {}, None, None, None, gpu, closure,
                              [str(d) for d in wheel_lib_dirs(site)]))  # fmt: skip
    missing = [f.detail for f in doc.findings if f.ok is False]
    assert not missing and doc.can_run, missing
    assert doc.verdict == "OK: the cu117 environment can run the recipes here, on 1 GPU(s)"
    assert any(f.what == "libcuda" and f.ok and str(driver.resolve()) in f.detail for f in doc.findings)


# --------------------------------------------------------------------------------------------
# The real environment (slow: created with `mfnpatch env create cu117`, 3.8 GB)


@pytest.mark.slow
@needs_cu117
def test_the_real_cu117_environment_is_complete_but_for_the_driver(cli, tmp_path):
    r = cli("env", "check", "--prefix", CU117, "--nvidia-smi", str(tmp_path / "no-nvidia-smi"), "--json")
    doc = json.loads(r.out)
    by = {}
    for f in doc["findings"]:
        by.setdefault(f["what"], []).append(f)
    assert by["lock"][0]["ok"] and by["links"][0]["ok"], by
    assert "11 from the environment's NVIDIA wheels" in by["links"][0]["detail"]
    assert not by["libcuda"][0]["ok"] and r.code == 1
    assert doc["verdict"].startswith("CANNOT RUN: the NVIDIA driver is not installed on this machine")


@pytest.mark.slow
@needs_cu117
@needs_cc
def test_the_real_cu117_libraries_all_load_but_the_drivers(tmp_path):
    """With a stand-in libcuda.so.1 (no symbols), `import mxnet` gets past every NVIDIA wheel's library and stops
    only at the driver's missing symbols; without the hook it stops at the first wheel's library."""
    stub = build(tmp_path / "libcuda.so.1", "libcuda.so.1")
    py = str(Path(CU117) / "bin" / "python")
    env = {**os.environ, "LD_LIBRARY_PATH": str(stub.parent)}
    r = subprocess.run([py, "-c", "import mxnet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "undefined symbol: cu" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([py, "-c", "import mxnet"], capture_output=True, text=True, timeout=300,
                       env={**env, "MFNPATCH_CUDA_LIBS": "off"})  # fmt: skip
    assert r.returncode != 0 and "libcudnn.so.8: cannot open shared object file" in r.stderr, r.stderr[-2000:]


def test_python_of_this_process_is_not_touched_by_the_hook_module():
    import mfnpatch.environments.loader_hook as hook

    assert hook.MODULE == HOOK and not any(type(f).__name__ == "_BeforeMXNet" for f in sys.meta_path)
