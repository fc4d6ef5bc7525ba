"""Same inputs, same numbers: what a seeded run sets, and what still varies.

The pinned code seeds nothing: Python's ``random`` drives the shuffle and the mirror augmentation of
``image_iter.py``, MXNet's generator the initializers. A recipe run is seeded by default (run seed 0;
``--set seed=N`` changes it, ``--set seed=none`` runs unseeded) without changing a token of the stage
commands: the runner puts ``mfnpatch/runs/seedhook`` first on the stages' ``PYTHONPATH``, where Python's
start-up imports its ``sitecustomize``, which seeds ``random``, NumPy and (as it is imported) MXNet from
``MFNPATCH_SEED``. Why a start-up hook and not a patch set: it needs no edit of the pinned code (the
``mfn`` set stays the seed's three edits), it reaches every process of every stage (training, slim, the
tools), and a run that asks for no seed has no trace of it. ``PYTHONHASHSEED`` fixes string hashing and
``MXNET_ENFORCE_DETERMINISM`` asks MXNet for deterministic kernels (it matters on GPUs: cuDNN).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent / "seedhook"

# What a seed does not fix, in words (the report and docs/determinism.md say the same, with measurements).
STILL_VARIES = (
    "the thread count: MXNet's CPU kernels (MKL-DNN, OpenBLAS) reduce in an order that depends on "
    "OMP_NUM_THREADS, so a run with another thread count gives other numbers; it is recorded with the run",
    "the machine: another CPU (instruction set), another MXNet build or a GPU give other numbers",
    "a mid-stage resume: the pinned code does not save the optimizer's momentum and restarts the data "
    "iterator, so a resumed segment continues differently from an uninterrupted run",
    "Speedometer's samples/s and every time: they measure the machine",
)


def seed_env(seed: int | None, env: dict[str, str]) -> dict[str, str]:
    """The variables a stage's process gets for ``seed`` (none for an unseeded run); ``env`` is the
    environment they are added to (for its PYTHONPATH)."""
    if seed is None:
        return {}
    path = env.get("PYTHONPATH", "")
    return {
        "MFNPATCH_SEED": str(seed),
        "PYTHONHASHSEED": str(seed),
        "PYTHONPATH": str(HOOK_DIR) + (os.pathsep + path if path else ""),
        "MXNET_ENFORCE_DETERMINISM": "1",
    }


def describe(seed: int | None, lineage: str | None = None) -> dict:
    """What the run record says about determinism (``lineage``: the recipe's, whose code may seed itself)."""
    from mfnpatch.lineages import LINEAGES

    own = LINEAGES[lineage].seeding if lineage in LINEAGES else None
    if seed is None:
        return {
            "seed": None,
            "deterministic": False,
            "how": "unseeded (--set seed=none): Python random, NumPy and MXNet start from the clock, "
            "as the pinned code alone does" + (f"; {own}" if own else ""),
            "still_varies": [],
        }
    return {
        "seed": seed,
        "deterministic": True,
        "how": f"run seed {seed}: MFNPATCH_SEED={seed} with mfnpatch's start-up hook on PYTHONPATH seeds Python "
        f"random, NumPy and MXNet; PYTHONHASHSEED={seed}; MXNET_ENFORCE_DETERMINISM=1; commands unchanged"
        + (f"; {own}" if own else ""),
        "still_varies": list(STILL_VARIES),
    }


def free_cpus(sample: float = 0.5) -> int:
    """Cores not busy with other work right now (at least 1): /proc/stat sampled over ``sample`` seconds,
    a core counted busy when other processes use more than half of it. Elsewhere: the core count."""
    n = os.cpu_count() or 1

    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    a = read()
    time.sleep(sample)
    b = read()
    if a is None or b is None or b[0] <= a[0]:
        return n
    busy = (1 - (b[1] - a[1]) / (b[0] - a[0])) * n
    return max(1, n - round(busy))
