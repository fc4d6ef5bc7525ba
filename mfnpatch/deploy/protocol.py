"""The verification protocol, pure: what the pinned ``src/eval/verification.py`` computes from embeddings, and
the cosine thresholds an app needs.

``lfw_protocol`` is ``verification.test``'s second number (``acc2, std2``, the one printed as
``Accuracy-Flip``): the embedding of each image is the sum of its own and its horizontally flipped image's
(``embeddings_list[0] + embeddings_list[1]``), L2-normalised; the distance of a pair is the squared Euclidean
distance; ``calculate_roc`` splits the pairs into 10 contiguous folds (sklearn's ``KFold``, no shuffle), picks
on the other nine folds the threshold of ``np.arange(0, 4, 0.01)`` with the best accuracy (the first one on a
tie, as ``np.argmax``), and scores the held-out fold with it (``dist < threshold`` is "same person").
The arithmetic is vectorised over the thresholds but is the same: ``tests/deploy/test_evaluate_upstream.py``
holds it to the pinned code's numbers on the same checkpoint and ``.bin`` to 1e-5.

``app_thresholds`` is what ``deploy.json`` carries: cosine thresholds on one embedding per image (no flip), as
an app computes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FOLDS = 10
FAR_TARGETS = (1e-3, 1e-4)


@dataclass
class ProtocolResult:
    """``verification.test``'s accuracy: the mean and std over the folds, and each fold's chosen threshold."""

    accuracy: float
    std: float
    folds: list[float]
    thresholds: list[float]  # squared distance, per fold
    threshold: float  # their mean (squared distance between L2-normalised embeddings)
    threshold_cosine: float  # the same as a cosine similarity: 1 - d / 2
    xnorm: float  # the mean norm of the raw embeddings (both flips), as verification.py prints it

    def to_dict(self) -> dict:
        return asdict(self)


def _normalize(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    n = np.sqrt((x * x).sum(axis=1))
    n[n == 0] = 1.0  # as sklearn.preprocessing.normalize: a zero row stays zero
    return x / n[:, None]


def fold_slices(n: int, folds: int = FOLDS) -> list[tuple[int, int]]:
    """sklearn ``KFold(n_splits=folds, shuffle=False)``'s test folds: contiguous, the first ``n % folds`` one
    longer."""
    out, start = [], 0
    for i in range(folds):
        size = n // folds + (1 if i < n % folds else 0)
        out.append((start, start + size))
        start += size
    return out


def lfw_protocol(emb, emb_flip, issame, folds: int = FOLDS) -> ProtocolResult:
    """``emb``/``emb_flip``: (2 x pairs, D) raw embeddings of the images (pair i = rows 2i, 2i+1) and of their
    flipped images; ``issame``: one bool per pair."""
    import numpy as np

    emb = np.asarray(emb, dtype=np.float64)
    emb_flip = np.asarray(emb_flip, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    xnorm = float(np.concatenate([np.linalg.norm(emb, axis=1), np.linalg.norm(emb_flip, axis=1)]).mean())
    e = _normalize(emb + emb_flip)
    n = min(len(same), e.shape[0] // 2)
    same = same[:n]
    dist = ((e[0 : 2 * n : 2] - e[1 : 2 * n : 2]) ** 2).sum(axis=1)
    grid = np.arange(0, 4, 0.01)
    predict = dist[:, None] < grid[None, :]  # (pairs, thresholds): "same person" at each threshold
    correct = predict == same[:, None]
    per_fold_correct = []
    spans = fold_slices(n, folds)
    for a, b in spans:
        per_fold_correct.append(correct[a:b].sum(axis=0))
    per_fold_correct_arr = np.stack(per_fold_correct)  # (folds, thresholds)
    total = per_fold_correct_arr.sum(axis=0)
    accs, chosen = [], []
    for i, (a, b) in enumerate(spans):
        train_acc = (total - per_fold_correct_arr[i]) / (n - (b - a))
        best = int(np.argmax(train_acc))
        chosen.append(float(grid[best]))
        accs.append(float(per_fold_correct_arr[i][best]) / (b - a))
    thr = float(np.mean(chosen))
    return ProtocolResult(
        accuracy=float(np.mean(accs)),
        std=float(np.std(accs)),
        folds=accs,
        thresholds=chosen,
        threshold=thr,
        threshold_cosine=1.0 - thr / 2.0,
        xnorm=xnorm,
    )


def pair_cosines(emb):
    """Cosine similarity of each pair (rows 2i, 2i+1) of raw embeddings."""
    e = _normalize(emb)
    return (e[0::2] * e[1::2]).sum(axis=1)


@dataclass
class FarPoint:
    far: float  # the target false accept rate
    threshold: float  # accept a pair when its cosine is above this
    tar: float  # the true accept rate at that threshold
    measured_far: float
    resolvable: bool  # False: fewer than 1/far different-identity pairs, so the threshold is only an upper bound
    note: str = ""


@dataclass
class AppThresholds:
    """Cosine thresholds on one embedding per image (no flip), measured on a set's pairs."""

    pairs: int
    same: int
    different: int
    best_accuracy_threshold: float  # accept when cosine > threshold
    best_accuracy: float
    far: list[FarPoint] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def app_thresholds(cos, issame, far_targets=FAR_TARGETS) -> AppThresholds:
    """The best-accuracy cosine threshold over all pairs, and for each FAR target the lowest threshold whose
    false accept rate on the different-identity pairs is at most the target, with its true accept rate. A
    pair is accepted when its cosine is strictly above the threshold; thresholds lie midway between scores."""
    import numpy as np

    cos = np.asarray(cos, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)[: len(cos)]
    pos, neg = np.sort(cos[same]), np.sort(cos[~same])
    scores = np.unique(cos)
    cands = np.concatenate([[scores[0] - 1e-6], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-6]])
    # accepted positives and rejected negatives at each candidate, via sorted counts
    tp = len(pos) - np.searchsorted(pos, cands, side="right")
    tn = np.searchsorted(neg, cands, side="right")
    acc = (tp + tn) / len(cos)
    best = int(np.argmax(acc))
    out = AppThresholds(len(cos), int(same.sum()), int((~same).sum()), float(cands[best]), float(acc[best]))
    for far in far_targets:
        allowed = int(np.floor(far * len(neg)))  # false accepts the target permits
        # the threshold just below the (allowed+1)-th highest negative score accepts exactly `allowed` negatives
        if len(neg) == 0:
            continue
        k = len(neg) - allowed - 1  # index of the highest negative that must be rejected
        thr = float(neg[k]) if k >= 0 else float(neg[0]) - 1e-6
        measured = float((neg > thr).sum()) / len(neg)
        tar = float((pos > thr).sum()) / len(pos) if len(pos) else 0.0
        resolvable = len(neg) * far >= 1
        note = (
            ""
            if resolvable
            else f"{len(neg)} different-identity pairs cannot measure FAR {far:g} (it needs at least "
            f"{int(round(1 / far))}): the threshold rejects every one of them, so the true FAR is unknown"
        )
        out.far.append(FarPoint(far, thr, tar, measured, resolvable, note))
    return out
