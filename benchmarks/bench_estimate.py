"""How good is `recipe estimate`? The smoke profile estimated, then run for real, in the same session.

    MFNPATCH_UPSTREAM=/path/to/insightface python benchmarks/bench_estimate.py [--probe-steps 42] [--warm]

Each training stage's estimated seconds beside the seconds the real run's record measured (target: within
25 %). The smoke stages are 42 steps with Speedometer lines at steps 21 and 42 only (21 batches an epoch), so a
probe needs 42 steps to see two of them: on this profile the probe is as long as the stage, and what is tested
is the model (start + steps x step time + rounds x a round) against the run. The probes run without --warm
unless asked (the smoke's data is a few MB, always in the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mfnpatch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mfnpatch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=7200)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe-steps", type=int, default=42)
    ap.add_argument("--warm", action="store_true")
    args = ap.parse_args()
    if not os.environ.get("MFNPATCH_UPSTREAM"):
        print("set MFNPATCH_UPSTREAM to an InsightFace clone or mirror", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-estimate-") as tmp:
        work = Path(tmp)
        env_cache = work / "cache"
        os.environ["MFNPATCH_CACHE"] = str(env_cache)
        threads = "2"  # the same thread count for the probes and the run (${cpu_free} follows the load)
        common = ["--profile", "smoke", "--tree", "insightface", "--set", f"omp_threads={threads}"]
        t = time.perf_counter()
        e = mfnpatch("recipe", "estimate", "may16", *common, "--probe-steps", str(args.probe_steps),
                     "--warm" if args.warm else "--no-warm", "--json", cwd=work)  # fmt: skip
        if e.returncode != 0:
            print(e.stdout[-2000:], e.stderr[-2000:], file=sys.stderr)
            return 1
        est_wall = time.perf_counter() - t
        est = json.loads(e.stdout)
        t = time.perf_counter()
        r = mfnpatch("recipe", "run", "may16", *common, "--run-dir", "run", "--json", cwd=work)
        run_wall = time.perf_counter() - t
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:], file=sys.stderr)
            return 1
        rec = json.loads(r.stdout)
        real = {s["name"]: s["seconds"] for s in rec["stages"]}
        print(f"may16 --profile smoke, OMP_NUM_THREADS={threads}: estimate {est_wall:.0f} s (probes of "
              f"{args.probe_steps} steps), run {run_wall:.0f} s; ETA shown by the run: "
              f"{(rec['recipe'].get('estimate') or {}).get('seconds')} s")  # fmt: skip
        print()
        print("| stage | probe samples/s | how | verification s | start s | estimated s | run s | error |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        worst = 0.0
        for s in est["stages"]:
            c = s["cold"]
            got = real.get(s["stage"])
            err = (s["seconds"] - got) / got if got and s["seconds"] else None
            worst = max(worst, abs(err)) if err is not None else worst
            print(f"| {s['stage']} | {c['samples_per_sec']} | {c['how']} | {c['verification_seconds']} | "
                  f"{c['startup_seconds']} | {s['seconds']} | {got} | "
                  f"{'–' if err is None else f'{100 * err:+.1f} %'} |")  # fmt: skip
        total_real = sum(real[s["stage"]] for s in est["stages"])
        print(f"| total | | | | | {est['seconds']} | {total_real:.1f} | "
              f"{100 * (est['seconds'] - total_real) / total_real:+.1f} % |")  # fmt: skip
        print()
        print(f"target: every stage within 25 %: {'met' if worst <= 0.25 else 'NOT met'} (worst {100 * worst:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
