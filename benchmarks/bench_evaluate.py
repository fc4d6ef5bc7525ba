"""convert evaluate's throughput per engine beside the engine's own batch-1 latency (mfnpatch bench).

    python benchmarks/bench_evaluate.py [--pairs 6000] [--threads 2] [--loops 200]

A MobileFaceNet-shaped model with random weights (tests/support/mfn_symbol.py: the real model's layers and
FLOPs) is converted, a synthetic dataset with three verification sets of ``--pairs`` pairs is written
(lfw, cfp_fp, agedb_30: 3 x 6000 pairs by default, as the real sets' sizes), and ``convert evaluate`` runs
every engine on all of them. Each engine's images/s (4 x pairs images per set: each image and its flip) is
set beside 1000 / its bare batch-1 latency from ``bench`` at the same thread count, measured in the same run:
the harness's share is what evaluate spends beyond the engine's own time (target: under 10 %).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6000, help="pairs per set (default 6000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loops", type=int, default=200, help="bench loops per engine")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # MXNet reads it once, at import
    os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")
    import mxnet as mx
    from mfn_symbol import save_checkpoint

    from mfnpatch.datasets.synth import synth
    from mfnpatch.deploy.bench import bench
    from mfnpatch.deploy.convert import convert_ncnn
    from mfnpatch.deploy.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        spec = save_checkpoint(mx, f"{tmp}/model-y1", 1, classes=None)
        d = Path(tmp) / "ncnn"
        convert_ncnn(spec, d)
        t = time.perf_counter()
        synth(Path(tmp) / "data", ids=50, per_id=2, pairs=args.pairs)
        print(f"synthetic sets: 3 x {args.pairs} pairs written in {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        done: set[str] = set()

        def progress(what: str, n: int, total: int) -> None:
            if n >= total and what not in done:
                done.add(what)
                print(f"  {what}: {total} images, {time.perf_counter() - t:.0f} s so far", flush=True)

        ev = evaluate(d, Path(tmp) / "data", threads=args.threads, on_progress=progress)
        wall = time.perf_counter() - t
        engines = ["ncnn folded", "ncnn unfolded", "ncnn folded fp16", "onnxruntime", "mxnet"]
        b = bench(d, [args.threads], args.loops, 10, engines=engines)
        lat = {r.engine: r for r in b.rows}
        print()
        print(f"convert evaluate: 3 sets x {args.pairs} pairs, {args.threads} thread(s), {wall:.0f} s in all "
              f"({'PASS' if ev.passed else 'FAIL'})")  # fmt: skip
        print()
        hdr = ("| engine | images | seconds | images/s | bench median ms (batch 1) | 1000 / median | "
               "harness share |")  # fmt: skip
        print(hdr)
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for e in ["mxnet", *engines[:-1], "ncnn unfolded fp16"]:
            rows = [r for r in ev.rows if r.engine == e]
            images, secs = sum(r.images for r in rows), sum(r.seconds for r in rows)
            ips = images / secs
            key = e if e in lat else None
            if key:
                ideal = 1000 / lat[key].median
                share = 1 - ips / ideal
                print(f"| {e} | {images:,} | {secs:.1f} | {ips:.1f} | {lat[key].median:.2f} | {ideal:.1f} | "
                      f"{100 * share:+.1f} % |")  # fmt: skip
            else:
                print(f"| {e} | {images:,} | {secs:.1f} | {ips:.1f} | – | – | – |")
        other = wall - sum(r.seconds for r in ev.rows)
        print()
        print(f"outside the engines (reading and decoding the sets, the protocol, thresholds, golden inputs): "
              f"{other:.1f} s of {wall:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
