"""`verify --explain`: why a run fell short of its stage — what differs from the seed's stage, ranked by how much
it is known to matter, and where its curve first fell behind the seed's reference log at equal samples seen.

Pure: it is given the log's summary, the stage it matched and, when there is one, the reference's summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mfnpatch.logs.events import Summary
from mfnpatch.verify.stagematch import Signature

# The seed's training data (the blog's logs: "header0 label [3804847. 3890011.]", "id2range 85164"): MS1M-IBUG,
# faces_ms1m_112x112.
SEED_IMAGES, SEED_IDENTITIES = 3804846, 85164

# What differs, ranked by how much it is known to matter, each with why.
KNOWN: list[tuple[str, str]] = [
    ("data", "every number of the seed was measured on MS1M-IBUG (85,164 identities, 3,804,846 images); other data "
             "gives other accuracies, in either direction"),
    ("total_batch", "per_batch_size is per GPU in the pinned code: more GPUs at the seed's per-GPU batch train another "
                    "experiment (each lr step comes after more samples, at a per-sample rate the seed never used); the "
                    "reason upstream gives most often for falling short (InsightFace issues 206, 261)"),
    ("lr_steps", "the schedule: the seed's own 5-16 update moved its lr steps (softmax 40k -> 120k, ArcFace's first "
                 "stage 80k -> 120k) to reach its numbers"),
    ("lr", "the starting learning rate (0.1; the fine-tune's 0.001)"),
    ("fc7_wd_mult", "weight decay of the layers after the global operator: the blog's first run forgot "
                    "--fc7-wd-mult 10 and trained badly (its 5-07 update)"),
    ("wd", "weight decay (4e-5, as the paper): with fc7_wd_mult 10 it makes 4e-4 after the global operator"),
    ("emb_size", "the embedding: 128 (the paper and the seed); 512 is a larger, different model"),
    ("margin_s", "ArcFace's scale (64; the fine-tune's 128)"),
    ("margin_m", "ArcFace's margin (0.5)"),
    ("per_batch_size", "the batch on each GPU: with the same GPUs, another total batch (above)"),
]  # fmt: skip
RANK = {k: i + 1 for i, (k, _) in enumerate(KNOWN)}
WHY = dict(KNOWN)
BEHIND = 0.002  # accuracy behind the reference's at equal samples that counts as "fell behind"


@dataclass
class Difference:
    key: str
    log: Any
    seed: Any
    rank: int
    why: str


@dataclass
class Gap:
    target: str
    first_behind_step: int | None  # the log's first stage step where it was behind the reference by > BEHIND
    first_behind_samples: int | None
    first_behind_by: float | None
    largest_by: float | None
    largest_step: int | None
    last_step: int
    last_by: float  # the log's last point against the reference at its samples (negative: behind)
    points: int  # log points compared (those within the reference's range of samples)


@dataclass
class Explanation:
    differences: list[Difference] = field(default_factory=list)
    total_batch: dict = field(default_factory=dict)  # {"log": (n, how), "seed": n}
    reference: str | None = None
    gaps: list[Gap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def total_batch(cfg: dict | None, summary: Summary | None = None) -> tuple[int, str] | None:
    """The total batch of a run from its configuration line: ``batch_size`` (the pinned code sets it to
    per_batch_size x ctx_num), else per_batch_size x ctx_num."""
    if not cfg:
        return None
    bs, per, ctx = cfg.get("batch_size"), cfg.get("per_batch_size"), cfg.get("ctx_num")
    if isinstance(bs, int) and bs > 0:
        how = f"batch_size {bs}" + (f" = per_batch_size {per} x {ctx} device(s)" if isinstance(per, int) and
                                     isinstance(ctx, int) else "")  # fmt: skip
        return bs, how
    if isinstance(per, int) and isinstance(ctx, int):
        return per * ctx, f"per_batch_size {per} x {ctx} device(s)"
    return None


def seed_total_of(sig: Signature) -> int | None:
    """The total batch of the recipe's stage: arcface_torch's per-GPU batch x the processes its command starts;
    the pinned MXNet code's per_batch_size (the seed trained on one P40)."""
    from mfnpatch.lineages import of_args

    return of_args(sig.args).total_batch_of(sig.args)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    if isinstance(a, str) and isinstance(b, str) and "," in a + b:
        return a.replace(" ", "") == b.replace(" ", "")
    return a == b


