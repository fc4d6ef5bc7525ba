"""The ARM engines: a converted ncnn model run by the aarch64 build of the same ncnn, on a phone's CPU class emulated
by QEMU (``mfnpatch.emulator``). What an engine record says (its target's QEMU CPU, its ncnn options) is what the
emulated worker does; the inputs and outputs go through .npy files in a scratch directory.

Emulated time is a cost, never a latency: an image takes about a second of CPU in fp32 and several with fp16
arithmetic (``benchmarks/bench_arm.py``), whatever the phone would take.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mfnpatch.deploy.mxnet import ConvertError
from mfnpatch.deploy.ncnnparam import read_param
from mfnpatch.deploy.registry import TARGETS, Engine
from mfnpatch.emulator import Emulator, EmulatorError, open_emulator

_OPEN: dict[str, Emulator] = {}


def emulator(prefix: Path | None = None) -> Emulator:
    """The emulated environment (``--arm-env``, MFNPATCH_ARM_ENV, or the default place), opened once."""
    key = str(prefix or "")
    if key not in _OPEN:
        try:
            _OPEN[key] = open_emulator(prefix)
        except EmulatorError as e:
            raise ConvertError(e.message, hint=e.hint) from None
    return _OPEN[key]


def _job(e: Engine, d: Path, mode: str, x, work: Path, extra: dict | None = None) -> dict:
    import numpy as np

    param, binf = (Path(d).absolute() / f for f in e.files())
    pf = read_param(param)
    np.save(work / "input.npy", np.ascontiguousarray(x, dtype=np.float32))
    return {"mode": mode, "param_path": str(param), "bin_path": str(binf), "options": e.ncnn_options(),
            "threads": 1, "input_path": str(work / "input.npy"), "input": pf.input, "output": pf.output,
            **(extra or {})}  # fmt: skip


def _batch_all(inputs):
    """Every input as one float32 NCHW array (``engines.Images`` makes its own; an array is taken as it is)."""
    return inputs.batch(0, len(inputs)) if hasattr(inputs, "batch") else inputs


def workers() -> int:
    """Emulator processes run at once: one per core this process may use (MFNPATCH_ARM_WORKERS to choose)."""
    import os

    if os.environ.get("MFNPATCH_ARM_WORKERS", "").isdigit():
        return max(1, int(os.environ["MFNPATCH_ARM_WORKERS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def embed_emulated(e: Engine, d: Path, inputs, threads: int = 1, on_done=None, prefix: Path | None = None):
    """The embeddings the emulated CPU computes (one per input, in order): the inputs split over ``workers()``
    emulator processes, one ncnn thread each."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    em = emulator(prefix)
    cpu = TARGETS[e.target].qemu_cpu
    assert cpu is not None
    x = _batch_all(inputs)
    parts = [p for p in np.array_split(np.arange(len(x)), min(workers(), len(x))) if len(p)]
    done = [0] * len(parts)
    lock = threading.Lock()

    def run(k: int, work: Path):
        def line(text: str) -> None:
            if on_done and text.startswith("done "):
                with lock:
                    done[k] = int(text.split()[1].split("/")[0])
                    on_done(sum(done))

        job = _job(e, d, "embed", x[parts[k]], work, {"output_path": str(work / "out.npy")})
        try:
            em.run(cpu, job, on_line=line)
        except EmulatorError as err:
            raise ConvertError(err.message, hint=err.hint) from None
        return np.load(work / "out.npy")

    with tempfile.TemporaryDirectory(prefix="mfnpatch-arm-") as tmp:
        dirs = [Path(tmp) / str(k) for k in range(len(parts))]
        for w in dirs:
            w.mkdir()
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            outs = list(pool.map(run, range(len(parts)), dirs))
    return np.concatenate(outs)


def blobs_emulated(e: Engine, d: Path, x1, prefix: Path | None = None) -> list:
    """(layer, type, output blob, value) of every layer but Input and Split, for one input, on the emulated CPU."""
    import numpy as np

    em = emulator(prefix)
    cpu = TARGETS[e.target].qemu_cpu
    assert cpu is not None
    param = Path(d) / e.files()[0]
    wanted = [(x.name, x.type, top) for x in read_param(param).layers if x.type not in ("Input", "Split")
              for top in x.tops]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mfnpatch-arm-") as tmp:
        work = Path(tmp)
        job = _job(e, d, "blobs", np.asarray(x1)[:1], work,
                   {"output_path": str(work / "blobs.npz"), "blobs": [t for _, _, t in wanted]})  # fmt: skip
        try:
            em.run(cpu, job)
        except EmulatorError as err:
            raise ConvertError(err.message, hint=err.hint) from None
        with np.load(work / "blobs.npz") as z:
            values = [z[f"b{i}"] for i in range(len(wanted))]
    return [(name, kind, top, v) for (name, kind, top), v in zip(wanted, values, strict=True)]
