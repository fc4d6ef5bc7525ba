"""Locked environments as data: ``envs/<name>/env.yaml`` (what it is and why), its pip requirements and their
hash-pinned lock (made by uv), an optional no-deps part (packages whose declared dependencies are not needed,
e.g. pnnx's torch), and for conda environments the conda spec, a conda-lock virtual-packages file and, when
the channels could be reached, ``conda-lock.yml``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import sha256_bytes
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
    index: str | None = Field(
        default=None,
        description="an index besides PyPI that a local-version pin comes from (torch==2.13.0+cpu from PyTorch's "
        "CPU index); env create adds it, unless --find-links or --offline says where the files are",
    )


class CondaPart(Strict):
    environment: str
    virtual_packages: str
    lock: str = "conda-lock.yml"
    platform: str = "linux-64"


class MXNetBuild(Strict):
    """The framework build that holds the GPU kernels, its CUDA and the architectures its library carries."""

    package: str
    version: str
    cuda: str | None = None
    driver_min: str | None = None
    gpu_archs: list[int] = Field(default_factory=list, description="SASS architectures in the library")
    ptx: list[int] = Field(default_factory=list, description="PTX architectures in the library")
    library: str = Field(default="mxnet/libmxnet.so", description="the library with the kernels, in site-packages")
    import_name: str = "mxnet"


class TorchBuild(MXNetBuild):
    library: str = "torch/lib/libtorch_cuda.so"
    import_name: str = "torch"


class CudaLibraries(Strict):
    """Where a pip-only GPU environment's CUDA libraries come from: NVIDIA's runtime wheels, whose
    ``site-packages/nvidia/*/lib`` folders the environment's loader hook preloads before ``import mxnet``."""

    wheels: dict[str, str] = Field(description="soname libmxnet.so needs -> the wheel that provides it")
    driver: list[str] = Field(default_factory=lambda: ["libcuda.so.1"], description="the driver's, from the machine")


class Emulated(Strict):
    """A phone's CPU on this machine: QEMU user-mode emulation (the qemu-user-static Debian package, its static
    binary) running an aarch64 Python from Debian's arm64 packages (a sysroot, no root, no binfmt, no chroot) with
    the aarch64 wheels of the pip lock installed beside it."""

    arch: Literal["aarch64"]
    qemu: str = Field(description="the emulator binary, as the qemu-user-static package installs it")
    debs: str = Field(default="debs.lock", description="the Debian packages, by version and sha256")
    debs_in: str = Field(default="debs.in", description="the package names the lock is made from")
    suites: list[str] = Field(description="the Debian suites the packages come from, newest versions win")
    pip_platforms: list[str] = Field(description="pip's --platform tags for the aarch64 wheels")
    cpus: dict[str, list[str]] = Field(
        description="the CPU classes it emulates (QEMU's -cpu, as deploy's targets "
        "name them) and the features each must expose (auxv hwcap names)"
    )
    same_version_as_host: list[str] = Field(description="packages that must be the version this machine runs")


class EnvSpec(Strict):
    schema_: Literal[1] = Field(alias="schema")
    name: str
    kind: Literal["pip", "conda", "emulated"]
    description: str
    python: str
    platform: str = Field(description="uv's --python-platform for the pip lock")
    pip: LockPart
    no_deps: LockPart | None = None
    conda: CondaPart | None = None
    mxnet: MXNetBuild | None = None
    torch: TorchBuild | None = None
    cuda_libraries: CudaLibraries | None = None
    emulated: Emulated | None = None
    patches: str = ""
    lineage: Literal["insightface_mxnet", "arcface_torch"] = Field(
        default="insightface_mxnet",
        description="which lineage's recipes it runs, by its registry name (mfnpatch/lineages/); the older names "
        "mxnet and torch are read as these",
    )
    gpu_note: str | None = Field(default=None, description="which GPUs it is for, in a few words")
    why: str

    @field_validator("lineage", mode="before")
    @classmethod
    def _lineage_name(cls, v: Any) -> Any:
        from mfnpatch.lineages import ALIASES

        return ALIASES.get(v, v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_build(self) -> EnvSpec:
        if self.kind == "emulated":
            if self.emulated is None:
                raise ValueError("an emulated environment has an emulated: section")
            return self
        if self.mxnet is None and self.torch is None:
            raise ValueError("an environment names its framework build: mxnet: or torch:")
        return self

    @property
    def trains(self) -> bool:
        """Whether it runs a lineage's training code (an emulated target runs deployed models only)."""
        return self.kind != "emulated"

    @property
    def build(self) -> MXNetBuild:
        """The build whose library carries the GPU kernels: PyTorch's when there is one (a torch environment
        may hold the CPU MXNet wheel for its .rec reader), else MXNet's."""
        b = self.torch or self.mxnet
        assert b is not None
        return b


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
        out = [(self.path(self.spec.pip.lock), self.spec.kind == "emulated")]
        if self.spec.no_deps:
            out.append((self.path(self.spec.no_deps.lock), True))
        return out

    def lock_sha256(self) -> str | None:
        parts = []
        locks = [p for p, _ in self.locks()]
        if self.spec.emulated:
            locks.append(self.path(self.spec.emulated.debs))
        for p in locks:
            if not p.is_file():
                return None
            parts.append(p.read_bytes())
        if self.spec.conda and self.path(self.spec.conda.lock).is_file():
            parts.append(self.path(self.spec.conda.lock).read_bytes())
        return sha256_bytes(b"\0".join(parts))


def list_envs(bundled: bool = False) -> list[Env]:
    """The environments (bundled: the ones mfnpatch ships, whatever MFNPATCH_ENVS says)."""
    root = data_dir("envs", bundled=bundled)
    return [load_env(d.name, bundled) for d in sorted(root.iterdir()) if (d / "env.yaml").is_file()]


def load_env(name: str, bundled: bool = False) -> Env:
    root = data_dir("envs", bundled=bundled)
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
