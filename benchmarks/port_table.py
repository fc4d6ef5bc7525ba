"""Which patch of `mfn` and `py3` carries to each later InsightFace commit, and how (docs/porting.md's table).

    MFNPATCH_UPSTREAM=/path/to/insightface python benchmarks/port_table.py [--until 22a0719] [--json]

For every commit after the pin that changed src/train_softmax.py, up to the 2020 restructure (which moved
the file; --until names the last commit), runs `mfnpatch patches port SET --to COMMIT --dry-run` for both
sets (nothing is written: a private cache, copies of the pins and sets) and prints one row per commit with
each patch's status: clean, moved, merged, upstream or conflict. Each set's patches are judged in order,
each on top of the ones before it carried over (after a conflict, without the conflicting patch).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PIN = "4bc813215a4603474c840c85fa2113f5354c7180"
SHORT = {"clean": "clean", "moved": "moved", "merged": "merged", "upstream": "upstream", "conflict": "**conflict**"}


def later_commits(source: str, until: str) -> list[tuple[str, str, str]]:
    """(sha, date, subject) of the commits after the pin that touched src/train_softmax.py, oldest first."""
    out = subprocess.run(
        ["git", "-C", source, "log", "--reverse", "--format=%H%x09%ad%x09%s", "--date=short",
         f"{PIN}..{until}", "--", "src/train_softmax.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [tuple(line.split("\t", 2)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=os.environ.get("MFNPATCH_UPSTREAM"), help="a local InsightFace clone or mirror")
    ap.add_argument("--until", default="22a071985aa0af15f8366760ae8cbadb8ba23762", help="the last commit to port to")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.source or not Path(args.source).exists():
        raise SystemExit("needs a local InsightFace clone or mirror: --source PATH or MFNPATCH_UPSTREAM=PATH")
    commits = later_commits(args.source, args.until)
    work = Path(tempfile.mkdtemp(prefix="mfnpatch-port-table-"))
    try:
        shutil.copytree(ROOT / "patches", work / "patches")
        shutil.copytree(ROOT / "insightface_pin", work / "pins")
        os.environ.update({"MFNPATCH_PATCHES": str(work / "patches"), "MFNPATCH_PINS": str(work / "pins"),
                           "MFNPATCH_CACHE": str(work / "cache")})  # fmt: skip
        from mfnpatch.source.port import port

        rows = []
        t0 = time.perf_counter()
        for sha, date, subject in commits:
            row = {"commit": sha, "date": date, "subject": subject, "sets": {}}
            for name in ("mfn", "py3"):
                r = port(name, sha, source=args.source, patches_root=work / "patches", dry_run=True)
                row["sets"][name] = {p.patch: p.status for p in r.patches}
            rows.append(row)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    names = [(s, p) for s in ("mfn", "py3") for p in rows[0]["sets"][s]] if rows else []
    head = ["commit", "date", "subject"] + [f"{s} {p.split('-')[0]}" for s, p in names]
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join("---" for _ in head) + " |")
    for r in rows:
        cells = [f"`{r['commit'][:8]}`", r["date"], r["subject"].replace("|", "\\|")[:40]]
        cells += [SHORT[r["sets"][s][p]] for s, p in names]
        print("| " + " | ".join(cells) + " |")
    print()
    print("patches: " + "; ".join(f"{s} {p}" for s, p in names))
    print(f"{len(rows)} commits x {len(names)} patches, dry runs in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
