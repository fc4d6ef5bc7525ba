"""`mfnpatch bench MODEL_DIR`: benchncnn-style latency at batch 1 for ncnn (folded and unfolded BatchNorm, in
float32, and folded with ncnn's fp16 options on as benchncnn runs it on a phone; with the original weights too
when the model was converted with ``--flush-denormals``), onnxruntime and MXNet, beside the seed's Snapdragon
625 numbers and a FLOP bound for this machine.

Each engine and thread count is timed over ``loops`` runs after ``warmup`` runs (min / max / avg ms). MXNet
reads its thread count when it starts, so it is timed in a fresh process per thread count.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.deploy.contract import source_of
from mfnpatch.deploy.engines import ncnn_net, onnx_session
from mfnpatch.deploy.flops import gflop
from mfnpatch.deploy.mxnet import FOLDED, ConvertError
from mfnpatch.deploy.ncnn import param_io
from mfnpatch.deploy.registry import DENORMALS_KEPT, MXNET, ONNXRUNTIME, Engine, lookup
from mfnpatch.deploy.verify import test_inputs
from mfnpatch.fsutil import atomic_write_json

MXNET_TIMER = r"""
import os, sys, json, time
os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")
import numpy as np, mxnet as mx
d, loops, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sym, arg, aux = mx.model.load_checkpoint(os.path.join(d, "mxnet"), 0)
ex = sym.simple_bind(mx.cpu(), data=(1, 3, 112, 112), grad_req="null")
ex.copy_params_from(arg, aux, allow_extra_params=True)
x = mx.nd.array(np.load(os.path.join(d, ".bench-input.npy")))
times = []
for i in range(warmup + loops):
    t = time.perf_counter()
    ex.forward(is_train=False, data=x)
    ex.outputs[0].wait_to_read()
    if i >= warmup:
        times.append((time.perf_counter() - t) * 1000)
print(json.dumps(times))
"""


@dataclass
class Row:
    engine: str
    threads: int
    loops: int
    min: float
    max: float
    avg: float
    median: float


@dataclass
class BenchResult:
    dir: str
    loops: int
    warmup: int
    rows: list[Row] = field(default_factory=list)
    cpu: dict = field(default_factory=dict)
    gflop: float = 0.0  # per image, counted from model.onnx (flops.py)
    flop_bound_ms: dict = field(default_factory=dict)  # threads -> ms
    reference: dict = field(default_factory=dict)
    folded_gain: dict = field(default_factory=dict)  # threads -> 1 - folded/unfolded (avg)
    ncnn_vs_onnxruntime: dict = field(default_factory=dict)  # threads -> folded avg / onnxruntime avg


def cpu_peak() -> dict:
    """What this machine can do at most: cores, clock, and FP32 FLOP per cycle per core from its SIMD flags."""
    flags: set[str] = set()
    mhz, model = None, "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
            elif line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    if "fma" in flags and ("avx2" in flags or "avx512f" in flags):
        per_cycle, why = 32, "2 FMA units x 8 FP32 lanes (256-bit) x 2 FLOP"
    elif "avx" in flags:
        per_cycle, why = 16, "AVX without FMA: 8 lanes x (1 mul + 1 add)"
    else:
        per_cycle, why = 8, "SSE: 4 lanes x (1 mul + 1 add)"
    ghz = (mhz or 2000.0) / 1000
    return {
        "model": model,
        "cores": os.cpu_count() or 1,
        "ghz": round(ghz, 3),
        "flop_per_cycle": per_cycle,
        "assumption": why,
        "peak_gflops_per_core": round(ghz * per_cycle, 1),
    }


def _stats(engine: str, threads: int, times: list[float]) -> Row:
    return Row(
        engine,
        threads,
        len(times),
        round(min(times), 3),
        round(max(times), 3),
        round(sum(times) / len(times), 3),
        round(statistics.median(times), 3),
    )


def _time(fn, loops: int, warmup: int) -> list[float]:
    out = []
    for i in range(warmup + loops):
        t = time.perf_counter()
        fn()
        if i >= warmup:
            out.append((time.perf_counter() - t) * 1000)
    return out


def bench(
    model_dir: Path, threads: list[int], loops: int = 20, warmup: int = 3, engines=None, reference: dict | None = None
) -> BenchResult:
    """Time the converted models; ``reference``: the seed's own numbers, written beside as context."""
    import numpy as np

    d = Path(model_dir)
    onnx_src = source_of(d)  # a model converted from ONNX (PyTorch lineage): no MXNet, no unfolded model
    need = [d / f"{FOLDED}.param", d / "model.onnx"]
    if not onnx_src:
        need += [d / "unfolded" / f"{FOLDED}.param", d / "mxnet-symbol.json"]
    for p in need:
        if not p.is_file():
            raise ConvertError(
                f"{d}: not a converted model directory ({p} is missing)",
                hint=f"make it with: mfnpatch convert ncnn PREFIX,EPOCH -o {d}",
            )
    if loops < 1 or not threads or min(threads) < 1:
        raise ConvertError("--loops and --threads must be positive")
    source = "onnx" if onnx_src else "mxnet"
    kept = (d / "unflushed" / f"{FOLDED}.param").is_file()
    chosen: list[Engine] = (
        [lookup([e], source)[0] if isinstance(e, str) else e for e in engines] if engines
        else [Engine("ncnn", "folded"), Engine("ncnn", "folded", "fp16"), ONNXRUNTIME] if onnx_src
        else [Engine("ncnn", "folded"), Engine("ncnn", "unfolded"), Engine("ncnn", "folded", "fp16"),
              *([DENORMALS_KEPT[1]] if kept else []), ONNXRUNTIME, MXNET]
    )  # fmt: skip
    emulated = [e.name for e in chosen if e.emulated]
    if emulated:
        raise ConvertError(f"bench times this machine's engines; {emulated[0]} runs under emulation, where time is "
                           "a cost, never a phone's latency", hint="time it on the phone (benchncnn); convert "
                           "evaluate --arm reports what emulation costs")  # fmt: skip
    x = np.ascontiguousarray(test_inputs(1, seed=3)[0])  # referenced while ncnn.Mat borrows it
    np.save(d / ".bench-input.npy", x[None])
    res = BenchResult(str(d), loops, warmup, cpu=cpu_peak())
    res.gflop = round(gflop(d / "model.onnx"), 4)
    try:
        for t in threads:
            for e in chosen:
                if e.kind == "ncnn":
                    import ncnn

                    param, binf = (d / f for f in e.files())
                    net = ncnn_net(param, binf, t, e.ncnn_options())
                    in_name, out_name = param_io(param)
                    mat = ncnn.Mat(x).clone()

                    def run(net=net, in_name=in_name, out_name=out_name, mat=mat):
                        ex = net.create_extractor()
                        ex.input(in_name, mat)
                        ex.extract(out_name)

                    res.rows.append(_stats(e.name, t, _time(run, loops, warmup)))
                elif e.kind == "onnxruntime":
                    s, _ = onnx_session(d / "model.onnx", t)
                    feed = {s.get_inputs()[0].name: x[None]}
                    res.rows.append(_stats(e.name, t, _time(lambda s=s, feed=feed: s.run(None, feed), loops, warmup)))
                elif e == MXNET:
                    env = {**os.environ, "OMP_NUM_THREADS": str(t), "MXNET_SUBGRAPH_BACKEND": "NONE"}
                    r = subprocess.run(
                        [sys.executable, "-c", MXNET_TIMER, str(d), str(loops), str(warmup)],
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=1800,
                    )
                    if r.returncode != 0:
                        raise ConvertError("timing MXNet failed", details=r.stderr.strip().splitlines()[-3:])
                    res.rows.append(_stats(e.name, t, json.loads(r.stdout.strip().splitlines()[-1])))
                else:
                    raise ConvertError(f"bench does not time {e.name}")
    finally:
        (d / ".bench-input.npy").unlink(missing_ok=True)
    peak = res.cpu["peak_gflops_per_core"]
    for t in threads:
        res.flop_bound_ms[t] = round(res.gflop / (peak * min(t, res.cpu["cores"])) * 1000, 3)
        by = {r.engine: r for r in res.rows if r.threads == t}
        if "ncnn folded" in by and "ncnn unfolded" in by:
            res.folded_gain[t] = round(1 - by["ncnn folded"].avg / by["ncnn unfolded"].avg, 4)
        if "ncnn folded" in by and "onnxruntime" in by:
            res.ncnn_vs_onnxruntime[t] = round(by["ncnn folded"].avg / by["onnxruntime"].avg, 3)
    res.reference = reference or {}
    atomic_write_json(d / "bench.json", asdict(res))
    return res


