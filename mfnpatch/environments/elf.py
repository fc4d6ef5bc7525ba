"""Shared libraries as the dynamic loader sees them, read with pyelftools: a library's sections, its soname,
what it needs (DT_NEEDED) and where it asks to be looked for (DT_RPATH, DT_RUNPATH); and the link closure:
every library a library needs, followed through what those need, found the way ld.so finds them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from mfnpatch.environments.spec import EnvError

# Where glibc's loader looks after the cache (x86-64 Debian and Red Hat layouts).
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")


@dataclass(frozen=True)
class ElfInfo:
    path: str
    elfclass: int  # 32 or 64
    machine: str  # e.g. EM_X86_64
    soname: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


def _elffile(f):
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        return ELFFile(f)
    except ELFError as e:
        raise EnvError(f"{getattr(f, 'name', '?')}: not an ELF file ({e})") from None


def sections(path: Path) -> dict[str, tuple[int, int]]:
    """Section name -> (file offset, size)."""
    with open(path, "rb") as f:
        elf = _elffile(f)
        return {s.name: (s["sh_offset"], s["sh_size"]) for s in elf.iter_sections()}


_STRING_TAGS = {"DT_NEEDED": "needed", "DT_SONAME": "soname", "DT_RPATH": "rpath", "DT_RUNPATH": "runpath"}


def read_elf(path: Path) -> ElfInfo:
    """The dynamic section's soname, DT_NEEDED, DT_RPATH and DT_RUNPATH of a shared library or program."""
    from elftools.elf.dynamic import DynamicSection

    with open(path, "rb") as f:
        elf = _elffile(f)
        soname: str | None = None
        needed: list[str] = []
        rpath: list[str] = []
        runpath: list[str] = []
        for s in elf.iter_sections():
            if not isinstance(s, DynamicSection):
                continue
            for tag in s.iter_tags():
                kind = tag.entry.d_tag  # pyelftools names a string tag's value after it: needed, soname, ...
                if kind not in _STRING_TAGS:
                    continue
                value = str(getattr(tag, _STRING_TAGS[kind]))
                if kind == "DT_NEEDED":
                    needed.append(value)
                elif kind == "DT_SONAME":
                    soname = value
                else:
                    (rpath if kind == "DT_RPATH" else runpath).extend(p for p in value.split(":") if p)
        return ElfInfo(str(path), elf.elfclass, elf["e_machine"], soname, tuple(needed), tuple(rpath), tuple(runpath))


def _expand(entry: str, origin: Path) -> Path:
    return Path(re.sub(r"\$(\{ORIGIN\}|ORIGIN)", str(origin), entry))


def system_libraries() -> dict[str, str]:
    """soname -> path from the loader's cache (``ldconfig -p``), 64-bit x86 entries only."""
    exe = shutil.which("ldconfig") or next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)),
                                           None)  # fmt: skip
    if exe is None:
        return {}
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    libs: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+) \(([^)]*)\) => (\S+)", line)
        if m and "x86-64" in m.group(2):
            libs.setdefault(m.group(1), m.group(3))
    return libs


Where = Literal["beside", "environment", "system", "driver", "missing"]


@dataclass
class Link:
    soname: str
    needed_by: str  # the file name of the first library that needs it
    where: Where
    path: str | None = None
    note: str | None = None  # e.g. another major version found instead
    provider: str | None = None  # the package that provides it (when the environment says)


@dataclass
class Closure:
    root: str
    links: list[Link] = field(default_factory=list)
    load_order: list[str] = field(default_factory=list)  # environment libraries, dependencies first

    @property
    def missing(self) -> list[Link]:
        return [x for x in self.links if x.where == "missing"]

    def found(self, where: Where) -> list[Link]:
        return [x for x in self.links if x.where == where]

    def to_dict(self) -> dict:
        return {"root": self.root, "links": [asdict(x) for x in self.links], "load_order": self.load_order}


