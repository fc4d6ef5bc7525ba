"""InsightFace's model-zoo MobileFaceNet and LFW aligned to 112x112 (../shared/data, or MFNPATCH_SHARED_DATA):
tests that judge accuracy use them and skip, with the reason, where they are absent. Nothing of them is ever
committed."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

SHARED = Path(os.environ.get("MFNPATCH_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")
MODEL = SHARED / "model-y1-test2" / "model"
LFW_TAR = SHARED / "lfw-112x112.tar"
LFW_PAIRS = SHARED / "lfw-pairs.txt"
REASON = f"needs InsightFace's model-zoo MobileFaceNet and LFW in {SHARED} (or MFNPATCH_SHARED_DATA)"


def available() -> bool:
    return Path(f"{MODEL}-0000.params").is_file() and LFW_TAR.is_file() and LFW_PAIRS.is_file()


def lfw_subset(root: Path, per_fold: int = 10) -> Path:
    """A dataset of real LFW faces (data build) whose lfw.bin holds ``per_fold`` matching and as many
    non-matching pairs from each of the official 10 folds."""
    from mfnpatch.datasets.build import build

    images = root / "lfw-images"
    if not images.exists():
        with tarfile.open(LFW_TAR) as tf:
            tf.extractall(images, filter="data")
    top = next(p for p in images.iterdir() if p.is_dir())
    body = LFW_PAIRS.read_text().splitlines()[1:]
    pairs = [ln for f in range(10) for ln in body[f * 600 : f * 600 + per_fold] + body[f * 600 + 300 : f * 600 + 300
                                                                                         + per_fold]]  # fmt: skip
    (root / "pairs.txt").write_text("\n".join(pairs) + "\n")
    out = root / f"lfw{per_fold}"
    build(top, out, pairs={"lfw": root / "pairs.txt"})
    return out
