"""What emulating a phone's CPU costs: images per CPU-second for each ARM engine, and the ARM check the smoke
profile's convert stage makes (convert ncnn --arm all --arm-inputs 4), timed whole.

    MFNPATCH_ARM_ENV=DIR python benchmarks/bench_arm.py [--model PREFIX,EPOCH] [--images 8]

Default model: InsightFace's model-zoo MobileFaceNet in ../shared/data (else a MobileFaceNet-shaped network with
random weights: the same layers, so the same cost). Emulated time says nothing about a phone's latency.

Target (issue: what the phone computes): the smoke profile's ARM check in at most 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "support"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="PREFIX,EPOCH (default: the model-zoo MobileFaceNet, else random weights)")
    ap.add_argument("--images", type=int, default=8, help="inputs per engine")
    args = ap.parse_args()
    if not os.environ.get("MFNPATCH_ARM_ENV"):
        print("set MFNPATCH_ARM_ENV to an arm64-qemu environment (mfnpatch env create arm64-qemu --prefix DIR)")
        return 2
    import realdata

    from mfnpatch.deploy.arm import workers
    from mfnpatch.deploy.convert import convert_ncnn
    from mfnpatch.deploy.engines import embed
    from mfnpatch.deploy.registry import ARM_TARGETS, arm_engines
    from mfnpatch.deploy.verify import test_inputs

    with tempfile.TemporaryDirectory() as tmp:
        spec = args.model
        if spec is None and Path(f"{realdata.MODEL}-0000.params").is_file():
            spec = f"{realdata.MODEL},0"
        if spec is None:
            import mxnet as mx
            from mfn_symbol import save_checkpoint

            spec = save_checkpoint(mx, f"{tmp}/m", 1, classes=None)
        d = Path(tmp) / "ncnn"
        convert_ncnn(spec, d)
        x = test_inputs(args.images)
        os.environ["MFNPATCH_ARM_WORKERS"] = "1"  # one emulator: CPU seconds are wall seconds
        print(f"model: {spec}; {args.images} inputs per engine, one emulator process")
        print(f"{'engine':36s} {'s/image':>8s} {'images/CPU-s':>13s}")
        for e in arm_engines(ARM_TARGETS):
            t0, c0 = time.perf_counter(), os.times()
            embed(e, d, x)
            c1 = os.times()
            cpu = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
            print(
                f"{e.name:36s} {cpu / args.images:8.2f} {args.images / cpu:13.2f}   "
                f"(wall {time.perf_counter() - t0:.1f} s, start-up included)"
            )
        del os.environ["MFNPATCH_ARM_WORKERS"]
        t0 = time.perf_counter()
        d2 = Path(tmp) / "smoke"
        r = convert_ncnn(spec, d2, arm=list(ARM_TARGETS), arm_inputs=4)
        took = time.perf_counter() - t0
        masked = {t: [m["layer"] for m in c["masked"]] for t, c in (r.arm or {}).items()}
        print()
        print(
            f"the smoke profile's ARM check (convert ncnn --arm all --arm-inputs 4, {workers()} emulators at once): "
            f"{took:.1f} s, conversion included; masked: {masked}"
        )
        print(f"target: at most 600 s on 2 cores: {'met' if took <= 600 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
