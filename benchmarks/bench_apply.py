"""Bytes transferred and wall time: a cold `mfnpatch apply` against a full `git clone` of the same source.

    python benchmarks/bench_apply.py [--source PATH]   (default: $MFNPATCH_UPSTREAM, else a synthetic upstream)

Bytes are counted exactly where they leave the source: git's upload-pack runs pack-objects through
``uploadpack.packObjectsHook`` (set in a temporary global git config, which also turns the source's
``uploadpack.allowFilter`` on or off), and the hook counts the pack bytes it forwards, every request of the
apply summed. All rows go over file://, side by side in one run:

- cold apply of may16's paths (the commit's trees, then the blobs of src and deploy/*: what recipe run
  fetches), then widening that tree by one more directory; a plain apply (only the files directly in the
  directories the mfn and py3 sets touch);
- the same cold apply against a source that refuses filters (the fallback: the whole commit, depth 1);
- cold apply --full (the whole commit at depth 1: what apply fetched before);
- a warm cache, nothing to do, and a full clone.

Targets: a cold apply of may16's paths at most 5 % of a full clone's bytes (issue 27); any cold apply at
most 25 % and under 5 s from a local mirror (issue 2).
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

HOOK = r"""#!{python}
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE)
n = 0
while True:
    b = p.stdout.read(1 << 16)
    if not b:
        break
    n += len(b)
    sys.stdout.buffer.write(b)
sys.stdout.buffer.flush()
rc = p.wait()
with open({count!r}, "a") as f:
    f.write(f"{{n}} {{os.getcwd()}}\n")  # upload-pack runs in the repository it serves
