"""The main job's checks over many seeds and thread counts, and the cost of determinism.

    MFNPATCH_UPSTREAM=/path/to/insightface python benchmarks/bench_smoke_seeds.py \
        [--seeds 0-9] [--threads 1,2] [--cost 2] [--work DIR]

Runs `mfnpatch recipe run may16 --profile smoke --set seed=N --set omp_threads=T` for every seed and
thread count (each run a few minutes on 2 cores), keeps each run's record under --work (a run already
there is not run again, so the benchmark can be stopped and continued), then prints:

- per thread count and check of the smoke profile: min / median / max over the seeds, the check's
  threshold and the worst case's margin;
- with --cost K: K seeded and K unseeded runs (seed 0 vs none, 2 threads), alternated, their wall times
  side by side (the cost of determinism).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def run_one(work: Path, source: str, name: str, sets: list[str]) -> dict:
    rd = work / "runs" / name
    rec = rd / "record.json"
    wall_file = work / "runs" / f"{name}.wall.json"  # beside the run: record.json stays the runner's, schema-valid
    if rec.is_file() and json.loads(rec.read_text()).get("status") in ("passed", "failed"):
        data = json.loads(rec.read_text())
        if "bench_wall_s" in data:  # kept inside the record by an earlier version of this benchmark: move it out
            wall_file.write_text(json.dumps({"wall_s": data.pop("bench_wall_s")}))
            rec.write_text(json.dumps(data, indent=2))
        if wall_file.is_file():
            data["bench_wall_s"] = json.loads(wall_file.read_text())["wall_s"]
        return data
    if rd.exists():
        import shutil

        shutil.rmtree(rd)
    cmd = [sys.executable, "-m", "mfnpatch", "recipe", "run", "may16", "--profile", "smoke", "--tree",
           str(work / "insightface"), "--source", source, "--run-dir", str(rd)]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                       env={**os.environ, "MFNPATCH_CACHE": str(work / "cache")})  # fmt: skip
    wall = time.perf_counter() - t0
    if not rec.is_file():
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-2000:])
        raise SystemExit(f"{name}: no record (exit {p.returncode})")
    wall_file.write_text(json.dumps({"wall_s": round(wall, 1)}))
    data = json.loads(rec.read_text())
    data["bench_wall_s"] = round(wall, 1)
    return data


def checked_values(rec: dict) -> dict[str, tuple[float, str]]:
    """Every check of the smoke profile that compares a number: (value, threshold text)."""
    out: dict[str, tuple[float, str]] = {}
    for s in rec["stages"]:
        for c in s.get("checks") or []:
            if c["id"] == "exit" or not isinstance(c.get("actual"), int | float):
                continue
            out[f"{s['name']}: {c['id']}"] = (float(c["actual"]), str(c.get("expected")), c["verdict"])
        for t, m in ((s.get("metrics") or {}).get("targets") or {}).items():
            out.setdefault(f"{s['name']}: {t} last (not checked)", (m["last"], "", "-"))
    return out


def margin(value: float, expected: str) -> float | None:
    text = expected.strip()
    if text.startswith(">="):
        return value - float(text[2:].split()[0])
    if text.startswith(">"):
        return value - float(text[1:].split()[0])
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=os.environ.get("MFNPATCH_UPSTREAM"), help="InsightFace clone or mirror")
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--cost", type=int, default=0, help="seeded/unseeded pairs for the cost of determinism")
    ap.add_argument("--work", type=Path, default=Path("bench-smoke-seeds"), help="runs are kept here")
    args = ap.parse_args()
    if not args.source:
        print("bench_smoke_seeds: set MFNPATCH_UPSTREAM (or --source)", file=sys.stderr)
        return 64
    args.work.mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(args.seeds)
    threads = [int(x) for x in args.threads.split(",")]
    results: dict[int, list[dict]] = {}
    for t in threads:
        for seed in seeds:
            rec = run_one(args.work, args.source, f"seed{seed}-t{t}", [f"seed={seed}", f"omp_threads={t}"])
            results.setdefault(t, []).append(rec)
            print(f"seed {seed}, {t} thread(s): {rec['status']} ({rec.get('bench_wall_s', '?')} s)", flush=True)
    print()
    print("| threads | check | min | median | max | threshold | worst margin | failed |")
    print("| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |")
    notes: list[str] = []
    for t, recs in results.items():
        keys = list(dict.fromkeys(k for r in recs for k in checked_values(r)))
        for k in keys:
            vals = [checked_values(r)[k] for r in recs if k in checked_values(r)]
            xs = [v[0] for v in vals]
            if "rises" in k:  # relative to the run's own first value: each run's margin against its own
                thr = "> the first value"
                ms = [margin(v[0], v[1]) for v in vals]
                m = min(x for x in ms if x is not None) if any(x is not None for x in ms) else None
            else:  # a constant: the newest run's (a recipe's check can change between runs)
                thr = vals[-1][1]
                older = sorted({v[1] for v in vals} - {thr})
                if older:
                    notes.append(f"{t} thread(s), {k}: earlier runs were checked against {', '.join(older)}; "
                                 f"the margin is against the newest, {thr}")  # fmt: skip
                m = margin(min(xs), thr) if thr else None
            failed = sum(1 for v in vals if v[2] not in ("pass", "-"))
            print(f"| {t} | {k} | {min(xs):.4g} | {statistics.median(xs):.4g} | {max(xs):.4g} | {thr} | "
                  f"{'' if m is None else f'{m:+.4g}'} | {failed}/{len(vals)} |")  # fmt: skip
        passed = sum(1 for r in recs if r["status"] == "passed")
        print(f"| {t} | **runs passed** | | | | | | {len(recs) - passed}/{len(recs)} |")
    for n in notes:
        print(f"note: {n}")
    if args.cost:
        print()
        rows = []
        for i in range(args.cost):
            for label, seed in (("seeded", "0"), ("unseeded", "none")):
                rec = run_one(args.work, args.source, f"cost{i}-{label}", [f"seed={seed}", "omp_threads=2"])
                train = sum(s.get("seconds") or 0 for s in rec["stages"] if s["kind"] == "train")
                rows.append((label, rec.get("bench_wall_s"), train))
        print("| run | whole command s | training stages s |")
        print("| --- | ---: | ---: |")
        for label in ("seeded", "unseeded"):
            ws = [w for lab, w, _ in rows if lab == label]
            ts = [x for lab, _, x in rows if lab == label]
            print(f"| {label} (median of {len(ws)}) | {statistics.median(ws):.1f} | {statistics.median(ts):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
