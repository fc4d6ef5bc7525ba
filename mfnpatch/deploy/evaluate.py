"""`mfnpatch convert evaluate DIR --data DATA`: the converted models measured on the verification sets they were
trained against, through every engine, with the pinned ``verification.py``'s protocol (10 folds, with flip).

Rows: MXNet (the slim checkpoint: the reference), onnxruntime, ncnn folded and unfolded with ncnn's fp16
options off (float32) and on (what ARMv8.2 phones run; ``engines.fp16_support`` says what this CPU honours),
and the denormal comparison: a model converted with ``--flush-denormals`` is measured with its original
weights too (``unflushed/``); a model that has denormal weights is measured flushed too (in memory).

An engine holds when, on every set, its accuracy is within ``accuracy_tolerance`` of MXNet's (and at least one
pair) and every image's embedding has a cosine of at least ``cosine_tolerance`` with MXNet's. An engine that
does not hold is taken apart layer by layer on the image it got most wrong (``layers.first_divergence``).

Besides ``evaluate.json``, the measured part of the deployment contract goes into ``deploy.json``: cosine
thresholds per set (best accuracy; FAR 1e-3 and 1e-4 with their TAR) on MXNet's one-embedding-per-image
scores, and golden inputs (``golden/*.png``) with MXNet's embeddings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mfnpatch.datasets.bins import BinError, fold_problem, load_verification
from mfnpatch.deploy import contract
from mfnpatch.deploy.denormals import count as count_denormals
from mfnpatch.deploy.denormals import flush
from mfnpatch.deploy.engines import Images, blobs, embed, embeddings_mxnet, fp16_support, mxnet_blobs
from mfnpatch.deploy.layers import LAYER_TOLERANCE, first_divergence
from mfnpatch.deploy.mxnet import FOLDED, ConvertError, _mx
from mfnpatch.deploy.onnxfile import load_onnx
from mfnpatch.deploy.protocol import app_thresholds, lfw_protocol, pair_cosines
from mfnpatch.deploy.registry import DENORMALS_FLUSHED, DENORMALS_KEPT, HOST_ENGINES, Engine, lookup, reference
from mfnpatch.deploy.verify import check_model_dir, source_of
from mfnpatch.finite import at_least, at_most, lowest
from mfnpatch.fsutil import atomic_write, atomic_write_json

SETS = ("lfw", "cfp_fp", "agedb_30")
ACCURACY_TOLERANCE = 0.002  # |accuracy - MXNet's|, and never less than one pair of the set
COSINE_TOLERANCE = {"fp32": 0.9999, "fp16": 0.999}  # every image's embedding against MXNet's
MXNET_BATCH = 1  # MXNet's CPU engine is fastest at batch 1 here (32: half the images/s, measured)
GOLDEN_PER_SET = 2


@dataclass
class Row:
    set: str
    engine: str
    pairs: int
    accuracy: float
    std: float
    threshold: float  # squared distance, mean of the folds' (as verification.py chooses them)
    threshold_cosine: float
    xnorm: float
    delta: float | None = None  # accuracy minus the reference's
    min_cosine: float | None = None  # the lowest cosine of an image's embedding against the reference's
    holds: bool = True
    why: str = ""
    seconds: float = 0.0
    images: int = 0
    images_per_s: float = 0.0
    reference: str = "mxnet"
    sampled: str = ""  # an emulated engine's sample of the set ("40 of 6000 pairs (80 images, unflipped)")
    emulated: bool = False  # seconds are emulation's cost, not a phone's latency


@dataclass
class EvaluateResult:
    dir: str
    data: str
    sets: list[dict] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    tolerance: dict = field(default_factory=dict)
    fp16: dict = field(default_factory=dict)
    denormals: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    divergence: dict = field(default_factory=dict)  # engine -> layers.Divergence (for engines that do not hold)
    outside: list[str] = field(default_factory=list)  # engines that do not hold
    thresholds: dict = field(default_factory=dict)
    golden: list[dict] = field(default_factory=list)
    threads: int = 1
    seconds: float = 0.0
    reference: str = "mxnet"  # the engine every other is judged against (onnxruntime for an ONNX source)

    @property
    def passed(self) -> bool:
        return not self.outside

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed, "exit_code": self.exit_code}


# --------------------------------------------------------------------------------------------
# The verification sets, decoded as the pinned load_bin decodes them


@dataclass
class LoadedSet:
    name: str
    path: str
    issame: list[bool]
    images: Any  # numpy uint8 (2 x pairs, 112, 112, 3), RGB
    sha256: str

    @property
    def pairs(self) -> int:
        return len(self.issame)


def parse_sets(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConvertError(f"--sets {text!r}: name at least one verification set, e.g. lfw,cfp_fp,agedb_30")
    for n in names:
        if not n.replace("_", "").isalnum():
            raise ConvertError(f"--sets: {n!r} is not a set name (letters, digits and _: lfw, cfp_fp, agedb_30)")
    return list(dict.fromkeys(names))


def load_set(data_dir: Path, name: str, size: tuple[int, int]) -> LoadedSet:
    """``DATA/<name>.bin`` read with the restricted unpickler and decoded with MXNet's ``imdecode`` (RGB), as the
    pinned ``load_bin`` does; every fault is a ConvertError naming the file and the image."""
    import numpy as np

    mx = _mx()
    path = Path(data_dir) / f"{name}.bin"
    hint = f"convert evaluate reads DATA/<set>.bin for each of --sets; is {data_dir} the training data directory?"
    try:
        vs = load_verification(path)
    except BinError as e:
        raise ConvertError(e.message, hint=e.hint or hint) from None
    if len(vs.images) != 2 * vs.pairs:
        raise ConvertError(f"{path}: {len(vs.images)} images for {vs.pairs} pairs (a verification set has two each)")
    problem = fold_problem(vs.issame)
    if problem:
        raise ConvertError(f"{path}: {problem}", hint="mfnpatch data check names what else is wrong with the set")
    out = np.empty((len(vs.images), size[0], size[1], 3), np.uint8)
    for i, b in enumerate(vs.images):
        try:
            img = mx.image.imdecode(b).asnumpy()
        except Exception as e:  # MXNet raises MXNetError on undecodable bytes
            raise ConvertError(f"{path}: image {i} does not decode ({str(e).splitlines()[0][:120]})") from None
        if img.shape != (size[0], size[1], 3):
            raise ConvertError(
                f"{path}: image {i} is {img.shape[1]}x{img.shape[0]}x{img.shape[2] if img.ndim == 3 else 1}, "
                f"the model takes {size[1]}x{size[0]}x3",
                hint="verification images are aligned 112x112 crops (mfnpatch data build makes them)",
            )
        out[i] = img
    return LoadedSet(name, str(path), list(vs.issame), out, vs.sha256)


# --------------------------------------------------------------------------------------------
# Running one engine over a set


@dataclass
class _Model:
    """What one row runs: an engine on a model directory's files (or on MXNet weights in memory)."""

    engine: Engine
    dir: Path
    mxnet: tuple | None = None  # (sym, arg, aux)

    @property
    def name(self) -> str:
        return self.engine.name

    def embed(self, images: Images, threads: int, on_done=None):
        if self.engine.kind == "mxnet":
            assert self.mxnet is not None
            sym, arg, aux = self.mxnet
            return embeddings_mxnet(sym, arg, aux, images, batch=MXNET_BATCH, on_done=on_done)
        return embed(self.engine, self.dir, images, threads, on_done)

    def blobs(self, x1) -> list:
        return blobs(self.engine, self.dir, x1)