def _other_majors(soname: str, dirs: Iterable[Path], system: dict[str, str]) -> list[str]:
    """Other versions of a library (libcudnn.so.9 when libcudnn.so.8 is needed) in the given places."""
    stem = soname.split(".so")[0] + ".so."
    seen = {n for n in system if n.startswith(stem) and n != soname}
    for d in dirs:
        if d.is_dir():
            seen |= {p.name for p in d.glob(stem + "*") if p.name != soname and p.name.count(".") <= soname.count(".")}
    return sorted(seen)


def link_closure(
    lib: Path,
    env_dirs: Iterable[Path] = (),
    system: dict[str, str] | None = None,
    driver: Iterable[str] = ("libcuda.so.1",),
    providers: dict[str, str] | None = None,
    default_dirs: Iterable[str] = DEFAULT_DIRS,
    ld_library_path: Iterable[str] | None = None,
) -> Closure:
    """Every library ``lib`` needs, transitively, found as ld.so finds it: the needing library's DT_RPATH
    (when it has no DT_RUNPATH), then ``env_dirs`` (the environment's library folders, which its loader
    hook preloads), then ``LD_LIBRARY_PATH`` (this process's, unless given), then its DT_RUNPATH, then the
    loader's cache and default folders. ``driver`` libraries belong to the machine's NVIDIA driver: they are
    looked for on the machine only (``LD_LIBRARY_PATH``, cache, default folders) and not followed.
    A library of another ELF class or machine is skipped, as ld.so skips it."""
    lib = Path(lib)
    system = system_libraries() if system is None else system
    env_dirs = [Path(d) for d in env_dirs]
    driver = set(driver)
    providers = providers or {}
    if ld_library_path is None:
        ld_library_path = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    ld_dirs = [Path(d) for d in ld_library_path]
    root = read_elf(lib)
    closure = Closure(root=str(lib))
    found: dict[str, Link] = {}
    infos: dict[str, ElfInfo] = {str(lib): root}

    def compatible(path: Path) -> ElfInfo | None:
        try:
            info = infos.get(str(path)) or read_elf(path)
        except (EnvError, OSError):
            return None
        if (info.elfclass, info.machine) != (root.elfclass, root.machine):
            return None
        infos[str(path)] = info
        return info

    def look(soname: str, by: ElfInfo) -> Link:
        origin = Path(by.path).parent
        if soname in driver:
            places: list[tuple[Where, Path]] = [("driver", d) for d in ld_dirs]
        else:
            places = [("beside", _expand(p, origin)) for p in (by.rpath if not by.runpath else ())]
            places += [("environment", d) for d in env_dirs]
            places += [("system", d) for d in ld_dirs]
            places += [("beside", _expand(p, origin)) for p in by.runpath]
        for where, d in places:
            cand = d / soname
            if cand.is_file() and compatible(cand):
                return Link(soname, Path(by.path).name, where, str(cand.resolve()))
        sys_path = system.get(soname)
        cands = [Path(sys_path)] if sys_path else []
        cands += [Path(d) / soname for d in default_dirs]
        for cand in cands:
            if cand.is_file() and compatible(cand):
                return Link(soname, Path(by.path).name, "driver" if soname in driver else "system", str(cand.resolve()))
        other = _other_majors(soname, env_dirs, system)
        note = f"found {', '.join(other)} instead (another version: its soname differs)" if other else None
        return Link(soname, Path(by.path).name, "missing", None, note, providers.get(soname))

    order: list[str] = []
    visiting: set[str] = set()

    def walk(info: ElfInfo) -> None:
        visiting.add(info.path)
        for soname in info.needed:
            if soname not in found:
                link = look(soname, info)
                found[soname] = link
                closure.links.append(link)
                if link.path and link.where != "driver" and link.path not in visiting:
                    child = compatible(Path(link.path))
                    if child is not None:
                        walk(child)
                if link.where == "environment" and link.path and link.path not in order:
                    order.append(link.path)  # after everything it needs: the order to preload in
        visiting.discard(info.path)

    walk(root)
    closure.load_order = order
    return closure
