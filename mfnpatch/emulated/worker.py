"""The worker the emulated aarch64 Python runs (``mfnpatch.emulator.Emulator.run``): one job, JSON on stdin; the
result, JSON, as the last line of stdout; progress lines (``done N/M``) before it. It imports only the standard
library, numpy and ncnn (from MFNPATCH_SITE), never mfnpatch: it runs in another interpreter, on another CPU.

Jobs:
  {"mode": "probe"}: what this CPU and ncnn build are (ncnn's cpu_support_arm_*, the auxv hwcaps decoded)
  {"mode": "embed", "param_path", "bin_path", "options", "threads", "input_path", "output_path", "input", "output"}:
      the output blob for every image of input_path (N, C, H, W float32 .npy), saved to output_path
  {"mode": "blobs", ..., "blobs": [names]}: every named blob for the first image, saved to output_path (.npz)
"""

import json
import os
import sys

sys.path.insert(0, os.environ["MFNPATCH_SITE"])

import ncnn  # noqa: E402
import numpy as np  # noqa: E402

# arm64 hwcaps (Linux's asm/hwcap.h): AT_HWCAP and AT_HWCAP2
HWCAP = {"fp": 0, "asimd": 1, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22}
HWCAP2 = {"i8mm": 13, "bf16": 14, "sve2": 1}


def probe():
    import ctypes
    import platform

    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    hw, hw2 = libc.getauxval(16), libc.getauxval(26)
    feats = {k: bool(hw >> b & 1) for k, b in HWCAP.items()} | {k: bool(hw2 >> b & 1) for k, b in HWCAP2.items()}
    return {
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "ncnn": ncnn.__version__,
        "ncnn_cpu": {n: bool(getattr(ncnn, f"cpu_support_arm_{n}")()) for n in ("neon", "vfpv4", "asimdhp")},
        "hwcap": hex(hw),
        "hwcap2": hex(hw2),
        "features": feats,
    }


def net_for(job):
    net = ncnn.Net()
    net.opt.num_threads = int(job.get("threads", 1))
    for k, v in job.get("options", {}).items():
        if hasattr(net.opt, k):
            setattr(net.opt, k, bool(v))
    if net.load_param(job["param_path"]) != 0 or net.load_model(job["bin_path"]) != 0:
        raise SystemExit(f"ncnn cannot load {job['param_path']}")
    return net


def extract(net, name_in, x, names):
    ex = net.create_extractor()
    arr = np.ascontiguousarray(x, dtype=np.float32)  # kept referenced while ncnn.Mat borrows it
    ex.input(name_in, ncnn.Mat(arr).clone())
    out = []
    for n in names:
        rc, m = ex.extract(n)
        if rc != 0:
            raise SystemExit(f"ncnn failed to compute {n} (error {rc})")
        out.append(np.array(m).copy())
    return out


def main():
    job = json.loads(sys.stdin.read())
    mode = job["mode"]
    if mode == "probe":
        result = probe()
    elif mode == "embed":
        net = net_for(job)
        x = np.load(job["input_path"])
        outs = []
        for i in range(len(x)):
            outs.append(extract(net, job["input"], x[i], [job["output"]])[0].reshape(-1))
            print(f"done {i + 1}/{len(x)}", flush=True)
        np.save(job["output_path"], np.stack(outs))
        result = {"images": len(x)}
    elif mode == "blobs":
        net = net_for(job)
        x = np.load(job["input_path"])
        vals = extract(net, job["input"], x[0], job["blobs"])
        np.savez(job["output_path"], **{f"b{i}": v for i, v in enumerate(vals)})
        result = {"blobs": len(vals)}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