def _models(d: Path, ref: Engine, engines: list[Engine], mx_weights, denormals) -> list[_Model]:
    """The reference first, then the engines asked for, then the denormal comparison the model calls for."""
    out = [_Model(ref, d, mxnet=mx_weights)]
    out += [_Model(e, d) for e in engines]
    if mx_weights is None:
        return out
    sym, arg, aux = mx_weights
    kept = d / "unflushed"
    if (kept / "mxnet-0000.params").is_file() and (kept / f"{FOLDED}.param").is_file():
        ksym, karg, kaux = _mx().model.load_checkpoint(str(kept / "mxnet"), 0)
        out.append(_Model(DENORMALS_KEPT[0], d, mxnet=(ksym, karg, kaux)))
        out.append(_Model(DENORMALS_KEPT[1], d))
    elif denormals.below:
        out.append(_Model(DENORMALS_FLUSHED, d, mxnet=(sym, flush(arg), flush(aux))))
    return out


def evaluate(
    model_dir: Path,
    data_dir: Path,
    sets: list[str] | None = None,
    engines: list[str] | list[Engine] | None = None,
    threads: int = 1,
    on_progress: Callable[[str, int, int], None] | None = None,
    arm: list[str] | None = None,
    arm_pairs: int = 20,
    arm_precisions: tuple[str, ...] | None = None,
) -> EvaluateResult:
    """Every engine on every set; writes ``evaluate.json`` and the measured part of ``deploy.json``. ``engines``:
    records of the registry, or their names (default: every engine this machine runs for the model's source)."""
    import numpy as np

    t0 = time.perf_counter()
    d = Path(model_dir)
    check_model_dir(d)
    deal = contract.load(d)  # a missing, hand-edited or malformed contract stops here, before any work
    sets = list(sets or SETS)
    source = "onnx" if source_of(d) else "mxnet"
    chosen = [e if isinstance(e, Engine) else lookup([e], source)[0] for e in engines] if engines \
        else list(HOST_ENGINES[source])  # fmt: skip
    if threads < 1:
        raise ConvertError(f"--threads {threads}: at least 1")
    ref = reference(source)
    if source == "onnx":  # the PyTorch lineage: onnxruntime on the converted graph is the reference; one ncnn model
        from onnx import numpy_helper

        mx_weights = None
        chosen = [e for e in chosen if e.kind == "ncnn" and e.graph == "folded"]
        weights = {i.name: numpy_helper.to_array(i) for i in load_onnx(d / "model.onnx").graph.initializer}
        dn = count_denormals({k: v for k, v in weights.items() if v.dtype.kind == "f"})
    else:
        mx_weights = _mx().model.load_checkpoint(str(d / "mxnet"), 0)
        dn = count_denormals({**mx_weights[1], **mx_weights[2]})
    size = (deal.input.shape[2], deal.input.shape[3])
    loaded = [load_set(Path(data_dir), name, size) for name in sets]  # all read before any engine runs
    res = EvaluateResult(str(d), str(data_dir), threads=threads)
    res.reference = ref.name
    res.sets = [{"name": s.name, "path": s.path, "pairs": s.pairs, "sha256": s.sha256} for s in loaded]
    res.tolerance = {"accuracy": ACCURACY_TOLERANCE,
                     "accuracy_rule": f"|accuracy - {ref.name}'s| <= max(0.002, 1 pair)",
                     "cosine": COSINE_TOLERANCE, "layer_rel_error": LAYER_TOLERANCE}  # fmt: skip
    res.fp16 = asdict(fp16_support())
    res.denormals = {"weights": dn.weights, "below_1e-30": dn.below, "denormal": dn.denormal,
                     "flushed_at_conversion": (d / "unflushed").is_dir()}  # fmt: skip
    models = _models(d, ref, chosen, mx_weights, dn)
    res.engines = [m.name for m in models]
    refs: dict[Engine, dict[str, tuple]] = {}  # reference engine -> set -> (embeddings, row)
    worst: dict[Engine, tuple[float, str, int]] = {}  # engine -> (cosine, set, image) of its worst image
    for s in loaded:
        for m in models:
            embs, row = _measure(m, s, threads, on_progress)
            if m.engine == ref:
                _refuse_nonfinite_reference(m.name, s, embs)
            refs.setdefault(m.engine, {})[s.name] = (embs, row)
            against = judged_against(m.engine, ref)
            if against is not None:
                row.reference = against.name
                ref_embs, ref_row = refs[against][s.name]
                _judge(row, embs, ref_embs, ref_row.accuracy, "fp16" if m.engine.half else "fp32")
                cos = _image_cosines(embs[0], ref_embs[0])
                i = int(np.argmin(np.where(np.isfinite(cos), cos, -np.inf)))  # a NaN image is the worst
                if m.engine not in worst or not (cos[i] >= worst[m.engine][0]):
                    worst[m.engine] = (float(cos[i]), s.name, i)
            res.rows.append(row)
    if arm:
        models += _arm_rows(d, ref, arm, arm_pairs, loaded, refs, worst, res, on_progress, arm_precisions)
    outside = list(dict.fromkeys(m.engine for m in models for r in res.rows if r.engine == m.name and not r.holds))
    res.outside = [e.name for e in outside]
    for e in outside:
        m = next(x for x in models if x.engine == e)
        if e.kind == "mxnet":
            continue  # weights changed on purpose (denormals): there is no conversion to take apart
        _, set_name, i = worst[e]
        if mx_weights is None:
            res.divergence[e.name] = {
                "probe": f"{set_name} image {i}",
                "text": "no layer-by-layer probe for a model "
                "converted from ONNX (pnnx renames the blobs); its worst image is named",
            }
            continue
        s = next(x for x in loaded if x.name == set_name)
        x1 = Images(s.images).batch(i, i + 1)
        div = first_divergence(
            mxnet_blobs(mx_weights[0], mx_weights[1], mx_weights[2], x1),
            m.blobs(x1),
            LAYER_TOLERANCE["fp16" if e.half else "fp32"],
        )
        res.divergence[e.name] = (
            (div.to_dict() | {"probe": f"{set_name} image {i}", "text": div.line()})
            if div
            else {
                "probe": f"{set_name} image {i}",
                "text": "every layer agrees with MXNet on the probe image: the difference is in the embeddings' "
                "comparison, not in one layer",
            }
        )
    _measure_contract(d, deal, loaded, refs[ref], ref.name, res)
    if arm:
        _record_targets(d, arm, res)
    res.seconds = round(time.perf_counter() - t0, 3)
    atomic_write_json(d / "evaluate.json", res.to_dict())
    return res


