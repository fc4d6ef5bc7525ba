"""``convert evaluate --arm``: the verification sets through ncnn's ARM kernels on emulated phone CPUs, sampled.

Emulation costs about a second of CPU per image in float32 and several with fp16 arithmetic, so a set is
sampled, explicitly: ``pairs`` of its pairs, spread over the protocol's 10 folds (within each fold, as many
matching as non-matching pairs, evenly spaced), each image once, unflipped — the one embedding an app computes.
Every ARM row is judged against the reference engine's embeddings of exactly those images: its accuracy on the
sample against the reference's on the sample (the pinned protocol, 10 folds), and every image's cosine. The
ARM engines run side by side, one emulator process per core.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mfnpatch.deploy.engines import Images, blobs, embed
from mfnpatch.deploy.protocol import fold_slices, lfw_protocol
from mfnpatch.deploy.registry import Engine

FOLDS = 10


def sample_pairs(issame: list[bool], n: int, folds: int = FOLDS) -> list[int]:
    """Indices of ``n`` pairs (at least 2 per fold): from each of the protocol's folds, half matching and half
    non-matching, evenly spaced; in fold order, so that the sample's own folds hold both kinds."""
    per = max(2, n // folds)
    out: list[int] = []
    for a, b in fold_slices(len(issame), folds):
        same = [i for i in range(a, b) if issame[i]]
        diff = [i for i in range(a, b) if not issame[i]]
        for group, k in ((same, per // 2), (diff, per - per // 2)):
            k = min(k, len(group))
            out += [group[(j * len(group)) // k] for j in range(k)] if k else []
    return sorted(out)


@dataclass
class Sample:
    set: str
    pairs: list[int]
    issame: list[bool]
    images: object  # (2 x pairs, H, W, 3) uint8
    rows: list[int]  # the images' rows in the full set
    of_pairs: int

    def said(self) -> str:
        return f"{len(self.pairs)} of {self.of_pairs} pairs ({len(self.rows)} images, unflipped)"


def samples(loaded: list, pairs: int) -> list[Sample]:
    out = []
    for s in loaded:
        idx = sample_pairs(s.issame, pairs)
        rows = [r for i in idx for r in (2 * i, 2 * i + 1)]
        out.append(Sample(s.name, idx, [s.issame[i] for i in idx], s.images[rows], rows, s.pairs))
    return out


def run_arm(d, engines: list[Engine], sampled: list[Sample], workers: int, on_progress=None) -> dict:
    """(engine, set) -> (embeddings, seconds): every ARM engine on every sample, ``workers`` emulators at once."""
    lock = threading.Lock()

    def one(e: Engine, s: Sample):
        label, total = f"{s.set} · {e.name} (emulated)", len(s.rows)

        def done(n: int) -> None:
            if on_progress:
                with lock:
                    on_progress(label, n, total)

        done(0)
        t = time.perf_counter()
        embs = embed(e, d, Images(s.images), 1, done)
        return (e, s.set), (embs, time.perf_counter() - t)

    jobs = [(e, s) for e in engines for s in sampled]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(lambda job: one(*job), jobs))


def reference_on(sample: Sample, ref_embs) -> tuple:
    """The reference's unflipped embeddings of the sample's images, and its protocol result on the sample."""
    sub = ref_embs[sample.rows]
    return sub, lfw_protocol(sub, sub, sample.issame)


def probe_blobs(e: Engine, d, images, i: int) -> list:
    return blobs(e, d, Images(images).batch(i, i + 1))
