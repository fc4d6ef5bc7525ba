"""The training sets InsightFace users hold, known by their counts, each number with where it comes from.

MS1M was withdrawn by its publisher, so several cleaned copies circulate under InsightFace's names. Their
identity and image counts tell them apart: ``data check`` names the variant a directory holds, and a recipe
says which one its expected results were measured on (the seed: MS1M-IBUG, ``faces_ms1m_112x112``).

Sources, as cited in each entry:

- the blog author's training logs (``../shared/reference/blog-*.log``, the runs the seed describes): the pinned
  ``FaceImageIter`` prints ``header0 label [3804847. 3890011.]`` (images 1..3804846, identity records
  3804847..3890010) and ``id2range 85164``; ``train_softmax.py`` prints ``num_classes 85164``;
- InsightFace ``recognition/_datasets_/README.md`` (the rounded "85K ids/3.8M images" of each set) and the
  arcface_torch configs at commit 0159b24 (``config.num_classes``, ``config.num_image``).
"""

from __future__ import annotations

from dataclasses import dataclass

ARCFACE_TORCH = "InsightFace recognition/arcface_torch/configs/{} at 0159b24 (num_classes, num_image)"
DATASETS_README = "InsightFace recognition/_datasets_/README.md: {}"


@dataclass(frozen=True)
class Variant:
    key: str  # what a recipe names: data.variant
    name: str
    folder: str  # the directory name InsightFace's downloads unpack to
    ids: int
    images: int | None  # None: no source gives the exact count
    source: str


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "ms1m-ibug",
        "MS1M-IBUG",
        "faces_ms1m_112x112",
        85164,
        3804846,
        "the blog's training logs: 'num_classes 85164', 'header0 label [3804847. 3890011.]', 'id2range 85164'; "
        + DATASETS_README.format("'MS1M-IBUG (85K ids/3.8M images)'"),
    ),
    Variant(
        "ms1m-arcface",
        "MS1M-ArcFace (MS1MV2)",
        "faces_emore",
        85742,
        5822653,
        ARCFACE_TORCH.format("ms1mv2_mbf.py") + "; " + DATASETS_README.format("'MS1M-ArcFace (85K ids/5.8M images)'"),
    ),
    Variant(
        "ms1m-retinaface",
        "MS1M-RetinaFace (MS1MV3)",
        "ms1m-retinaface-t1",
        93431,
        5179510,
        ARCFACE_TORCH.format("ms1mv3_mbf.py"),
    ),
    Variant("glint360k", "Glint360K", "glint360k", 360232, 17091657, ARCFACE_TORCH.format("glint360k_mbf.py")),
    Variant(
        "casia-webface",
        "CASIA-WebFace",
        "faces_webface_112x112",
        10572,
        None,
        "InsightFace recognition/arcface_oneflow/configs/base.py at 0159b24 (num_classes 10572; its num_image is "
        "'forget'); " + DATASETS_README.format("'CASIA-Webface (10K ids/0.5M images)'"),
    ),
)

# What a dataset made by mfnpatch itself is called (its marker file says so).
SYNTHETIC = "synthetic"
BUILT = "built"
ANY = "any"  # a recipe that accepts any consistent dataset

# The standard verification sets: pairs in each .bin (InsightFace recognition/_datasets_/README.md,
# "Validation Datasets": LFW 6K pairs, CFP-FP 7K pairs, AgeDB-30 6K pairs, CALFW and CPLFW 6K pairs).
STANDARD_PAIRS = {"lfw": 6000, "cfp_fp": 7000, "agedb_30": 6000, "calfw": 6000, "cplfw": 6000}
STANDARD_PAIRS_SOURCE = DATASETS_README.format("Validation Datasets")


@dataclass(frozen=True)
class Match:
    key: str | None  # a Variant.key, SYNTHETIC, BUILT, or None (unknown)
    name: str
    message: str
    exact: bool

    def to_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "message": self.message, "exact": self.exact}


def by_key(key: str) -> Variant | None:
    return next((v for v in VARIANTS if v.key == key), None)


def recognise(ids: int, images: int, made_by: str | None = None) -> Match:
    """The variant a dataset's counts name; ``made_by`` is SYNTHETIC or BUILT for a dataset mfnpatch wrote."""
    if made_by == SYNTHETIC:
        return Match(SYNTHETIC, "mfnpatch synthetic", "a synthetic dataset (mfnpatch data synth)", True)
    if made_by == BUILT:
        return Match(BUILT, "built by mfnpatch", "built from a folder of faces (mfnpatch data build)", True)
    for v in VARIANTS:
        if v.ids == ids and (v.images is None or v.images == images):
            counted = f"{v.ids} identities" + (f", {v.images} images" if v.images is not None else "")
            return Match(v.key, v.name, f"{v.name} ({v.folder}): {counted}, as {v.source}", True)
    for v in VARIANTS:
        if v.ids == ids:
            return Match(
                None,
                f"{v.name}, modified",
                f"{ids} identities as {v.name} ({v.folder}), but {images} images where it has {v.images}: a modified "
                "copy — the seed's targets may not apply",
                False,
            )
    return Match(
        None,
        "unknown",
        f"unknown variant ({ids} identities, {images} images) — the seed's targets may not apply",
        False,
    )


def describe_expected(key: str) -> str:
    if key == ANY:
        return "any consistent dataset"
    if key == SYNTHETIC:
        return "a synthetic dataset (mfnpatch data synth)"
    if key == BUILT:
        return "a dataset built by mfnpatch data build"
    v = by_key(key)
    return f"{v.name} ({v.folder}, {v.ids} identities)" if v else key


def known_keys() -> list[str]:
    return [v.key for v in VARIANTS] + [SYNTHETIC, BUILT, ANY]