def _arm_rows(d: Path, ref: Engine, targets: list[str], pairs: int, loaded: list[LoadedSet], refs: dict,
              worst: dict, res: EvaluateResult, on_progress, precisions=None) -> list[_Model]:  # fmt: skip
    """The ARM engines of ``targets`` on a sample of each set (armeval), each row judged against the reference's
    embeddings of the same images; their worst images noted for the layer probe."""
    import numpy as np

    from mfnpatch.deploy import armeval
    from mfnpatch.deploy.arm import workers
    from mfnpatch.deploy.registry import arm_engines

    engines = [e for e in arm_engines(targets, int8=precisions is not None and "int8" in precisions)
               if precisions is None or e.precision in precisions]  # fmt: skip
    sampled = armeval.samples(loaded, pairs)
    got = armeval.run_arm(d, engines, sampled, workers(), on_progress)
    for e in engines:
        for s in sampled:
            embs, seconds = got[(e, s.set)]
            ref_sub, ref_p = armeval.reference_on(s, refs[ref][s.set][0][0])
            p = lfw_protocol(embs, embs, s.issame)
            row = Row(s.set, e.name, len(s.pairs), p.accuracy, p.std, p.threshold, p.threshold_cosine, p.xnorm,
                      seconds=round(seconds, 3), images=len(s.rows), images_per_s=round(len(s.rows) / max(seconds,
                      1e-9), 2), reference=ref.name, sampled=s.said(), emulated=True)  # fmt: skip
            _judge(row, [embs], [ref_sub], ref_p.accuracy, "fp16" if e.half else "fp32")
            cos = _image_cosines(embs, ref_sub)
            i = int(np.argmin(np.where(np.isfinite(cos), cos, -np.inf)))
            if e not in worst or not (cos[i] >= worst[e][0]):
                worst[e] = (float(cos[i]), s.set, s.rows[i])
            res.rows.append(row)
    res.engines += [e.name for e in engines]
    return [_Model(e, d) for e in engines]


