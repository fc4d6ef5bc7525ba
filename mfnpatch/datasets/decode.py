"""Decoding every image on every core (``data check --full``): batches of records (or of a ``.bin``'s images)
go to a pool of worker processes, at most a few batches ahead of what has come back, so memory stays flat;
the whole ``train.rec`` is hashed in a thread beside them."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

from mfnpatch.datasets import images as img
from mfnpatch.datasets.recordio import RecordError, read_record, unpack

BATCH = 512
MAX_FAILS = 20  # per batch: the first ones are named, the rest counted

_FD: int | None = None  # a worker's descriptor of train.rec (read with pread: nothing mapped)


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init(rec: str | None) -> None:
    global _FD
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    if rec is not None:
        _FD = os.open(rec, os.O_RDONLY)


def record_problem(src, offset: int, h: int | None, w: int | None) -> str | None:
    try:
        _, image = unpack(read_record(src, offset)[0])
    except (RecordError, ValueError) as e:
        return f"unreadable: {getattr(e, 'message', e)}"
    return img.problem(image, h, w)


def _records(args) -> tuple[int, int, list]:
    keys, offsets, lines, h, w = args
    fails: list[tuple[int, int, int, str]] = []
    n_bad = 0
    for k, o, line in zip(keys, offsets, lines, strict=True):
        p = record_problem(_FD, int(o), h, w)
        if p:
            n_bad += 1
            if len(fails) < MAX_FAILS:
                fails.append((int(k), int(o), int(line), p))
    return len(keys), n_bad, fails


def _images(args) -> tuple[int, int, list]:
    first, images, h, w = args
    fails: list[tuple[int, str]] = []
    n_bad = 0
    for i, data in enumerate(images):
        p = img.problem(data, h, w)
        if p:
            n_bad += 1
            if len(fails) < MAX_FAILS:
                fails.append((first + i, p))
    return len(images), n_bad, fails


class Pool:
    """Batches to workers, results in the order they end; ``progress(what, done, total)`` as they come."""

    def __init__(self, what: str, total: int, workers: int, rec: Path | None = None, progress=None):
        self.what, self.total, self.progress = what, total, progress
        self.workers = max(1, workers)
        ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        self._pool = ctx.Pool(self.workers, initializer=_init, initargs=(str(rec) if rec else None,))
        self._pending: deque = deque()
        self.done = 0
        self.bad = 0
        self.fails: list = []
        self.sha256: dict[str, Any] = {}
        self._hasher: threading.Thread | None = None
        if rec is not None:
            self._hasher = threading.Thread(target=self._hash, args=(rec,), daemon=True)
            self._hasher.start()

    def _hash(self, path: Path) -> None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 << 20):
                h.update(chunk)
        self.sha256["sha256"] = h.hexdigest()

    def _take(self, result) -> None:
        n, bad, fails = result.get()
        self.done += n
        self.bad += bad
        self.fails += fails[: max(0, MAX_FAILS - len(self.fails))]
        if self.progress:
            self.progress(self.what, self.done, self.total)

    def submit(self, fn, args) -> None:
        self._pending.append(self._pool.apply_async(fn, (args,)))
        while len(self._pending) > 3 * self.workers:
            self._take(self._pending.popleft())

    def records(self, keys, offsets, lines, h, w) -> None:
        for i in range(0, len(keys), BATCH):
            self.submit(_records, (keys[i : i + BATCH], offsets[i : i + BATCH], lines[i : i + BATCH], h, w))

    def images(self, images: list[bytes], h, w) -> None:
        for i in range(0, len(images), BATCH):
            self.submit(_images, (i, images[i : i + BATCH], h, w))

    def finish(self) -> None:
        while self._pending:
            self._take(self._pending.popleft())
        if self._hasher is not None:
            self._hasher.join()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.terminate() if exc[0] is not None else self._pool.close()
        self._pool.join()
