"""A fix, not only a finding: the layers an emulated phone CPU computes wrongly, masked in the ncnn model.

ncnn reads a per-layer feature mask from a layer's param ``31=`` (``get_masked_option`` in ncnn's
``src/net.cpp``): bit 0 turns fp16 arithmetic off for that layer only, bit 1 fp16 storage, bit 2 bf16. On an
ARMv8.2 core ncnn computes in fp16 by default, and its stride-2 3x3 depthwise kernel
(``convdw3x3s2_pack8_fp16sa_neon``) reads two rows of its 2-wide tail from row 0: the last output columns are
wrong whenever the output width mod 4 is 2 or 3, which MobileFaceNet at 112x112 hits at widths 14 and 7.

``check_target`` runs the target's ``app`` engine (ncnn's defaults, what an app gets) on test inputs against ncnn
float32 on this machine. When an embedding falls below the tolerance it takes the worst input apart layer by
layer on both, names the first layer whose error is both over the layer tolerance and well over the error of
its inputs (the layer that *makes* the error, not one that carries it), masks it with the least bits that fix
it, and repeats until no such layer is left; then checks the embeddings again. Masking is written into the
folded model's ``.param`` (nothing else changes: the other CPUs ignore a mask of a precision they do not use).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from mfnpatch.deploy.engines import blobs, embed
from mfnpatch.deploy.layers import LAYER_TOLERANCE, _errors
from mfnpatch.deploy.mxnet import ConvertError
from mfnpatch.deploy.ncnnparam import read_param
from mfnpatch.deploy.registry import TARGETS, Engine
from mfnpatch.deploy.verify import compare, test_inputs
from mfnpatch.finite import at_least
from mfnpatch.fsutil import atomic_write

FEATMASK = "31"  # ncnn's param id of a layer's feature mask
BITS = {1: "fp16 arithmetic", 2: "fp16 storage", 4: "bf16"}
JUMP = 3.0  # a layer makes an error when its own is this many times its inputs' (or over the tolerance from clean)
COSINE = 0.999  # every embedding against ncnn float32 on this machine (evaluate's fp16 tolerance)
MAX_MASKED = 12


@dataclass
class Masked:
    layer: str
    type: str
    featmask: int
    why: str
    rel_error: float
    input_error: float


@dataclass
class TargetCheck:
    target: str
    engine: str
    options: str
    inputs: int
    min_cosine_before: float
    min_cosine: float
    holds: bool
    masked: list[Masked] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def culprit(reference: list, produced: list, layers: dict, tolerance: float) -> tuple[str, str, float, float] | None:
    """The first layer that makes an error: (layer, type, its relative error, its inputs' largest), or None.
    ``reference``/``produced``: (layer, type, blob, value) of the same param file, in file order."""
    err: dict[str, float] = {}
    by_layer = {p[0]: i for i, p in enumerate(produced)}
    for layer in layers.values():  # file order: a Split passes its input's error on to its outputs
        if layer.type == "Split":
            for t in layer.tops:
                err[t] = max([err.get(b, 0.0) for b in layer.bottoms] or [0.0])
            continue
        if layer.name not in by_layer:
            continue
        i = by_layer[layer.name]
        rel, _ = _errors(produced[i][3], reference[i][3])
        inp = max([err.get(b, 0.0) for b in layer.bottoms] or [0.0])
        for t in layer.tops:
            err[t] = rel
        if rel > tolerance and rel > JUMP * max(inp, tolerance / 10):
            return layer.name, layer.type, rel, inp
    return None


def _options(e: Engine) -> str:
    o = e.ncnn_options()
    if not o:
        return "ncnn's defaults, as an app gets them" + (
            " (fp16 storage and arithmetic on: this CPU has asimdhp)" if "asimdhp" in TARGETS[e.target].features
            else " (fp16 arithmetic unavailable: asimdhp missing)")  # fmt: skip
    return ", ".join(f"{k}={'on' if v else 'off'}" for k, v in o.items())


def check_target(d: Path, target: str, n: int = 8, fix: bool = True, on_step=None, inputs=None) -> TargetCheck:
    """The ``app`` engine of ``target`` on ``n`` test inputs (``inputs``: these instead) against ncnn float32 here;
    masked until it holds when ``fix``. Writes the masks into ``d``'s folded param."""
    say = on_step or (lambda s: None)
    e = Engine("ncnn", "folded", "app", target=target)
    x86 = Engine("ncnn", "folded")
    param = Path(d) / e.files()[0]
    inputs = test_inputs(n) if inputs is None else inputs
    n = len(inputs)
    say(f"{target}: {n} inputs through ncnn's ARM kernels under emulation")
    ref = embed(x86, d, inputs)
    got = embed(e, d, inputs)
    first = compare(ref, got)
    res = TargetCheck(target, e.name, _options(e), n, first["min_cosine"], first["min_cosine"],
                      at_least(first["min_cosine"], COSINE))  # fmt: skip
    if res.holds or not fix:
        return res
    import numpy as np

    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    probe = inputs[int(np.argmin(cos)) : int(np.argmin(cos)) + 1]
    reference = blobs(x86, d, probe)
    tol = LAYER_TOLERANCE["fp16"]
    masks: dict[str, int] = {}
    pf = read_param(param)
    for x in pf.layers:  # masks already in the model (an earlier target's) stay
        if x.param(FEATMASK):
            masks[x.name] = int(x.param(FEATMASK) or 0)
    while len(masks) <= MAX_MASKED:
        pf = read_param(param)
        hit = culprit(reference, blobs(e, d, probe), {x.name: x for x in pf.layers}, tol)
        if hit is None:
            break
        name, kind, rel, inp = hit
        bits = masks.get(name, 0)
        nxt = next((b for b in (1, 3, 7) if b > bits), None)
        if nxt is None:
            res.note = f"{name} still diverges with fp16 and bf16 masked: not a precision fault this mask can fix"
            break
        masks[name] = nxt
        say(f"{target}: {name} ({kind}) makes a relative error of {rel:.3g} (its input {inp:.3g}): masking "
            f"{', '.join(v for k, v in BITS.items() if nxt & k)}")  # fmt: skip
        prior = [m for m in res.masked if m.layer != name]
        res.masked = [*prior, Masked(name, kind, nxt, f"{', '.join(v for k, v in BITS.items() if nxt & k)} off: "
                                     f"relative error {rel:.3g} on {target} where its input's is {inp:.3g}, against "
                                     "ncnn float32 on this machine", round(rel, 6), round(inp, 6))]  # fmt: skip
        atomic_write(param, pf.with_params({k: {FEATMASK: str(v)} for k, v in masks.items()}))
    else:
        res.note = f"more than {MAX_MASKED} layers diverge: not masked further"
    after = compare(ref, embed(e, d, inputs))
    res.min_cosine = after["min_cosine"]
    res.holds = at_least(res.min_cosine, COSINE)
    return res


def masked_layers(param: Path) -> dict[str, int]:
    """layer -> its feature mask, for every layer of a param file that has one."""
    try:
        return {x.name: int(x.param(FEATMASK) or 0) for x in read_param(param).layers if x.param(FEATMASK)}
    except ValueError:
        raise ConvertError(f"{param}: a feature mask (31=) that is not a number") from None


def arm_checks(d: Path, targets: list[str], n: int, fix: bool, on_step=None) -> dict[str, dict]:
    """``check_target`` on each CPU class in turn (a mask found on one stays for the next), each recorded in
    ``deploy.json``'s targets; target -> TargetCheck as a dict."""
    from mfnpatch.deploy import contract
    from mfnpatch.finite import finite

    out = {}
    for t in targets:
        r = check_target(d, t, n, fix, on_step)
        out[t] = r.to_dict()
        tg = TARGETS[t]
        measured = f"{n} test inputs (face-like and noise) against ncnn float32 on this machine"
        entry = {
            "isa": tg.isa, "qemu_cpu": tg.qemu_cpu, "note": tg.note,
            "verified": [{"engine": r.engine, "options": r.options, "holds": r.holds,
                          "min_cosine": finite(r.min_cosine), "measured_on": measured}],
            "masked": [{"layer": m.layer, "type": m.type, "featmask": m.featmask, "why": m.why} for m in r.masked],
        }  # fmt: skip
        deal = contract.load(d, against_models=False)
        contract.write(d, contract.with_targets(deal, {t: entry}))
    return out