def explain(log: Summary, sig: Signature, ref: Summary | None = None, ref_name: str | None = None) -> Explanation:
    cfg = log.config or {}
    ex = Explanation(reference=ref_name)
    if log.identities is not None and log.identities != SEED_IDENTITIES:
        ex.differences.append(Difference("data", f"{log.identities} identities, {log.images} images",
                                         f"{SEED_IDENTITIES} identities, {SEED_IMAGES} images", RANK["data"],
                                         WHY["data"]))  # fmt: skip
    elif log.identities is None:
        ex.notes.append("the log does not say how many identities its data has (no 'id2range' line): data unread")
    mine, seed_total = total_batch(cfg), seed_total_of(sig)
    ex.total_batch = {"log": list(mine) if mine else None, "seed": seed_total}
    if mine and seed_total and mine[0] != seed_total:
        ex.differences.append(Difference("total_batch", f"{mine[0]} ({mine[1]})", f"{seed_total} (one GPU)",
                                         RANK["total_batch"], WHY["total_batch"]))  # fmt: skip
    for key, _ in KNOWN:
        if key in ("data", "total_batch") or key not in sig.args:
            continue
        if key not in cfg:
            ex.notes.append(f"{key}: not in the log's configuration line")
            continue
        if key == "per_batch_size" and any(d.key == "total_batch" for d in ex.differences):
            continue  # said with the total batch
        if not _same(cfg[key], sig.args[key]):
            ex.differences.append(Difference(key, cfg[key], sig.args[key], RANK[key], WHY[key]))
    ex.differences.sort(key=lambda d: d.rank)
    if ref is not None:
        ex.gaps, notes = curve_gaps(log, ref, mine[0] if mine else seed_total, _ref_total(ref) or seed_total)
        ex.notes += notes
    else:
        ex.notes.append("no reference log: give --reference to compare the curve with the seed's")
    return ex


def _ref_total(ref: Summary) -> int | None:
    t = total_batch(ref.config)
    return t[0] if t else None


def curve_gaps(log: Summary, ref: Summary, log_batch: int | None, ref_batch: int | None) -> tuple[list[Gap], list[str]]:
    """Each target's curve against the reference's at equal samples seen (steps x total batch): the reference's
    accuracy interpolated linearly between its verification rounds at the log's samples."""
    notes: list[str] = []
    if not log_batch or not ref_batch:
        notes.append("the total batch of the log or the reference is unknown: compared at equal steps")
        log_batch = ref_batch = 1
    elif log_batch != ref_batch:
        notes.append(f"total batch {log_batch} (log) and {ref_batch} (reference): compared at equal samples seen, "
                     f"log step s against reference step s x {log_batch / ref_batch:g}")  # fmt: skip
    gaps = []
    for target, steps in sorted(log.verifications.items()):
        rsteps = ref.verifications.get(target)
        if not rsteps or not steps:
            continue
        rx = sorted((s * ref_batch, v[0]) for s, v in rsteps.items())
        g = Gap(target, None, None, None, None, None, 0, 0.0, 0)
        for step, (acc, _, _) in sorted(steps.items()):
            samples = step * log_batch
            want = _interp(rx, samples)
            if want is None:
                continue
            by = acc - want
            g.points += 1
            g.last_step, g.last_by = step, by
            if g.largest_by is None or by < g.largest_by:
                g.largest_by, g.largest_step = by, step
            if g.first_behind_step is None and by < -BEHIND:
                g.first_behind_step, g.first_behind_samples, g.first_behind_by = step, samples, by
        if g.points:
            gaps.append(g)
    if not gaps:
        notes.append("no verification round of the log falls within the reference's range of samples seen")
    return gaps, notes


def _interp(points: list[tuple[int, float]], x: int) -> float | None:
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1] if x == points[-1][0] else None


def lines(ex: Explanation, fell_short: bool) -> list[str]:
    """The explanation in words, most important first."""
    out = ["why it " + ("fell short" if fell_short else "passed, and how it differs anyway") + ":"]
    if not ex.differences:
        out.append("  nothing the log shows differs from the seed's stage (data, batch, schedule, wd, embedding, "
                   "margin): look at the environment and the patch sets (verify --patches)")  # fmt: skip
    for i, d in enumerate(ex.differences, 1):
        out.append(f"  {i}. {d.key}: {d.log} in the log, {d.seed} in the seed's stage — {d.why}")
    for g in ex.gaps:
        if g.first_behind_step is None:
            out.append(f"  curve {g.target}: never more than {BEHIND} behind {ex.reference} at equal samples seen "
                       f"({g.points} rounds compared; last {g.last_by:+.5f} at step {g.last_step})")  # fmt: skip
        else:
            out.append(f"  curve {g.target}: first behind {ex.reference} at step {g.first_behind_step} "
                       f"({g.first_behind_samples:,} samples) by {-g.first_behind_by:.5f}; at most "  # type: ignore[operator]
                       f"{-(g.largest_by or 0):.5f} behind (step {g.largest_step}); last {g.last_by:+.5f} at step "
                       f"{g.last_step}")  # fmt: skip
    out += [f"  note: {n}" for n in ex.notes]
    return out
