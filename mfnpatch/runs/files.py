"""What a run wrote, hashed, and held against the disk: the files a stage's outputs name (converted models,
result files, a dataset it made) are hashed when the stage ends, beside its checkpoints and logs; later, each
recorded file is read again — only inside the run directory or its tree, whatever a record says — and is
the same, changed since recorded, gone, or outside.

``compare`` and ``recipe status`` say which; ``--resume`` refuses a checkpoint whose bytes changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mfnpatch.fsutil import sha256_file
from mfnpatch.runs.record import RunError

MAX_FILES = 10_000  # of one output directory
# files whose bytes two runs of one plan share (models); a result file holds timings and differs run to run
MODEL_SUFFIXES = (".params", ".onnx", ".param", ".bin", "-symbol.json")
FileState = Literal["same", "changed", "missing", "outside"]


def output_files(outputs: dict[str, str], cwd: Path, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """sha256 of every file a stage's outputs name (a file; every file of a directory; the files of a
    checkpoint prefix), by absolute path; ``skip``: paths already recorded (its checkpoints)."""
    out: dict[str, str] = {}
    for value in outputs.values():
        p = Path(value) if Path(value).is_absolute() else Path(cwd) / value
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.is_symlink())[:MAX_FILES]
        else:  # a checkpoint prefix: PREFIX-symbol.json and PREFIX-NNNN.params
            found = sorted(f for f in p.parent.glob(p.name + "-*") if f.is_file() and not f.is_symlink()) if (
                p.parent.is_dir()) else []  # fmt: skip
        for f in found:
            key = os.path.normpath(f.absolute())
            if key not in skip and key not in out:
                out[key] = sha256_file(f)
    return dict(sorted(out.items()))


@dataclass
class FileCheck:
    path: str
    recorded: str
    now: str | None
    state: FileState


def inside_any(path: Path, roots: list[Path]) -> bool:
    p = path.resolve()
    return any(p == r.resolve() or r.resolve() in p.parents for r in roots)


def check_files(recorded: dict[str, str], roots: list[Path]) -> list[FileCheck]:
    """Each recorded file read again: never one outside ``roots`` (a hand-edited record may name any file)."""
    out = []
    for path, digest in recorded.items():
        p = Path(path)
        if not p.is_absolute() or not inside_any(p, roots):
            out.append(FileCheck(path, digest, None, "outside"))
        elif not p.is_file():
            out.append(FileCheck(path, digest, None, "missing"))
        else:
            now = _sha256(p)
            out.append(FileCheck(path, digest, now, "same" if now == digest else "changed"))
    return out


_HASHED: dict[tuple[str, int, int], str] = {}


def _sha256(p: Path) -> str:
    """A file's sha256, hashed once per version of it (size and modification time): ``status --follow``."""
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        if len(_HASHED) > 4096:
            _HASHED.clear()
        _HASHED[key] = sha256_file(p)
    return _HASHED[key]


def is_model(path: str) -> bool:
    return path.endswith(MODEL_SUFFIXES)


def changed_since_recorded(recorded: dict[str, str], files) -> list[str]:
    """Of ``files`` (paths), those whose recorded sha256 is not their bytes' now, in words."""
    wanted = {os.path.normpath(Path(f).absolute()) for f in files}
    mine = {p: d for p, d in recorded.items() if p in wanted}
    checks = check_files(mine, [Path(p).parent for p in mine])
    return [f"{c.path}: sha256 {c.recorded[:12]} recorded, {(c.now or '')[:12]} now" for c in checks
            if c.state == "changed"]  # fmt: skip


def refuse_changed(recorded: dict[str, str], stage: str, files, what: str, force: bool, note) -> None:
    """A checkpoint whose bytes are not the ones the run recorded is not used (``force`` uses it, said)."""
    lines = changed_since_recorded(recorded, files)
    if lines and force:
        note(f"{what}: checkpoint files changed since recorded ({'; '.join(lines)}); used (--force)")
    elif lines:
        raise RunError(
            f"{what}: checkpoint files of stage {stage} changed since the run recorded them; refusing to use them",
            details=lines,
            hint="restore them, or use them anyway with --force (recorded), or rerun the stage",
        )
