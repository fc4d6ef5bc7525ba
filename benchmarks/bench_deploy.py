"""Deployment latency: ncnn with BatchNorm folded vs unfolded, against onnxruntime, MXNet and a FLOP bound.

    python benchmarks/bench_deploy.py [--model PREFIX,EPOCH] [--runs 400] [--threads 1,2]

Default model: a MobileFaceNet-shaped network with random weights (tests/mfn_symbol.py; same layers and
FLOPs as the real one, so latency is the same). The folded and unfolded ncnn models are timed
*interleaved* (one run of each, alternately, ``--runs`` times) so that clock and cache drift hit both
equally; medians are compared. onnxruntime and MXNet come from `mfnpatch bench` on the same directory.

Targets (issue 6): folded faster than unfolded (the seed expected ~10 %); ncnn <= 0.6 x onnxruntime at
batch 1; ncnn's time beside a FLOP bound (MobileFaceNet ~0.44 GFLOP per image).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def interleaved(d: Path, threads: int, runs: int) -> dict[str, list[float]]:
    import ncnn
    import numpy as np

    from mfnpatch.deploy.engines import ncnn_net
    from mfnpatch.deploy.mxnet import FOLDED
    from mfnpatch.deploy.ncnn import param_io
    from mfnpatch.deploy.verify import test_inputs

    x = np.ascontiguousarray(test_inputs(1, seed=3)[0])
    nets = {}
    for label, sub in (("folded", d), ("unfolded", d / "unfolded")):
        net = ncnn_net(sub / f"{FOLDED}.param", sub / f"{FOLDED}.bin", threads)
        nets[label] = (net, *param_io(sub / f"{FOLDED}.param"), ncnn.Mat(x).clone())
    times: dict[str, list[float]] = {k: [] for k in nets}
    for i in range(runs + 10):
        order = ("folded", "unfolded") if i % 2 == 0 else ("unfolded", "folded")
        for label in order:
            net, a, b, mat = nets[label]
            t = time.perf_counter()
            ex = net.create_extractor()
            ex.input(a, mat)
            ex.extract(b)
            if i >= 10:
                times[label].append((time.perf_counter() - t) * 1000)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="PREFIX,EPOCH (default: a MobileFaceNet-shaped random model)")
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--loops", type=int, default=50, help="loops for the onnxruntime/MXNet rows")
    args = ap.parse_args()
    import mxnet as mx

    from mfnpatch.deploy.bench import bench
    from mfnpatch.deploy.convert import convert_ncnn

    counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model
        if spec is None:
            from mfn_symbol import save_checkpoint

            spec = save_checkpoint(mx, f"{tmp}/model-y1-arcface", 1, classes=None)
        d = Path(tmp) / "ncnn"
        conv = convert_ncnn(spec, d, verify_after=True)
        res = bench(d, counts, args.loops, 5, engines=["onnxruntime", "mxnet"])
        rows = {(r.engine, r.threads): r for r in res.rows}
        print(
            f"model: {spec if args.model else 'MobileFaceNet-shaped, random weights'}; "
            f"verify: min cosine {conv.verify['min_cosine']:.7f} over {conv.verify['inputs']} inputs"
        )
        print(
            f"ncnn layers: folded {sum(conv.folded['layers'].values())} ({conv.folded['batchnorm']} BatchNorm), "
            f"unfolded {sum(conv.unfolded['layers'].values())} ({conv.unfolded['batchnorm']} BatchNorm)"
        )
        cpu = res.cpu
        print(
            f"machine: {cpu['model']}, {cpu['cores']} cores; /proc/cpuinfo clock {cpu['ghz']} GHz; assumed "
            f"{cpu['flop_per_cycle']} FP32 FLOP/cycle/core ({cpu['assumption']}) = {cpu['peak_gflops_per_core']} "
            "GFLOP/s per core (a turbo clock above the reported one raises the peak and lowers the bound)"
        )
        print()
        hdr = f"{'threads':>7s} {'engine':>14s} {'median ms':>10s} {'min ms':>8s} {'avg ms':>8s}"
        print(hdr)
        summary = []
        for t in counts:
            tt = interleaved(d, t, args.runs)
            med = {k: statistics.median(v) for k, v in tt.items()}
            for k in ("folded", "unfolded"):
                v = tt[k]
                print(f"{t:7d} {'ncnn ' + k:>14s} {med[k]:10.3f} {min(v):8.3f} {sum(v) / len(v):8.3f}")
            for e in ("onnxruntime", "mxnet"):
                r = rows[(e, t)]
                print(f"{t:7d} {e:>14s} {r.median:10.3f} {r.min:8.3f} {r.avg:8.3f}")
            bound = res.flop_bound_ms[t]
            peak = cpu["peak_gflops_per_core"]
            print(f"{t:7d} {'FLOP bound':>14s} {bound:10.3f}   ({res.gflop} GFLOP / ({peak} x {t}))")
            gain = 1 - med["folded"] / med["unfolded"]
            ratio = med["folded"] / rows[("onnxruntime", t)].median
            summary.append((t, gain, ratio, bound / med["folded"]))
            print()
        for t, gain, ratio, eff in summary:
            print(
                f"{t} thread(s): folding BatchNorm {100 * gain:+.1f} % (median, interleaved); ncnn / onnxruntime "
                f"{ratio:.2f} (target <= 0.6: {'met' if ratio <= 0.6 else 'NOT met'}); ncnn at "
                f"{100 * eff:.0f} % of the assumed peak"
            )
        print(
            f"target: folded faster than unfolded: "
            f"{'met' if all(g > 0 for _, g, _, _ in summary) else 'NOT met'} (the seed expected about 10 %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
