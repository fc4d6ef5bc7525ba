"""deploy align: the reference 112x112 crop, against a transform computed by hand."""

from __future__ import annotations

import importlib.util
import math

import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("cv2", "skimage")),
    reason="needs the cpu environment (opencv-python-headless, scikit-image): mfnpatch env create cpu",
)

S, THETA, T = 2.5, math.radians(20), (130.0, 90.0)  # the face in the photo: the template scaled, turned, moved


def _photo_landmarks():
    """The template placed in a photo by p -> S R p + T; the crop's transform is its inverse."""
    from mfnpatch.deploy.align import TEMPLATE

    c, s = math.cos(THETA), math.sin(THETA)
    return [(S * (c * x - s * y) + T[0], S * (s * x + c * y) + T[1]) for x, y in TEMPLATE]


def _by_hand():
    """The inverse of p -> S R p + T: q -> R^T (q - T) / S, as a 2x3 matrix."""
    import numpy as np

    c, s = math.cos(THETA), math.sin(THETA)
    rt = np.array([[c, s], [-s, c]]) / S
    return np.hstack([rt, (-rt @ np.array(T)).reshape(2, 1)])


def _photo(tmp_path, marks):
    """A 480x400 photo: a gradient, with a white dot at each landmark."""
    import cv2
    import numpy as np

    yy, xx = np.mgrid[0:400, 0:480]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    for x, y in marks:
        cv2.circle(img, (round(x), round(y)), 6, (255, 255, 255), -1)
    p = tmp_path / "photo.png"
    cv2.imwrite(str(p), img)
    return p, img


def test_align_is_the_hand_computed_transform(tmp_path, cli):
    import cv2
    import numpy as np

    from mfnpatch.deploy.align import TEMPLATE

    marks = _photo_landmarks()
    photo, img = _photo(tmp_path, marks)
    out = tmp_path / "crop.png"
    r = cli("deploy", "align", photo, "--landmarks", ",".join(f"{v:.6f}" for p in marks for v in p), "-o", out,
            "--json")  # fmt: skip
    assert r.code == 0, r.err
    d = r.json()
    m = np.array(d["matrix"])
    assert np.allclose(m, _by_hand(), atol=1e-6) and d["residual_px"] < 1e-3
    crop = cv2.imread(str(out))
    assert crop.shape == (112, 112, 3)
    # pixel for pixel what warpAffine makes with the hand-computed matrix (PNG is lossless)
    assert np.array_equal(crop, cv2.warpAffine(img, _by_hand(), (112, 112), borderValue=0.0))
    # the dots land on the template: the eyes at (38.3, 51.7) and (73.5, 51.5) of the 112x112 crop
    for x, y in TEMPLATE:
        assert crop[round(y), round(x)].min() >= 250
    assert TEMPLATE[0] == pytest.approx((38.2946, 51.6963)) and TEMPLATE[4] == pytest.approx((70.7299, 92.2041))
    # the text output says what it did
    r = cli("deploy", "align", photo, "--landmarks", ",".join(f"{v:.3f}" for p in marks for v in p), "-o", out)
    assert r.code == 0 and "wrote" in r.out and "px from the template" in r.out


@pytest.mark.parametrize(
    "landmarks, says",
    [
        ("1,2,3", "--landmarks '1,2,3': 3 value(s), not 10"),
        ("1,2,3,4,5,6,7,8,9,x", "--landmarks: 'x' is not a number"),
        ("1,2,3,4,5,6,7,8,9,nan", "is not a finite number"),
        ("100,100,100,100,100,100,100,100,100,100", "do not determine a similarity transform"),
        ("100,100,200,100,150,150,120,200,900,200", "the right mouth corner (900,200) is outside"),
    ],
)
def test_bad_landmarks_are_named(tmp_path, cli, landmarks, says):
    photo, _ = _photo(tmp_path, [])
    out = tmp_path / "crop.png"
    r = cli("deploy", "align", photo, "--landmarks", landmarks, "-o", out)
    assert r.code == 1 and says in r.err and len(r.err.strip().splitlines()) <= 2, r.err
    assert not out.exists() and not list(tmp_path.glob("*crop*"))


def test_bad_image_and_output_are_named(tmp_path, cli):
    marks = ",".join(f"{v:.3f}" for p in _photo_landmarks() for v in p)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    r = cli("deploy", "align", text, "--landmarks", marks, "-o", tmp_path / "c.png")
    assert r.code == 1 and f"{text}: not an image OpenCV can read" in r.err
    r = cli("deploy", "align", tmp_path / "none.jpg", "--landmarks", marks, "-o", tmp_path / "c.png")
    assert r.code == 1 and "none.jpg: no such file" in r.err
    photo, _ = _photo(tmp_path, [])
    r = cli("deploy", "align", photo, "--landmarks", marks, "-o", tmp_path / "crop")
    assert r.code == 1 and "cannot tell the image format" in r.err
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "crop").exists()
