"""The main job, timed: `mfnpatch recipe run may16 --profile smoke` from an empty directory, per stage.

    MFNPATCH_UPSTREAM=/path/to/insightface python benchmarks/bench_smoke.py [--keep DIR]

Runs in the interpreter that runs this script (the cpu environment: MXNet, onnx, ncnn, pnnx). Prints one
row per stage (seconds as the run record measured them, steps, the stage's result) and the wall time of
the whole command, apply included. Target (issue 7): <= 10 minutes on 2 cores once the environment exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 600


def result_of(s: dict) -> str:
    m = s.get("metrics") or {}
    t = m.get("targets") or {}
    if t:
        return ", ".join(f"{k} {v['last']:.2f}" for k, v in t.items())
    for c in s.get("checks") or []:
        if c["id"] != "exit":
            return c["message"].split(" — ")[0]
    return s.get("ended") or ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=os.environ.get("MFNPATCH_UPSTREAM"), help="InsightFace clone or mirror")
    ap.add_argument("--keep", type=Path, help="work here and keep the run (default: a temporary directory)")
    args = ap.parse_args()
    if not args.source:
        print("bench_smoke: set MFNPATCH_UPSTREAM (or --source) to an InsightFace clone or mirror", file=sys.stderr)
        return 64
    work = args.keep or Path(tempfile.mkdtemp(prefix="mfnpatch-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MFNPATCH_CACHE": str(work / "cache")}
    t0 = time.perf_counter()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mfnpatch",
            "recipe",
            "run",
            "may16",
            "--profile",
            "smoke",
            "--tree",
            "insightface",
            "--source",
            args.source,
            "--run-dir",
            "run",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    rec_path = work / "run" / "record.json"
    if not rec_path.is_file():
        print(p.stdout[-2000:] + p.stderr[-2000:], file=sys.stderr)
        return 1
    rec = json.loads(rec_path.read_text())
    cpus = os.cpu_count()
    print(f"may16 --profile smoke on {cpus} cores: {rec['status']} (exit {p.returncode})\n")
    print("| stage | seconds | steps | result |")
    print("| --- | ---: | ---: | --- |")
    total = 0.0
    for s in rec["stages"]:
        secs = s.get("seconds") or 0.0
        total += secs
        steps = (s.get("metrics") or {}).get("last_step") or ""
        print(f"| {s['name']} | {secs:.1f} | {steps} | {result_of(s)} |")
    print(f"| stages total | {total:.1f} | | |")
    print(f"| whole command (apply, env check, stages, report) | {wall:.1f} | | target <= {TARGET_S} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if p.returncode == 0 and wall <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