def _record_targets(d: Path, targets: list[str], res: EvaluateResult) -> None:
    """deploy.json's targets: each CPU class's accuracy on the sampled pairs, per set and engine."""
    from mfnpatch.deploy.registry import TARGETS, arm_engines
    from mfnpatch.finite import finite

    out: dict[str, dict] = {}
    for t in targets:
        acc: dict[str, list] = {}
        names = {e.name for e in arm_engines([t], int8=True)}
        for r in res.rows:
            if r.emulated and r.engine in names:
                acc.setdefault(r.set, []).append({"engine": r.engine, "sampled": r.sampled, "accuracy": r.accuracy,
                                                  "reference_accuracy": r.accuracy - (r.delta or 0.0),
                                                  "min_cosine": finite(r.min_cosine), "holds": r.holds})  # fmt: skip
        tg = TARGETS[t]
        out[t] = {"isa": tg.isa, "qemu_cpu": tg.qemu_cpu, "note": tg.note, "accuracy": acc}
    contract.write(d, contract.with_targets(contract.load(d, against_models=False), out))


def judged_against(e: Engine, ref: Engine) -> Engine | None:
    """The engine a row is judged against: the original weights' ncnn model against the original weights' MXNet,
    every other against the reference; the reference itself against nothing."""
    if e == ref:
        return None
    return DENORMALS_KEPT[0] if e == DENORMALS_KEPT[1] else ref


def _measure(m: _Model, s: LoadedSet, threads: int, on_progress) -> tuple[list, Row]:
    """One engine on one set: the embeddings of every image and of its flip, and the protocol's row."""
    label, total, half = f"{s.name} · {m.name}", 2 * len(s.images), len(s.images)
    if on_progress:
        on_progress(label, 0, total)
    t = time.perf_counter()
    embs = []
    for k, view in enumerate((Images(s.images), Images(s.images, flip=True))):
        cb = None
        if on_progress:
            cb = lambda n, before=k * half: on_progress(label, before + n, total)  # noqa: E731
        embs.append(m.embed(view, threads, cb))
    seconds = time.perf_counter() - t
    p = lfw_protocol(embs[0], embs[1], s.issame)
    row = Row(s.name, m.name, s.pairs, p.accuracy, p.std, p.threshold, p.threshold_cosine, p.xnorm,
              seconds=round(seconds, 3), images=total, images_per_s=round(total / max(seconds, 1e-9), 1))  # fmt: skip
    return embs, row


