"""``mfnpatch convert int8 DIR --data DATA``: calibrate (int8.py), write ncnn's int8 model, and measure what it costs.

The int8 model runs on this machine (ncnn's x86 int8 kernels) and, with ``--arm``, on each emulated CPU class,
whose int8 paths differ (a53: multiply-accumulate, a76: ``sdot``, max: ``smmla``). Every int8 row is measured
with ``convert evaluate``'s protocol against the reference (MXNet, or onnxruntime for an ONNX source): accuracy
on each verification set, and every image's cosine. int8 holds when its accuracy is within ``tolerance`` (the
user's, default 0.01) of the reference's on every set; only then does deploy.json list it among a target's
verified options. The layers that lose most are named: those whose own quantisation adds the most error (the
relative error of its output beyond its input's, on one face, against ncnn float32).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.deploy import contract
from mfnpatch.deploy.engines import blobs
from mfnpatch.deploy.int8 import calibrate, write_int8
from mfnpatch.deploy.layers import _errors
from mfnpatch.deploy.mxnet import FOLDED, ConvertError
from mfnpatch.deploy.ncnnparam import read_param
from mfnpatch.deploy.registry import INT8, TARGETS, Engine
from mfnpatch.deploy.verify import check_model_dir
from mfnpatch.finite import at_most, finite
from mfnpatch.fsutil import atomic_write_json

TOLERANCE = 0.01


@dataclass
class Int8Result:
    dir: str
    calibration: dict
    tolerance: float
    rows: list[dict] = field(default_factory=list)
    losing_layers: list[dict] = field(default_factory=list)
    holds: dict = field(default_factory=dict)  # engine -> within the tolerance on every set
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.holds) and all(self.holds.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed, "exit_code": self.exit_code}


def calibration_images(data: Path, n: int, source: str):
    """(N, 3, H, W) float32 faces to calibrate on: ``train`` (spread over DATA/train.rec) or a verification set."""
    import numpy as np

    from mfnpatch.datasets.images import decode_rgb
    from mfnpatch.datasets.recordio import RecordError
    from mfnpatch.datasets.scan import sample_images

    if source == "train":
        if not (Path(data) / "train.rec").is_file():
            raise ConvertError(f"{data}: no train.rec to calibrate on", hint="--calibrate-on lfw takes a verification "
                               "set's faces instead")  # fmt: skip
        try:
            enc = sample_images(Path(data), n)
            rgb = [decode_rgb(b) for b in enc]
        except (RecordError, ValueError, OSError) as e:
            raise ConvertError(f"{data}/train.rec: {getattr(e, 'message', e)}",
                               hint="mfnpatch data check DATA names what is wrong") from None  # fmt: skip
    else:
        from mfnpatch.deploy.evaluate import load_set

        s = load_set(Path(data), source, (112, 112))
        idx = sorted({(i * (len(s.images) - 1)) // max(1, n - 1) for i in range(n)})
        rgb = [s.images[i] for i in idx]
    return np.stack(rgb).transpose(0, 3, 1, 2).astype(np.float32)


def losing_layers(d: Path, probe, top: int = 5) -> list[dict]:
    """The quantised layers that add the most error on ``probe`` (1, 3, H, W), int8 against float32 here."""
    ref = blobs(Engine("ncnn", "folded"), d, probe)
    got = blobs(INT8, d, probe)
    layers = {x.name: x for x in read_param(Path(d) / "int8" / f"{FOLDED}.param").layers}
    err: dict[str, float] = {}
    out: list[dict] = []
    by = {p[0]: i for i, p in enumerate(got)}
    for x in layers.values():
        if x.type == "Split":
            for t in x.tops:
                err[t] = max([err.get(b, 0.0) for b in x.bottoms] or [0.0])
            continue
        if x.name not in by:
            continue
        rel, _ = _errors(got[by[x.name]][3], ref[by[x.name]][3])
        inp = max([err.get(b, 0.0) for b in x.bottoms] or [0.0])
        for t in x.tops:
            err[t] = rel
        if x.param(8):
            out.append({"layer": x.name, "type": x.type, "rel_error": round(rel, 5), "input_error": round(inp, 5),
                        "adds": round(rel - inp, 5)})  # fmt: skip
    return sorted(out, key=lambda r: -r["adds"])[:top]


def int8(d: Path, data: Path, sets: list[str], images: int = 200, source: str = "train",
         tolerance: float = TOLERANCE, arm: list[str] | None = None, arm_pairs: int = 20, threads: int = 1,
         on_progress=None, on_step=None) -> Int8Result:  # fmt: skip
    from mfnpatch.deploy.evaluate import evaluate

    say = on_step or (lambda s: None)
    t0 = time.perf_counter()
    d = Path(d)
    check_model_dir(d)
    contract.load(d)
    if not (0 < tolerance < 1):
        raise ConvertError(f"--tolerance {tolerance}: an accuracy difference between 0 and 1 (e.g. 0.01)")
    say(f"calibrating on {images} faces of {source} (ncnn float32 here, KL)")
    x = calibration_images(Path(data), images, source)
    table = calibrate(d, x, on_progress)
    write_int8(d, table)
    res = Int8Result(str(d), {"images": table.images, "from": source, "method": "kl (as ncnn2table)",
                              "table": str(d / "int8" / "table.json")}, tolerance)  # fmt: skip
    say("measuring int8 on the verification sets" + (f" and on {', '.join(arm)} (emulated)" if arm else ""))
    ev = evaluate(d, data, sets, [INT8], threads, on_progress, arm=arm, arm_pairs=arm_pairs,
                  arm_precisions=("int8",))  # fmt: skip
    for r in ev.rows:
        if r.engine == ev.reference:
            continue
        within = at_most(abs(r.delta if r.delta is not None else float("nan")), tolerance + 1e-12)
        res.rows.append({"set": r.set, "engine": r.engine, "pairs": r.pairs, "accuracy": r.accuracy,
                         "reference_accuracy": r.accuracy - (r.delta or 0.0), "delta": finite(r.delta),
                         "min_cosine": finite(r.min_cosine), "within": within, "sampled": r.sampled})  # fmt: skip
        res.holds[r.engine] = res.holds.get(r.engine, True) and within
    res.losing_layers = losing_layers(d, x[:1])
    _record(d, arm or [], res)
    res.seconds = round(time.perf_counter() - t0, 3)
    atomic_write_json(d / "int8" / "int8.json", res.to_dict())
    return res


def _record(d: Path, targets: list[str], res: Int8Result) -> None:
    """deploy.json: a target's int8 engine among its verified options only when it holds."""
    from mfnpatch.deploy.registry import arm_engines

    out, names = {}, set()
    for t in targets:
        e = next(e for e in arm_engines([t], int8=True) if e.precision == "int8")
        names.add(e.name)
        rows = [r for r in res.rows if r["engine"] == e.name]
        worst = min((r["min_cosine"] for r in rows if r["min_cosine"] is not None), default=None)
        tg = TARGETS[t]
        entry = {"engine": e.name, "options": f"int8 model (int8/), accuracy within {res.tolerance} of the reference",
                 "holds": bool(res.holds.get(e.name)), "min_cosine": worst,
                 "measured_on": "; ".join(f"{r['set']}: {r['sampled']}" for r in rows)}  # fmt: skip
        out[t] = {"isa": tg.isa, "qemu_cpu": tg.qemu_cpu, "note": tg.note,
                  "verified": [entry] if entry["holds"] else []}  # fmt: skip
    if out:
        contract.write(d, contract.with_targets(contract.load(d, against_models=False), out, frozenset(names)))
