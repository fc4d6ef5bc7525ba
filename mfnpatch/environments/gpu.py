"""What the machine's GPUs are (nvidia-smi) and what GPU code a library has: SASS/PTX architectures read from
``libmxnet.so``'s ``.nv_fatbin`` section."""

from __future__ import annotations

import csv
import io
import mmap
import os
import re
import shutil
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.environments.elf import sections as elf_sections
from mfnpatch.environments.spec import EnvError

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


def fatbin_archs(path: Path) -> FatbinInfo:
    """Read the SASS and PTX architectures of every fatbin container in a library's .nv_fatbin section."""
    path = Path(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise EnvError(f"{path}: empty file")
        sections = elf_sections(path)  # pyelftools; not an ELF file: an error naming the file
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
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
                seen_sass: set[int] = set()
                seen_ptx: set[int] = set()
                at, cend = pos + header_size, min(pos + header_size + fat_size, end)
                while at + 32 <= cend:
                    kind, _, entry_size, payload = struct.unpack_from("<HHIQ", mm, at)
                    arch = struct.unpack_from("<I", mm, at + 28)[0]
                    if entry_size == 0:
                        break
                    (seen_ptx if kind == 1 else seen_sass).add(arch)
                    at += entry_size + payload
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
    "H800": (9, 0), "GH200": (9, 0), "B200": (10, 0), "B100": (10, 0), "RTX 50": (12, 0),
    "RTX PRO 6000": (12, 0),
}  # fmt: skip


@dataclass
class Gpu:
    index: int
    name: str
    cc: tuple[int, int] | None
    driver: str
    memory_mib: int | None = None  # memory.total, when nvidia-smi gave it


@dataclass
class GpuReport:
    found: bool
    gpus: list[Gpu]
    problem: str | None = None  # nvidia-smi absent or failing
    cuda: str | None = None  # the newest CUDA the driver supports ("CUDA Version" of nvidia-smi), when it says


_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*(\d+\.\d+)")


def parse_driver_cuda(text: str) -> str | None:
    """The driver's CUDA version from `nvidia-smi --version` ("CUDA Version : 13.0") or the header of a
    plain `nvidia-smi` ("CUDA Version: 12.2")."""
    m = _CUDA_VERSION.search(text)
    return m.group(1) if m else None


def driver_cuda(exe: str) -> str | None:
    for args in (["--version"], []):  # --version is newer (R525+); the table's header has it on every driver
        try:
            r = subprocess.run([exe, *args], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if r.returncode == 0:
            v = parse_driver_cuda(r.stdout.decode("utf-8", "replace"))
            if v:
                return v
    return None


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
    gpus: list[Gpu] = []
    for r in rows:
        d = dict(zip(header, (c.strip() for c in r), strict=False))
        cc = None
        cap = d.get("compute_cap", "")
        if re.fullmatch(r"\d+\.\d+", cap):
            a, b = cap.split(".")
            cc = (int(a), int(b))
        else:
            cc = _cc_from_name(d.get("name", ""))
        index, name, driver = d.get("index", str(len(gpus))), d.get("name", ""), d.get("driver_version", "")
        if not index.isdigit():
            raise ValueError(f"GPU index {index!r}")
        if not name or not re.fullmatch(r"\d+(\.\d+)+", driver):
            raise ValueError(f"GPU {index}: name {name!r}, driver {driver!r}")
        mem = re.fullmatch(r"(\d+)(?: MiB)?", d.get("memory.total", ""))
        gpus.append(Gpu(int(index), name, cc, driver, int(mem.group(1)) if mem else None))
    return gpus


def query_gpus(nvidia_smi: str | None = None) -> GpuReport:
    exe = nvidia_smi or os.environ.get("MFNPATCH_NVIDIA_SMI") or shutil.which("nvidia-smi")
    if not exe or not (Path(exe).exists() or shutil.which(exe)):
        return GpuReport(False, [], "nvidia-smi not found: no NVIDIA driver on this machine")
    fields = "index,name,compute_cap,driver_version,memory.total"
    for attempt in (fields, "index,name,driver_version,memory.total"):  # old drivers do not know compute_cap
        try:
            r = subprocess.run([exe, f"--query-gpu={attempt}", "--format=csv"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return GpuReport(False, [], f"nvidia-smi failed: {e}")
        stdout = r.stdout.decode("utf-8", "replace")
        if r.returncode == 0:
            try:
                gpus = parse_query_csv(stdout)
                if not gpus:
                    raise ValueError("no rows")
                return GpuReport(True, gpus, cuda=driver_cuda(exe))
            except ValueError:
                shown = (stdout.strip().splitlines() or [""])[0][:80]
                return GpuReport(False, [], f"nvidia-smi printed what is not its CSV output: {shown!r}")
        msg = (stdout + r.stderr.decode("utf-8", "replace")).strip().splitlines()
        if attempt == fields and any("compute_cap" in m for m in msg):
            continue
        return GpuReport(False, [], f"nvidia-smi failed (exit {r.returncode}): {msg[-1] if msg else ''}")
    return GpuReport(False, [], "nvidia-smi failed")


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))