sys.exit(rc)
"""


class Counter:
    def __init__(self, work: Path):
        self.count = work / "count"
        hook = work / "count-pack.py"
        hook.write_text(HOOK.format(python=sys.executable, count=str(self.count)))
        hook.chmod(0o755)
        self.hook = hook
        self.gitconfig = work / "gitconfig"

    def env(self, allow_filter: bool = True) -> dict:
        if self.count.exists():
            self.count.unlink()
        self.gitconfig.write_text(f"[uploadpack]\n\tpackObjectsHook = {self.hook}\n"
                                  f"\tallowFilter = {'true' if allow_filter else 'false'}\n")  # fmt: skip
        return {**os.environ, "GIT_CONFIG_GLOBAL": str(self.gitconfig)}

    def bytes(self, served: str) -> int:
        """Pack bytes sent by the repository at ``served`` (other transfers, e.g. cache -> tree, excluded)."""
        if not self.count.exists():
            return 0
        total = 0
        for line in self.count.read_text().splitlines():
            n, where = line.split(" ", 1)
            if Path(where).resolve() in (Path(served).resolve(), (Path(served) / ".git").resolve()):
                total += int(n)
        return total


def timed(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, r


def synthetic_upstream(work: Path) -> tuple[str, dict]:
    """A fixture upstream with a long history, plus pins/patches for it (the tests' builders)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import random

    from helpers import PatchMaker, git, make_upstream, write_pin, write_set

    up, sha = make_upstream(work / "upstream", history=2)
    rng = random.Random(0)
    # Grow history *before* the pin: rewrite the pinned commit on top of 200 commits of churn.
    git(up, "checkout", "-q", "--orphan", "churn")
    for i in range(200):
        (up / "data").mkdir(exist_ok=True)
        (up / "data" / f"blob{i % 20}.bin").write_bytes(rng.randbytes(64 * 1024))
        git(up, "add", "-A")
        git(up, "commit", "-q", "-m", f"churn {i}")
    git(up, "rm", "-rq", "data")
    git(up, "checkout", "-q", sha, "--", ".")
    git(up, "commit", "-q", "-m", "tiny")
    sha = git(up, "rev-parse", "HEAD").strip()
    git(up, "branch", "-q", "-f", "master", sha)
    pins = work / "pins"
    write_pin(pins, up, sha)
    m = PatchMaker(up, sha, work / "maker")
    m.edit("src/train_softmax.py", "default=1.0, help='weight decay mult", "default=10.0, help='weight decay mult")
    write_set(work / "patches", "mfn", 1, sha, [("0001-wd.patch", m.diff("wd mult 10"))])
    return str(up), {"MFNPATCH_PINS": str(pins), "MFNPATCH_PATCHES": str(work / "patches"), "_commit": sha[:7]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=os.environ.get("MFNPATCH_UPSTREAM"))
    ap.add_argument("--repeat", type=int, default=3, help="cold applies to time (median reported)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mfnpatch-bench-"))
    try:
        extra: dict = {}
        if args.source:
            source, label = str(Path(args.source).resolve()), "InsightFace (MFNPATCH_UPSTREAM)"
            commit = "4bc8132"
        else:
            source, extra = synthetic_upstream(work)
            commit = extra.pop("_commit")
            label = "synthetic upstream (200 commits of churn before the pin)"
        url = Path(source).as_uri()
        counter = Counter(work)
        base_env = {k: v for k, v in os.environ.items() if k != "MFNPATCH_UPSTREAM"} | extra

        series = ["--series", "mfn,py3"] if args.source else []
        widen_dir = "3rdparty" if args.source else "models"

        def apply(tag: str, *extra_args: str, allow_filter: bool = True, cache: str | None = None):
            env = counter.env(allow_filter) | {k: v for k, v in base_env.items() if k.startswith("MFNPATCH_")}
            env["MFNPATCH_CACHE"] = str(work / (cache or f"cache-{tag}"))
            cmd = [sys.executable, "-m", "mfnpatch", "apply", "--commit", commit, *series, "--source", url]
            cmd += ["--dest", str(work / f"tree-{tag}"), "--json", *extra_args]
            dt, r = timed(cmd, env)
            if r.returncode not in (0, 2):
                print(r.stderr, file=sys.stderr)
                raise SystemExit(1)
            return dt, counter.bytes(source), json.loads(r.stdout)

        cold = []
        cold_bytes = 0
        for i in range(args.repeat):
            dt, cold_bytes, _ = apply(f"cold{i}", "--paths", "src,deploy/*")  # may16's paths (recipe run's)
            cold.append(dt)
        sets_dt, sets_bytes, _ = apply("sets-only")
        widen_dt, widen_bytes, _ = apply("cold0", "--paths", widen_dir, cache="cache-cold0")
        fall_dt, fall_bytes, fall = apply("fallback", allow_filter=False)
        assert "refuses partial fetches" in (fall["fetch"]["note"] or ""), fall["fetch"]
        full_dt, full_bytes, _ = apply("full", "--full")
        warm_dt, warm_bytes, _ = apply("warm", cache="cache-cold0")
        again_dt, _, again = apply("warm", cache="cache-cold0")
        assert again["exit_code"] == 2, again

        clone_dt, r = timed(["git", "clone", "-q", "--mirror", url, str(work / "full.git")], counter.env())
        clone_bytes = counter.bytes(source)
        clone_note = "git clone --mirror over file://"
        if r.returncode != 0:
            # A snapshot that lacks some objects cannot be cloned whole: fall back to the size of its
            # packs, a lower bound of a full clone (the ratio below is then an upper bound).
            packs = sum(p.stat().st_size for p in Path(source).glob("**/objects/pack/*.pack"))
            clone_bytes, clone_note = packs, "source's packs (clone failed: incomplete source; lower bound)"
            clone_dt = float("nan")

        cold.sort()
        median = cold[len(cold) // 2]
        rows = [
            ("cold apply, may16's paths", cold_bytes, median, f"src, deploy/*; median of {len(cold)}"),
            ("cold apply, the sets' files only", sets_bytes, sets_dt, "the directories of the files they touch"),
            (f"widen by {widen_dir}/", widen_bytes, widen_dt, "--paths: only its blobs"),
            ("cold apply, filter refused", fall_bytes, fall_dt, "fallback: the whole commit, depth 1"),
            ("cold apply --full", full_bytes, full_dt, "depth 1 (apply before partial fetches)"),
            ("apply, new tree, warm cache", warm_bytes, warm_dt, "nothing from the source"),
            ("apply again (nothing to do)", 0, again_dt, "exit 2"),
            ("full clone", clone_bytes, clone_dt, clone_note),
        ]
        result = {
            "source": label,
            "rows": [{"what": w, "bytes": b, "seconds": s, "note": n} for w, b, s, n in rows],
            "ratio": cold_bytes / clone_bytes if clone_bytes else None,
        }
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        print(f"source: {label}")
        print(f"{'':32s} {'bytes':>14s} {'% of clone':>10s} {'wall s':>8s}  note")
        for w, b, s, n in rows:
            pct = f"{100 * b / clone_bytes:.1f}" if clone_bytes else "-"
            print(f"{w:32s} {b:14,d} {pct:>10s} {s:8.2f}  {n}")
        ratio = result["ratio"]
        ok = ratio is not None and ratio <= 0.05
        print(f"target: cold apply of may16's paths <= 5 % of a full clone's bytes: {'met' if ok else 'NOT met'} "
              f"({100 * ratio:.1f} %)")  # fmt: skip
        full_ratio = full_bytes / clone_bytes if clone_bytes else None
        print(f"target: a cold --full apply <= 25 %: {'met' if full_ratio and full_ratio <= 0.25 else 'NOT met'} "
              f"({100 * (full_ratio or 0):.1f} %)")  # fmt: skip
        print(f"target: apply from a local mirror < 5 s: {'met' if median < 5 else 'NOT met'} ({median:.2f} s)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
