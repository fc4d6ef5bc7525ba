"""Log parser throughput and memory on a 200 MB log made by repeating a real one.

    python benchmarks/bench_logs.py [--log PATH] [--mb 200]

The real log defaults to the blog's ArcFace log (../shared/reference/blog-arcface_loss_test2.log). Timed
side by side in one run (best of 3): a single-regex scan for Accuracy-Flip lines (the floor any parser
pays), ``mfnpatch.logs.parser.summarize`` (what ``log summary`` and ``verify`` use) and the event stream (what the
recipe runner uses live). Peak RSS is measured in fresh processes at 1/10 and full size.

Target (issue 3): >= 100 MB/s on one core; memory does not grow with the log.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_LOG = ROOT.parent / "shared" / "reference" / "blog-arcface_loss_test2.log"

RSS_CODE = """
import resource, sys
sys.path.insert(0, {root!r})
from mfnpatch.logs.parser import summarize
s = summarize({path!r})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, s.lines)
"""


# The lines that made the parser quadratic before: a run of word characters (the `...Warning: ` branch
# backtracked over every split), a digit run after a verification prefix (an ambiguous number pattern), and
# a dotted name that almost ends like an exception.
LONG_LINES = {
    "word characters": lambda n: "a" * n,
    "[lfw][2000]Accuracy-Flip: 999...": lambda n: "[lfw][2000]Accuracy-Flip: " + "9" * n,
    "a.a.a....Error (no ': ')": lambda n: "a." * (n // 2) + "Error",
}


def build(src: Path, mb: int, out: Path) -> int:
    data = src.read_bytes()
    n = mb * 1024 * 1024 // len(data) + 1
    with open(out, "wb") as f:
        for _ in range(n):
            f.write(data)
    return out.stat().st_size


def best_of(f, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", type=Path, default=DEFAULT_LOG)
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    if not args.log.is_file():
        print(f"no log at {args.log}; give --log PATH (a real training log)", file=sys.stderr)
        return 2
    from mfnpatch.logs.parser import LogParser, summarize

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.log"
        small = Path(tmp) / "small.log"
        size = build(args.log, args.mb, big)
        build(args.log, max(1, args.mb // 10), small)
        mb = size / 1e6
        rx = re.compile(rb"\[([^\]\n]+)\]\[(\d+)\]Accuracy-Flip: ([\d.]+)")

        def scan():
            with open(big, "rb") as f:
                while data := f.read(1 << 20):
                    for _m in rx.finditer(data):
                        pass

        def events():
            p = LogParser(events=True)
            with open(big, "rb") as f:
                while data := f.read(1 << 20):
                    p.feed_bytes(data)
            p.close()

        rows = [
            ("single-regex scan (floor)", best_of(scan)),
            ("summarize (log summary, verify)", best_of(lambda: summarize(big))),
            ("event stream (recipe runner)", best_of(events)),
        ]
        rss = {}
        for label, path in (("1/10 size", small), ("full size", big)):
            r = subprocess.run(
                [sys.executable, "-c", RSS_CODE.format(root=str(ROOT), path=str(path))], capture_output=True, text=True
            )
            kb, lines = r.stdout.split()
            rss[label] = (int(kb) / 1024, int(lines), path.stat().st_size / 1e6)
        s = summarize(big)

    print(f"log: {args.log.name} repeated to {mb:.0f} MB ({s.lines:,} lines, {s.speed_lines:,} Speedometer lines)")
    print(f"{'':34s} {'seconds':>8s} {'MB/s':>8s}")
    for label, t in rows:
        print(f"{label:34s} {t:8.2f} {mb / t:8.1f}")
    print(f"{'peak RSS (summarize)':34s} {'MB log':>8s} {'RSS MB':>8s}")
    for label, (r, _lines, size_mb) in rss.items():
        print(f"{label:34s} {size_mb:8.0f} {r:8.1f}")
    speed = mb / rows[1][1]
    grow = rss["full size"][0] - rss["1/10 size"][0]
    print()
    print("one long line (no newline for its whole length), parsed whole: linear means MB/s stays flat")
    print(f"{'line':34s} {'KB':>8s} {'seconds':>8s} {'MB/s':>8s}")
    worst = {}
    for kind, make in LONG_LINES.items():
        for kb in (25, 250, 2500):
            text = make(kb * 1024) + "\n"
            t = best_of(lambda text=text: LogParser(events=True).feed(text))
            worst[kind] = max(worst.get(kind, 0.0), t / kb)
            print(f"{kind:34s} {kb:8d} {t:8.3f} {len(text) / 1e6 / t:8.1f}")
    print(f"target: summarize >= 100 MB/s on one core: {'met' if speed >= 100 else 'NOT met'} ({speed:.1f} MB/s)")
    print(
        f"target: memory does not grow with the log: {'met' if grow < 10 else 'NOT met'} "
        f"(+{grow:.1f} MB RSS for {rss['full size'][2] - rss['1/10 size'][2]:.0f} MB more log)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
