"""Bytes transferred and wall time: a cold `mfnpatch apply` against a full `git clone` of the same source.

    python benchmarks/bench_apply.py [--source PATH]   (default: $MFNPATCH_UPSTREAM, else a synthetic upstream)

Bytes are counted exactly where they leave the source: git's upload-pack runs pack-objects through
``uploadpack.packObjectsHook`` (set in a temporary global git config), and the hook counts the pack
bytes it forwards. Both measurements go over file://, side by side in one run.

Targets (issue 2): a cold apply transfers at most 25 % of a full clone's bytes, and apply from a
local mirror takes under 5 s.
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
        self.gitconfig = work / "gitconfig"
        self.gitconfig.write_text(f"[uploadpack]\n\tpackObjectsHook = {hook}\n")

    def env(self) -> dict:
        if self.count.exists():
            self.count.unlink()
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

        cold = []
        cold_bytes = 0
        for i in range(args.repeat):
            env = counter.env() | {k: v for k, v in base_env.items() if k.startswith("MFNPATCH_")}
            env["MFNPATCH_CACHE"] = str(work / f"cache{i}")
            cmd = [sys.executable, "-m", "mfnpatch", "apply", "--commit", commit, "--source", url]
            cmd += ["--dest", str(work / f"tree{i}"), "--json"]
            dt, r = timed(cmd, env)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            cold.append(dt)
            cold_bytes = counter.bytes(source)
        env = counter.env() | {k: v for k, v in base_env.items() if k.startswith("MFNPATCH_")}
        env["MFNPATCH_CACHE"] = str(work / "cache0")
        warm_cmd = [sys.executable, "-m", "mfnpatch", "apply", "--commit", commit, "--source", url]
        warm_cmd += ["--dest", str(work / "warm"), "--json"]
        warm_dt, r = timed(warm_cmd, env)
        warm_bytes = counter.bytes(source)
        again_dt, r2 = timed(warm_cmd, env)
        assert r2.returncode == 2, r2.stderr

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
            ("cold apply (empty cache)", cold_bytes, median, f"median of {len(cold)}"),
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
        ok_bytes = result["ratio"] is not None and result["ratio"] <= 0.25
        print(
            f"target: cold apply <= 25 % of a full clone's bytes: {'met' if ok_bytes else 'NOT met'} "
            f"({100 * result['ratio']:.1f} %)"
        )
        print(f"target: apply from a local mirror < 5 s: {'met' if median < 5 else 'NOT met'} ({median:.2f} s)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
