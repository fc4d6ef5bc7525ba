"""The smoke profile's training stage alone and beside a busy core, for the thread settings it could use.

    MFNPATCH_UPSTREAM=/path/to/insightface python benchmarks/bench_load.py [--steps 21] [--work DIR]

Runs the smoke softmax command (the seed's, batch 16 on the synthetic dataset, seeded) for --steps steps
(one verification round at 21) in the patched tree, for each setting, alone and beside one busy process
(a Python loop on one core, as another user's job would be), alternated, and prints the wall times side by
side. The settings: OMP_NUM_THREADS = the core count with libgomp's default wait policy (its threads spin
while they wait, for a while), the same with OMP_WAIT_POLICY=PASSIVE (they sleep), and one thread.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path


def busy() -> None:
    while True:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=os.environ.get("MFNPATCH_UPSTREAM"), help="InsightFace clone or mirror")
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--work", type=Path, default=Path("bench-load"))
    args = ap.parse_args()
    if not args.source:
        print("bench_load: set MFNPATCH_UPSTREAM (or --source)", file=sys.stderr)
        return 64
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MFNPATCH_CACHE": str(work / "cache")}
    py = [sys.executable, "-m", "mfnpatch"]
    tree = work / "insightface"
    r = subprocess.run([*py, "apply", "--commit", "4bc8132", "--series", "mfn,py3", "--dest", str(tree), "--source",
                        args.source], env=env, capture_output=True, text=True)  # fmt: skip
    if r.returncode not in (0, 2):
        print(r.stderr, file=sys.stderr)
        return 1
    data = work / "data"
    subprocess.run([*py, "data", "synth", "-o", str(data), "--ids", "21", "--per-id", "16", "--pairs", "100"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    from mfnpatch.runs.determinism import free_cpus, seed_env

    cores = os.cpu_count() or 1
    settings = {
        f"{cores} threads, default wait policy": {"OMP_NUM_THREADS": str(cores)},
        f"{cores} threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"},
        "1 thread": {"OMP_NUM_THREADS": "1"},
    }
    argv = [sys.executable, "-u", "train_softmax.py", "--network", "y1", "--ckpt", "2", "--loss-type", "0",
            "--lr-steps", "30,35", "--wd", "0.00004", "--fc7-wd-mult", "10", "--per-batch-size", "16",
            "--emb-size", "128", "--data-dir", str(data), "--verbose", "21",
            "--max-steps", str(args.steps)]  # fmt: skip
    times: dict[tuple[str, str], float] = {}
    picked: dict[str, int] = {}
    for condition in ("alone", "beside a busy core"):
        load = multiprocessing.Process(target=busy, daemon=True) if condition != "alone" else None
        if load:
            load.start()
            time.sleep(1)
        picked[condition] = free_cpus()  # what the smoke profile's ${cpu_free} would choose now
        try:
            for name, extra in settings.items():
                out = work / "models" / f"{len(times)}"
                out.mkdir(parents=True, exist_ok=True)
                e = {**env, "CUDA_VISIBLE_DEVICES": "", **extra}
                e.update(seed_env(0, e))
                t0 = time.perf_counter()
                p = subprocess.run([*argv, "--prefix", str(out / "m")], cwd=tree / "src", env=e,
                                   capture_output=True, text=True)  # fmt: skip
                times[(name, condition)] = time.perf_counter() - t0
                if p.returncode != 0:
                    print(p.stdout[-2000:] + p.stderr[-2000:], file=sys.stderr)
                    return 1
                print(f"{name}, {condition}: {times[(name, condition)]:.1f} s", flush=True)
        finally:
            if load:
                load.terminate()
                load.join()
    print()
    print(f"softmax, {args.steps} steps (batch 16) and one verification round, on {cores} cores")
    print("| setting | alone s | beside a busy core s | slowdown |")
    print("| --- | ---: | ---: | ---: |")
    for name in settings:
        a, b = times[(name, "alone")], times[(name, "beside a busy core")]
        print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")

    def setting_for(n: int) -> str:
        return "1 thread" if n == 1 else f"{n} threads, default wait policy"

    pa, pb = picked["alone"], picked["beside a busy core"]
    if setting_for(pa) in settings and setting_for(pb) in settings:
        a, b = times[(setting_for(pa), "alone")], times[(setting_for(pb), "beside a busy core")]
        print(f"| smoke profile: ${{cpu_free}} ({pa} alone, {pb} beside a busy core) | {a:.1f} | {b:.1f} | "
              f"{b / a:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