def _image_cosines(a, b):
    import numpy as np

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN or inf embedding gives NaN: judged, not warned
        return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-24)


def _nonfinite(embs) -> int:
    import numpy as np

    return int(sum((~np.isfinite(np.asarray(e))).any(axis=1).sum() for e in embs))


def _judge(row: Row, embs, ref_embs, ref_accuracy: float, precision: str) -> None:
    """Whether an engine's row holds against the reference's: a NaN or infinite value anywhere (an embedding, a
    cosine, an accuracy) never holds."""
    cos = lowest(float(_image_cosines(e, r).min()) for e, r in zip(embs, ref_embs, strict=True))
    row.delta = row.accuracy - ref_accuracy
    row.min_cosine = cos
    acc_tol = max(ACCURACY_TOLERANCE, 1.0 / row.pairs)
    cos_tol = COSINE_TOLERANCE[precision]
    why = []
    bad = _nonfinite(embs)
    if bad:
        why.append(f"{bad} of its embeddings hold NaN or infinity")
    if not at_most(abs(row.delta), acc_tol + 1e-12):
        why.append(f"accuracy {row.accuracy:.5f} is {row.delta:+.5f} from MXNet's (tolerance {acc_tol:.5f})")
    if not at_least(cos, cos_tol):
        why.append(f"an embedding's cosine with MXNet's is {cos:.5f} (tolerance {cos_tol})")
    row.holds = not why
    row.why = "; ".join(why)


def _refuse_nonfinite_reference(engine: str, s: LoadedSet, embs) -> None:
    """The reference computes NaN or infinity: nothing can be judged against it, and no contract is measured."""
    bad = _nonfinite(embs)
    if bad:
        raise ConvertError(
            f"{engine}'s embeddings of {bad} of the {2 * len(s.images)} images of {s.name} (with flips) hold NaN "
            "or infinity: the model cannot be evaluated, and no threshold is written",
            hint="its weights or its input are broken: convert ncnn refuses NaN weights; convert again from a "
            "checkpoint of a run whose loss stayed finite",
        )


# --------------------------------------------------------------------------------------------
# The measured part of the deployment contract


def _measure_contract(d: Path, deal, loaded: list[LoadedSet], refs: dict, ref_engine: str, res: EvaluateResult) -> None:
    """Thresholds on MXNet's one-embedding-per-image cosines (no flip: what an app computes), per set and over
    all pairs; golden inputs from each set with MXNet's embedding. Written only when MXNet's rows exist."""
    import cv2
    import numpy as np

    per_set, all_cos, all_same = {}, [], []
    for s in loaded:
        cos = pair_cosines(refs[s.name][0][0])  # MXNet's embeddings of the unflipped images
        per_set[s.name] = app_thresholds(cos, s.issame).to_dict()
        all_cos.append(cos)
        all_same.extend(s.issame)
    thresholds = {
        "measured_with": f"{'MXNet' if ref_engine == 'mxnet' else ref_engine}, one embedding per image (no flip), "
        "L2-normalised; a pair is the same person when its cosine is above the threshold",
        "sets": per_set,
        "all": app_thresholds(np.concatenate(all_cos), all_same).to_dict() if len(loaded) > 1 else None,
    }
    golden, files = [], {}
    for s in loaded:
        embs = refs[s.name][0][0]
        for i in range(min(GOLDEN_PER_SET, len(s.images))):
            rel = f"golden/{s.name}-{i:05d}.png"
            ok, png = cv2.imencode(".png", cv2.cvtColor(s.images[i], cv2.COLOR_RGB2BGR))
            if not ok:
                raise ConvertError(f"could not encode {rel}")
            files[rel] = png.tobytes()
            embedding = [float(v) for v in embs[i]]
            golden.append({"image": rel, "set": s.name, "index": i, "embedding": embedding,
                           "min_cosine": COSINE_TOLERANCE["fp16"]})  # fmt: skip
    for rel, data in files.items():
        (d / rel).parent.mkdir(exist_ok=True)
        atomic_write(d / rel, data)
    updated = contract.measured(deal, thresholds, golden)
    contract.write(d, updated)  # last: a contract never names a golden file that is not there
    res.thresholds = thresholds
    res.golden = [{k: v for k, v in g.items() if k != "embedding"} for g in golden]
