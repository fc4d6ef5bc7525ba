"""Encoded face images: what they are (JPEG, PNG) and whether they decode to the size a dataset promises.

The pinned code decodes with ``mx.image.imdecode`` (OpenCV's ``imdecode`` inside MXNet, colour), so OpenCV is
what decides here too. A JPEG cut short still decodes in OpenCV (libjpeg fills the rest with grey and warns),
so a JPEG without its end-of-image marker is called truncated before it is decoded.
"""

from __future__ import annotations

MAX_PIXELS = 4096 * 4096  # an image's declared size, read from its header before anything is decoded
MAX_IMAGE_BYTES = 64 << 20  # an image file read whole (data build)

JPEG = b"\xff\xd8\xff"
PNG = b"\x89PNG\r\n\x1a\n"
JPEG_END = b"\xff\xd9"


def kind(data: bytes) -> str | None:
    if data[:3] == JPEG:
        return "jpeg"
    if data[:8] == PNG:
        return "png"
    return None


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) as the image's header declares it (Pillow reads the header only), or None when the header
    is unreadable."""
    import io

    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is judged here, not by Pillow's own
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # Pillow raises many kinds on a damaged header (UnidentifiedImageError, SyntaxError, ...)
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return h, w


def too_large(data: bytes) -> str | None:
    """Why ``data`` must not be decoded: its header declares more than MAX_PIXELS (a small file can declare a
    huge image and be decoded whole), or None."""
    hw = declared_size(data)
    if hw is not None and hw[0] * hw[1] > MAX_PIXELS:
        return f"its header declares {hw[0]}x{hw[1]} pixels, over the {MAX_PIXELS:,} decoded here (4096x4096)"
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
    hw = declared_size(data)
    if hw is not None and height is not None and width is not None and hw != (height, width):
        return f"a {hw[0]}x{hw[1]} {k.upper()} where the dataset's property says {height}x{width}"  # never decoded
    big = too_large(data)
    if big:
        return f"a {k.upper()} that is too large: {big}"
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

    big = too_large(data)
    if big:
        raise ValueError(big)
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
