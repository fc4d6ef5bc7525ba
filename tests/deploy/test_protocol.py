"""The verification protocol's arithmetic: the vectorised lfw_protocol against a line-by-line transcription of the
pinned verification.py's calculate_roc (sklearn's KFold, a loop over thresholds), and the app thresholds on
scores whose answer is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mfnpatch.deploy.protocol import app_thresholds, fold_slices, lfw_protocol, pair_cosines


def _pinned(emb, emb_flip, issame, nfolds=10):
    """src/eval/verification.py at 4bc8132: test() -> evaluate() -> calculate_roc(), as written there."""
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import normalize

    embeddings = normalize(np.asarray(emb, np.float64) + np.asarray(emb_flip, np.float64))
    thresholds = np.arange(0, 4, 0.01)
    e1, e2 = embeddings[0::2], embeddings[1::2]
    actual = np.asarray(issame)
    n = min(len(actual), e1.shape[0])
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    accuracy = np.zeros(nfolds)
    chosen = []

    def acc_at(th, d, same):
        predict = np.less(d, th)
        tp = np.sum(np.logical_and(predict, same))
        tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(same)))
        return float(tp + tn) / d.size

    for fold, (train, test) in enumerate(KFold(n_splits=nfolds, shuffle=False).split(np.arange(n))):
        acc_train = np.array([acc_at(th, dist[train], actual[train]) for th in thresholds])
        best = np.argmax(acc_train)
        chosen.append(thresholds[best])
        accuracy[fold] = acc_at(thresholds[best], dist[test], actual[test])
    return np.mean(accuracy), np.std(accuracy), chosen


@pytest.mark.parametrize("pairs,dim,noise,seed", [(100, 8, 0.9, 0), (203, 16, 0.6, 1), (600, 128, 1.2, 2)])
def test_lfw_protocol_is_the_pinned_calculate_roc(pairs, dim, noise, seed):
    rng = np.random.default_rng(seed)
    ids = rng.normal(size=(pairs, dim))
    issame = [bool(i % 2 == 0) for i in range(pairs)]
    emb = np.empty((2 * pairs, dim), np.float32)
    for i in range(pairs):
        emb[2 * i] = ids[i] + noise * rng.normal(size=dim)
        other = ids[i] if issame[i] else rng.normal(size=dim)
        emb[2 * i + 1] = other + noise * rng.normal(size=dim)
    flip = emb + 0.3 * rng.normal(size=emb.shape).astype(np.float32)
    got = lfw_protocol(emb, flip, issame)
    acc, std, chosen = _pinned(emb, flip, issame)
    assert got.accuracy == pytest.approx(acc, abs=1e-12) and got.std == pytest.approx(std, abs=1e-12)
    assert got.thresholds == pytest.approx(chosen)
    assert 0.5 < got.accuracy < 1.0  # neither trivial nor chance: the folds' thresholds matter
    assert got.threshold_cosine == pytest.approx(1 - np.mean(chosen) / 2)


def test_fold_slices_are_sklearns_kfold():
    from sklearn.model_selection import KFold

    for n in (20, 23, 6000, 7000):
        ours = fold_slices(n)
        theirs = [(int(t[0]), int(t[-1]) + 1) for _, t in KFold(n_splits=10).split(np.arange(n))]
        assert ours == theirs


def test_app_thresholds_by_hand():
    # same-person pairs score 0.9, 0.8, 0.6, 0.15; different-person pairs 0.7, 0.4, 0.2, 0.1, 0.0, -0.1
    cos = [0.9, 0.7, 0.8, 0.4, 0.6, 0.2, 0.15, 0.1, 0.0, -0.1]
    same = [True, False, True, False, True, False, True, False, False, False]
    t = app_thresholds(cos, same, far_targets=(0.2, 0.1))
    assert (t.pairs, t.same, t.different) == (10, 4, 6)
    # best accuracy: accept above 0.5 (between 0.4 and 0.6): 3 same accepted, 5 different rejected -> 8/10 (above
    # 0.125 accepts 4 same and rejects 3 different: 7/10)
    assert t.best_accuracy == pytest.approx(0.8) and 0.4 < t.best_accuracy_threshold < 0.6
    far20, far10 = t.far
    # FAR 0.2 of 6 different pairs allows 1 false accept: the threshold sits at the second-highest (0.4), so
    # 0.7 is accepted, and TAR counts 0.9, 0.8, 0.6 -> 3/4
    assert far20.threshold == pytest.approx(0.4) and far20.measured_far == pytest.approx(1 / 6)
    assert far20.tar == pytest.approx(0.75) and far20.resolvable
    # FAR 0.1 allows none: the threshold is the highest different score, 0.7; TAR 0.9, 0.8 -> 2/4
    assert far10.threshold == pytest.approx(0.7) and far10.measured_far == 0 and far10.tar == pytest.approx(0.5)
    assert not far10.resolvable and "needs at least 10" in far10.note


def test_pair_cosines_are_cosines():
    e = np.array([[1.0, 0], [2.0, 0], [1.0, 0], [0, 3.0]])
    assert pair_cosines(e) == pytest.approx([1.0, 0.0])
