"""`mfnpatch data check` against reading the file: throughput, memory, and --full's images per second.

    python benchmarks/bench_data.py [--gb 0.25 1 4] [--dir DIR] [--full-images 20000]

Generates datasets in the pinned code's format (a ``train.rec`` of each ``--gb`` size of real 112x112 JPEGs,
face2rec2's layout), then times, side by side in one run and alternated (best of 3):

- ``cat train.rec > /dev/null`` — reading the file, the floor any check pays;
- ``data check DIR`` (the default: every index line, every record's head, a sample of images decoded), the
  whole command, and the check alone (``check_dataset`` timed in a process that has imported it: the command
  adds the interpreter's start and the imports, a constant);

each with the page cache warm and cold (the file's pages dropped with ``posix_fadvise(DONTNEED)`` first). Peak
RSS of the command comes from the child process (``wait4``) at every size: it must not grow with the file.
``--full`` is timed on the first ``--full-images`` images with 1 worker and with every core: images per second
per core.

Target (issue 22): the default check at >= 50 % of cat's read throughput, flat memory.
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
sys.path.insert(0, str(ROOT))

CHECK = [sys.executable, "-m", "mfnpatch", "data", "check", "--json"]


def make(d: Path, gb: float, distinct: int = 2000) -> int:
    """property, train.rec/.idx of >= gb GB (JPEGs drawn from `distinct` real ones), three small .bin sets."""
    import numpy as np

    from mfnpatch.datasets.bins import dumps_py2
    from mfnpatch.datasets.images import encode_jpeg
    from mfnpatch.datasets.recordio import indexed_writer, pack

    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(distinct):
        base = rng.integers(0, 255, (14, 14, 3)).astype(np.uint8)
        img = np.kron(base, np.ones((8, 8, 1), np.uint8))
        img = np.clip(img.astype(int) + rng.integers(-40, 40, img.shape), 0, 255).astype(np.uint8)
        jpegs.append(encode_jpeg(img, quality=95))
    mean = sum(map(len, jpegs)) / len(jpegs)
    n = int(gb * (1 << 30) / (mean + 40)) + 1
    per_id = 50
    ids = (n + per_id - 1) // per_id
    n = ids * per_id
    d.mkdir(parents=True, exist_ok=True)
    with indexed_writer(d / "train.rec", d / "train.idx") as w:
        for k in range(1, n + 1):
            w.write(k, pack([(k - 1) // per_id, 1], k, data=jpegs[k % distinct]))
        w.write(0, pack([n + 1, n + 1 + ids], 0))
        for i in range(ids):
            w.write(n + 1 + i, pack([1 + i * per_id, 1 + (i + 1) * per_id], n + 1 + i))
    (d / "property").write_text(f"{ids},112,112\n")
    for t in ("lfw", "cfp_fp", "agedb_30"):
        (d / f"{t}.bin").write_bytes(dumps_py2(jpegs[:200], [i % 2 == 0 for i in range(100)]))
    return n


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(argv: list[str], cold: list[Path] | None = None, out=subprocess.DEVNULL) -> tuple[float, int, int]:
    """Wall seconds, exit code and peak RSS (KiB) of a child process."""
    for p in cold or []:
        drop_cache(p)
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    return time.perf_counter() - t0, os.waitstatus_to_exitcode(status), usage.ru_maxrss


INPROC = (
    "import sys, time; from mfnpatch.datasets.check import check_dataset; import cv2; t = time.perf_counter(); "
    "r = check_dataset(sys.argv[1]); print(time.perf_counter() - t); sys.exit(r.exit_code)"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, nargs="+", default=[0.25, 1.0, 4.0], help="sizes of train.rec to generate")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the datasets (default: a temp dir)")
    ap.add_argument("--full-images", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(a.dir or tempfile.mkdtemp(prefix="bench-data-"))
    t0 = time.perf_counter()
    dirs = []
    for gb in a.gb:
        d = tmp / f"rec-{gb:g}gb"
        if not (d / "property").exists():
            make(d, gb)
        dirs.append(d)
    print(f"datasets in {tmp} ({time.perf_counter() - t0:.0f} s to write)", flush=True)
    start = min(timed([sys.executable, "-m", "mfnpatch", "--version"])[0] for _ in range(3))
    print(f"interpreter start and mfnpatch's CLI (mfnpatch --version): {start:.2f} s, in every command's time")
    rows = []
    for d in dirs:
        rec = d / "train.rec"
        files = [rec, d / "train.idx"]
        size = rec.stat().st_size
        best: dict[str, float] = {}
        rss = 0
        for _ in range(a.repeat):  # alternated, each with the page cache warm, then cold
            for mode, cold in (("warm", None), ("cold", files)):
                if cold is None:
                    subprocess.run(["cat", str(rec)], stdout=subprocess.DEVNULL)  # warm the cache first
                sec, code, _ = timed(["cat", str(rec)], cold)
                best[f"cat {mode}"] = min(best.get(f"cat {mode}", float("inf")), sec)
                sec, code, peak = timed([*CHECK, str(d)], cold)
                if code != 0:
                    raise SystemExit(f"data check {d} exited {code}")
                best[f"check {mode}"] = min(best.get(f"check {mode}", float("inf")), sec)
                rss = max(rss, peak)
                with tempfile.TemporaryFile("w+") as f:
                    timed([sys.executable, "-c", INPROC, str(d)], cold, out=f)
                    f.seek(0)
                    best[f"call {mode}"] = min(best.get(f"call {mode}", float("inf")), float(f.read().strip()))
        for mode in ("warm", "cold"):
            cat, chk, call = best[f"cat {mode}"], best[f"check {mode}"], best[f"call {mode}"]
            rows.append((size, mode, size / cat / 1e6, size / chk / 1e6, cat / chk, size / call / 1e6, cat / call, rss))
    print()
    print(
        "| train.rec | page cache | cat MB/s | `data check` MB/s | vs cat | the check alone MB/s | vs cat | peak RSS |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, mode, cat, chk, ratio, call, cratio, rss in rows:
        print(
            f"| {size / (1 << 30):.2f} GB | {mode} | {cat:,.0f} | {chk:,.0f} | {ratio:.0%} | {call:,.0f} "
            f"| {cratio:.0%} | {rss / 1024:.0f} MB |"
        )
    print(
        "\n(`data check` is the whole command; 'the check alone' is check_dataset() timed inside a process that has "
        "imported it; peak RSS is the command's)"
    )
    # --full: images per second per core, on a dataset of --full-images images
    part = tmp / "part"
    if not (part / "property").exists():
        make(part, a.full_images * 4200 / (1 << 30))
    print()
    print("| --full | workers | images | seconds | images/s | per core |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    cores = len(os.sched_getaffinity(0))
    for workers in sorted({1, cores}):
        with tempfile.TemporaryFile("w+") as f:
            sec, code, _ = timed([*CHECK, str(part), "--full", "--workers", str(workers)], out=f)
            f.seek(0)
            images = json.load(f)["decoded"]  # train.rec's images and the three .bin sets'
        print(
            f"| decode all | {workers} | {images:,} | {sec:.1f} | {images / sec:,.0f} | {images / sec / workers:,.0f} |"
        )


if __name__ == "__main__":
    main()
