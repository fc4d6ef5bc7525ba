"""The recipe runner's cost: a stage run through the runner vs the same command run bare.

    python benchmarks/bench_runner.py [--seconds 30] [--rates 100,2000] [--repeat 3]

The command is a "line pump" that prints the lines of a real training log at a fixed rate (lines/s) for a
fixed time, then exits: the stage's own work is constant, so any extra wall time is the runner's.
Bare: stdout to a file. Runner: the runner's stage path (subprocess, select loop, tee to the stage log,
live parser, stop-point checks). Runs alternate (bare, runner, bare, ...) so machine noise hits both; the
medians are compared. The runner process's CPU time during the stage is measured with getrusage.

Targets (issue 4): <= 2 % extra wall time; the live parser under 1 % of a core at 100 log lines/s.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL_LOG = ROOT.parent / "shared" / "reference" / "blog-arcface_loss_test2.log"
FALLBACK = ROOT / "tests" / "test_logs.py"  # holds a Python 3 run's lines (PY3_RUN)

PUMP = r"""
import sys, time
lines = open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines(keepends=True)
rate, seconds = float(sys.argv[2]), float(sys.argv[3])
n = int(rate * seconds)
t0 = time.perf_counter()
out = sys.stdout
for i in range(n):
    out.write(lines[i % len(lines)])
    if i % max(1, int(rate / 100)) == 0:
        out.flush()
        delay = t0 + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
out.flush()
"""


def lines_file(tmp: Path) -> Path:
    if REAL_LOG.is_file():
        return REAL_LOG
    sys.path.insert(0, str(ROOT / "tests"))
    from test_logs import PY3_RUN

    p = tmp / "lines.log"
    p.write_text(PY3_RUN)
    return p


def bare(cmd: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def through_runner(cmd: list[str], tmp: Path, i: int) -> tuple[float, float, float]:
    """The same command through the runner's process control (spawn, tee, live parse): run_process."""
    import os

    from mfnpatch.runs.process import run_process

    log = tmp / f"stage{i}.log"
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = run_process(cmd, tmp, dict(os.environ), log, None, lambda events: None)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    assert res.code == 0, res.ended
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, res.parse_cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rates", default="100,2000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = lines_file(tmp)
        pump = tmp / "pump.py"
        pump.write_text(PUMP)
        for rate in (float(r) for r in args.rates.split(",")):
            cmd = [sys.executable, "-u", str(pump), str(src), str(rate), str(args.seconds)]
            b, r, c, pc = [], [], [], []
            for i in range(args.repeat):
                b.append(bare(cmd, tmp / "bare.log"))
                wall, cpu, parse = through_runner(cmd, tmp, i)
                r.append(wall)
                c.append(cpu)
                pc.append(parse)
            mb, mr = statistics.median(b), statistics.median(r)
            rows.append(
                (rate, mb, mr, 100 * (mr - mb) / mb, 100 * statistics.median(c) / mr, 100 * statistics.median(pc) / mr)
            )
    print(f"line source: {src.name}; {args.seconds:g} s per run, median of {args.repeat}, runs alternated")
    print(
        f"{'lines/s':>8s} {'bare s':>8s} {'runner s':>9s} {'extra wall':>11s} {'runner CPU':>11s} {'parser CPU':>11s}"
    )
    for rate, mb, mr, extra, cpu, parse in rows:
        print(f"{rate:8.0f} {mb:8.2f} {mr:9.2f} {extra:10.2f}% {cpu:10.2f}% {parse:10.3f}%   (% of a core)")
    r100 = next((x for x in rows if x[0] == 100), rows[0])
    worst = max(x[3] for x in rows)
    print(f"target: <= 2 % extra wall time: {'met' if worst <= 2 else 'NOT met'} (worst {worst:.2f} %)")
    print(
        f"target: live parser < 1 % of a core at 100 lines/s: {'met' if r100[5] < 1 else 'NOT met'} "
        f"(parser {r100[5]:.3f} %, the whole runner loop {r100[4]:.2f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
