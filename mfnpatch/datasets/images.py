"""Encoded face images: what they are (JPEG, PNG) and whether they decode to the size a dataset promises.

The pinned code decodes with ``mx.image.imdecode`` (OpenCV's ``imdecode`` inside MXNet, colour), so OpenCV is
what decides here too. A JPEG cut short still decodes in OpenCV (libjpeg fills the rest with grey and warns),
so a JPEG without its end-of-image marker is called truncated before it is decoded.
"""

from __future__ import annotations

JPEG = b"\xff\xd8\xff"
PNG = b"\x89PNG\r\n\x1a\n"
JPEG_END = b"\xff\xd9"


def kind(data: bytes) -> str | None:
    if data[:3] == JPEG:
        return "jpeg"
    if data[:8] == PNG:
        return "png"
    return None


def problem(data: bytes, height: int | None, width: int | None) -> str | None:
    """Why ``data`` is not a JPEG or PNG of ``height`` x ``width`` (None when it is)."""
    import cv2
    import numpy as np

    k = kind(data)
    if k is None:
        if not data:
            return "no image bytes"
        return f"not a JPEG or PNG (starts with {data[:8].hex()})"
    if k == "jpeg" and JPEG_END not in data[-64:]:
        return "a truncated JPEG (no end-of-image marker)"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return f"a {k.upper()} that does not decode"
    h, w = img.shape[:2]
    if height is not None and width is not None and (h, w) != (height, width):
        return f"a {h}x{w} {k.upper()} where the dataset's property says {height}x{width}"
    return None


def decode_rgb(data: bytes):
    """An image as the pinned code gives it to the network: HxWx3 uint8, RGB (``mx.image.imdecode``)."""
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("does not decode")
    return img[:, :, ::-1]


def encode_jpeg(rgb, quality: int = 95) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), quality])  # cv2 wants BGR
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
