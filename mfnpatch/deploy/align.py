"""The reference face crop an app's alignment can be compared with, pixel for pixel.

InsightFace's recognition models take a 112x112 crop made by a similarity transform (rotation, uniform scale,
translation) that maps five landmarks (left eye, right eye, nose tip, left and right mouth corners) onto a
fixed template — ``norm_crop`` in InsightFace's ``face_align.py``: scikit-image's ``SimilarityTransform``
estimated from the landmarks to the template, then OpenCV's ``warpAffine`` with a black border. The template is
the 96x112 one of SphereFace/MobileFaceNet shifted 8 px to the right, which is the "+8 px for 112x112" of the
blog repository's checklist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import atomic_write, read_bounded

SIZE = 112
TEMPLATE_96x112 = ((30.2946, 51.6963), (65.5318, 51.5014), (48.0252, 71.7366), (33.5493, 92.3655), (62.7299, 92.2041))
TEMPLATE = tuple((x + 8.0, y) for x, y in TEMPLATE_96x112)  # 112x112: the 96-wide template centred (+8 px in x)
POINTS = ("left eye", "right eye", "nose tip", "left mouth corner", "right mouth corner")
WRITABLE = (".png", ".jpg", ".jpeg", ".bmp")


class AlignError(MfnError):
    pass


@dataclass
class Alignment:
    image: str
    output: str
    landmarks: list[list[float]]
    template: list[list[float]]
    matrix: list[list[float]]  # 2x3, image pixel -> crop pixel (cv2.warpAffine's M)
    residual_px: float  # mean distance, in crop pixels, of the mapped landmarks from the template
    image_size: list[int]  # height, width of the input


def parse_landmarks(text: str) -> list[tuple[float, float]]:
    """``x1,y1,…,x5,y5`` -> five points; anything else an AlignError naming the value."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    hint = "give 10 numbers x1,y1,…,x5,y5 in image pixels: " + ", ".join(POINTS)
    if len(parts) != 10:
        raise AlignError(f"--landmarks {text!r}: {len(parts)} value(s), not 10", hint=hint)
    vals = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise AlignError(f"--landmarks: {p!r} is not a number", hint=hint) from None
        if not math.isfinite(v):
            raise AlignError(f"--landmarks: {p!r} is not a finite number", hint=hint)
        vals.append(v)
    return [(vals[i], vals[i + 1]) for i in range(0, 10, 2)]


def estimate(landmarks: list[tuple[float, float]]):
    """The 2x3 similarity transform from the landmarks to the template (scikit-image), and its residual."""
    import numpy as np
    from skimage.transform import SimilarityTransform

    src = np.asarray(landmarks, dtype=np.float64)
    dst = np.asarray(TEMPLATE, dtype=np.float64)
    t = SimilarityTransform()
    if not t.estimate(src, dst) or not np.all(np.isfinite(t.params)) or t.scale < 1e-6:
        raise AlignError(
            "--landmarks: these five points do not determine a similarity transform (they coincide)",
            hint="give the five landmarks of one face, in the order " + ", ".join(POINTS),
        )
    residual = float(np.linalg.norm(t(src) - dst, axis=1).mean())
    return t.params[0:2, :], residual


def align(image: Path, landmarks: list[tuple[float, float]], output: Path) -> Alignment:
    """Read ``image`` (as OpenCV's ``imread`` does: BGR), crop it to 112x112 and write ``output`` atomically."""
    import cv2
    import numpy as np

    from mfnpatch.datasets.images import MAX_IMAGE_BYTES, too_large

    image, output = Path(image), Path(output)
    if output.suffix.lower() not in WRITABLE:
        raise AlignError(f"-o {output}: cannot tell the image format from {output.suffix or 'no suffix'!r}",
                         hint="end it with .png (lossless, for comparing pixels), .jpg or .bmp")  # fmt: skip
    if not image.exists():
        raise AlignError(f"{image}: no such file")
    try:
        data = read_bounded(image, "image", MAX_IMAGE_BYTES, hint="give a JPEG, PNG or BMP file")
    except MfnError as e:
        raise AlignError(e.message, hint=e.hint) from None
    big = too_large(data)
    if big:
        raise AlignError(f"{image}: {big}", hint="crop or scale the photo first")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise AlignError(f"{image}: not an image OpenCV can read", hint="give a JPEG, PNG or BMP file")
    h, w = img.shape[:2]
    for name, (x, y) in zip(POINTS, landmarks, strict=True):
        if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
            raise AlignError(
                f"--landmarks: the {name} ({x:g},{y:g}) is outside {image} ({w}x{h} pixels)",
                hint="landmarks are pixel coordinates in the image given, x to the right, y down",
            )
    m, residual = estimate(landmarks)
    crop = cv2.warpAffine(img, m, (SIZE, SIZE), borderValue=(0.0, 0.0, 0.0))  # black, as norm_crop
    ok, buf = cv2.imencode(output.suffix.lower(), crop)
    if not ok:
        raise AlignError(f"-o {output}: OpenCV could not encode the crop as {output.suffix}")
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, buf.tobytes())
    return Alignment(str(image), str(output), [list(p) for p in landmarks], [list(p) for p in TEMPLATE],
                     m.tolist(), round(residual, 4), [h, w])  # fmt: skip