def table(res: BenchResult) -> str:
    """The result as benchncnn prints it, with the reference and the FLOP bound."""
    out = []
    w = max([16, *(len(r.engine) for r in res.rows)])
    for t in sorted({r.threads for r in res.rows}):
        out += [f"loop_count = {res.loops}", f"num_threads = {t}", "powersave = 0"]
        for r in (r for r in res.rows if r.threads == t):
            out.append(f"{r.engine:>{w}s}  min = {r.min:7.2f}  max = {r.max:7.2f}  avg = {r.avg:7.2f}")
        bound = res.flop_bound_ms.get(t)
        if bound:
            out.append(
                f"{'FLOP bound':>{w}s}  {bound:7.2f} ms ({res.gflop} GFLOP, counted from the graph, at "
                f"{res.cpu['peak_gflops_per_core']} GFLOP/s per core x {min(t, res.cpu['cores'])})"
            )
        if t in res.folded_gain:
            out.append(
                f"{'':>{w}s}  folding BatchNorm: {100 * res.folded_gain[t]:+.1f} % vs unfolded; "
                f"ncnn folded / onnxruntime = {res.ncnn_vs_onnxruntime.get(t, float('nan')):.2f}"
            )
        by = {r.engine: r for r in res.rows if r.threads == t}
        if "ncnn folded" in by and "ncnn folded, denormals kept" in by:
            kept, flushed = by["ncnn folded, denormals kept"].avg, by["ncnn folded"].avg
            out.append(
                f"{'':>{w}s}  denormals flushed: {flushed:.2f} ms, kept: {kept:.2f} ms "
                f"({100 * (1 - flushed / kept):+.1f} %; ARM CPUs without flush-to-zero pay far more for them)"
            )
        out.append("")
    ref = res.reference
    if ref:
        rows = ", ".join(f"{t} threads avg {r['avg']} ms" for t, r in ref["threads"].items())
        out.append(
            f"reference: the seed's {ref['model']} on a {ref['device']} (BatchNorm not folded): {rows} — "
            "different hardware, shown for scale only"
        )
    cpu = res.cpu
    out.append(
        f"machine: {cpu['model']}, {cpu['cores']} cores at {cpu['ghz']} GHz; assumed peak "
        f"{cpu['flop_per_cycle']} FP32 FLOP/cycle/core ({cpu['assumption']})"
    )
    return "\n".join(out)
