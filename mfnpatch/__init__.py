"""mfnpatch: reproduce MobileFaceNet on a pinned, patched InsightFace, step by checked step."""

__version__ = "0.1.0"
