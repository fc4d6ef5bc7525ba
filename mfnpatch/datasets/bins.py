"""Verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``): a pickle of ``(bins, issame_list)``.

``bins`` holds two encoded images per pair (JPEG or PNG bytes; ``agedb2pack2.py`` stored ``cv2.imencode``
NumPy buffers instead), ``issame_list`` one bool per pair. The published files were pickled by Python 2,
whose ``str`` Python 3 reads only with ``encoding='bytes'``.

**A pickle runs code.** A ``.bin`` from a download or a colleague is untrusted: ``load_verification`` reads it
with ``SafeUnpickler``, which admits only what a verification set holds — lists, tuples, bytes, bools, and
uint8 NumPy buffers (with the few NumPy and ``_codecs`` globals their pickles name, each wrapped so that it
builds only those). Any other global is refused before anything is imported or called, and the file is
named with the global it asked for.
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import read_bounded, sha256_bytes


class BinError(MfnError):
    pass


class Refused(pickle.UnpicklingError):
    pass


def _ndarray_reconstruct(subtype, shape, typecode):
    import numpy as np

    if subtype is not np.ndarray:
        raise Refused(f"_reconstruct of {subtype!r}, not numpy.ndarray")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise Refused(f"_reconstruct with shape {shape!r}")
    # a placeholder of no bytes, whatever shape the pickle declares: its state (BUILD) gives the real shape,
    # dtype and bytes, which NumPy checks against each other
    return np.ndarray((0,), "b")


def _dtype(spec, align=False, copy=False):
    import numpy as np

    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if not isinstance(spec, str):
        raise Refused(f"numpy.dtype({spec!r}): only a type code is admitted")
    dt = np.dtype(spec)
    if dt.hasobject or dt.kind not in "biuf":
        raise Refused(f"numpy.dtype({spec!r}): only numeric types are admitted")
    return np.dtype(dt, align=bool(align), copy=bool(copy))


def _scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind != "b":
        raise Refused("numpy scalar: only bools are admitted")
    if not isinstance(data, (bytes, bytearray)) or len(data) != 1:
        raise Refused("numpy bool scalar: one byte expected")
    return bool(data[0])


def _frombuffer(buf, dtype, shape, order="C"):
    """``numpy.core.numeric._frombuffer``: how NumPy pickles an array at protocol 5."""
    import numpy as np

    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype):
        raise Refused("_frombuffer with arguments a verification set does not use")
    if dtype.hasobject or not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise Refused(f"_frombuffer of {dtype} with shape {shape!r}")
    if order not in ("C", "F", b"C", b"F"):
        raise Refused(f"_frombuffer with order {order!r}")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order="F" if order in ("F", b"F") else "C")


def _encode(text, encoding="utf-8"):
    """``_codecs.encode``: how Python 3 pickles ``bytes`` at protocol 2 (``latin1`` only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused(f"_codecs.encode(..., {encoding!r}): only latin1 text is admitted")
    return text.encode("latin1")


def _bytes(*args):
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin1")
    raise Refused("bytes(...) with arguments a verification set does not use")


def _bytearray(*args):
    return bytearray(_bytes(*args))


def _ndarray_class():
    import numpy as np

    return np.ndarray


_ADMITTED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes,
    ("__builtin__", "bytearray"): _bytearray,
    ("builtins", "bytearray"): _bytearray,
}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ADMITTED[(_core, "_reconstruct")] = _ndarray_reconstruct
    _ADMITTED[(_core, "scalar")] = _scalar
for _numeric in ("numpy.core.numeric", "numpy._core.numeric"):
    _ADMITTED[(_numeric, "_frombuffer")] = _frombuffer
_ADMITTED[("numpy", "dtype")] = _dtype
_ADMITTED[("numpy", "ndarray")] = None  # the class itself, looked up when named (numpy imported on demand)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for verification sets: every global outside ``_ADMITTED`` is refused, unimported."""

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key not in _ADMITTED:
            raise Refused(f"it names the global {module}.{name}, which a verification set never holds")
        return _ndarray_class() if key == ("numpy", "ndarray") else _ADMITTED[key]

    def persistent_load(self, pid):
        raise Refused("it uses a persistent id, which a verification set never holds")


@dataclass
class VerificationSet:
    path: str
    images: list[bytes]
    issame: list[bool]
    encoding: str  # how its images were stored: "python 2 str", "python 3 bytes", "numpy buffers"
    size: int
    sha256: str

    @property
    def pairs(self) -> int:
        return len(self.issame)


MAX_BIN_BYTES = 2 << 30  # a verification set's file: LFW's lfw.bin is 64 MB, CFP-FP's cfp_fp.bin 93 MB
MAX_PAIRS = 100_000  # LFW, CFP-FP and AgeDB-30 hold 6,000-7,000; decoded at 112x112 this is 7.5 GB


def load_verification(path: Path) -> VerificationSet:
    """Read a ``.bin`` safely; a structure other than ``(bins, issame_list)`` is a BinError naming what it is. Only
    a regular file of at most MAX_BIN_BYTES is read (never a FIFO or a device)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise BinError(f"{path}: missing", hint="the recipe's verification targets each need DIR/<target>.bin")
    try:
        data = read_bounded(path, "verification set", MAX_BIN_BYTES,
                            hint="a verification .bin is a file of (images, issame_list) of at most 2 GiB")  # fmt: skip
    except MfnError as e:
        raise BinError(e.message, hint=e.hint) from None
    return parse_verification(data, path)


def parse_verification(data: bytes, path: Path) -> VerificationSet:
    import numpy as np

    stream = io.BytesIO(data)
    try:
        obj = SafeUnpickler(stream, encoding="bytes").load()
    except Refused as e:
        raise BinError(
            f"{path}: refused: {e}; nothing it names was imported or called",
            hint="a verification .bin holds (images, issame_list) only; get the file again from a source you trust",
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        struct.error,
        MemoryError,
        RecursionError,
        UnicodeDecodeError,
    ) as e:
        at = stream.tell()
        what = "ends early" if isinstance(e, EOFError) or at >= len(data) else "is not a readable pickle"
        raise BinError(
            f"{path}: {what} at byte {at} of {len(data)} ({type(e).__name__}: {str(e)[:120]})",
            hint="the file is truncated or not a verification set; download it again",
        ) from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise BinError(f"{path}: a pickle of {_kind(obj)}, not a verification set (bins, issame_list)")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise BinError(f"{path}: holds ({_kind(bins)}, {_kind(issame)}), not (list of images, list of bools)")
    if len(issame) > MAX_PAIRS or len(bins) > 2 * MAX_PAIRS:
        raise BinError(f"{path}: {len(bins):,} images and {len(issame):,} pairs, over the {MAX_PAIRS:,} pairs a "
                       "verification set holds here (LFW, CFP-FP, AgeDB-30: 6,000-7,000)")  # fmt: skip
    seen: set[int] = set()
    total = 0
    images: list[bytes] = []
    kinds = set()
    for i, b in enumerate(bins):
        # each image's bytes are in the file once: a pickle that references one object many times (its memo)
        # would make every reference a copy, many times the file's size
        if id(b) in seen:
            raise BinError(f"{path}: image {i} is a second reference to an earlier image's bytes (a pickle memo "
                           "reference); a verification set stores each image once")  # fmt: skip
        seen.add(id(b))
        if isinstance(b, (bytes, bytearray)):
            images.append(bytes(b))
            kinds.add("bytes")
        elif isinstance(b, np.ndarray) and b.dtype in (np.uint8, np.int8) and b.ndim <= 2:
            images.append(b.tobytes())
            kinds.add("numpy")
        else:
            raise BinError(f"{path}: image {i} is {_kind(b)}, not encoded image bytes")
        total += len(images[-1])
        if total > len(data):
            raise BinError(f"{path}: its images hold more bytes than the file ({len(data)} bytes) holds")
    flags: list[bool] = []
    for i, s in enumerate(issame):
        if not isinstance(s, bool):
            raise BinError(f"{path}: issame_list[{i}] is {_kind(s)}, not a bool")
        flags.append(s)
    if "numpy" in kinds:
        encoding = "numpy buffers" if kinds == {"numpy"} else "bytes and numpy buffers"
    else:
        encoding = _string_opcodes(data)
    return VerificationSet(str(path), images, flags, encoding, len(data), sha256_bytes(data))


def _string_opcodes(data: bytes) -> str:
    """How the images' bytes were pickled, from the first opcode that holds one."""
    import pickletools

    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINSTRING", "BINSTRING", "STRING"):
            return "python 2 str"
        if op.name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            return "python 3 bytes"
        if op.name == "GLOBAL" and arg == "_codecs encode":
            return "python 3 bytes (protocol 2)"
    return "no images"


FOLDS = 10  # the pinned verification.py's nrof_folds


def fold_problem(issame: list[bool], folds: int = FOLDS) -> str | None:
    """Why the pinned ``verification.py`` cannot evaluate these pairs, or None. It splits them into ``folds``
    contiguous folds (sklearn's ``KFold``, no shuffle) and divides by each fold's matching and non-matching
    pairs (``calculate_val_far``): a fold without both is a ZeroDivisionError."""
    n = len(issame)
    if n < 2 * folds:
        return (f"{n} pairs: the pinned {folds}-fold verification needs at least {2 * folds} (a matching and a "
                "non-matching pair in every fold)")  # fmt: skip
    start = 0
    for i in range(folds):
        size = n // folds + (1 if i < n % folds else 0)
        part = issame[start : start + size]
        if all(part) or not any(part):
            kind = "matching" if part[0] else "non-matching"
            return (f"fold {i + 1} of the pinned {folds}-fold verification (pairs {start}..{start + size - 1}) holds "
                    f"only {kind} pairs: verification.py divides by zero on it")  # fmt: skip
        start += size
    return None


def _kind(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of {len(x)}"
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def dumps_py2(bins: list[bytes], issame: list[bool]) -> bytes:
    """``pickle.dumps((bins, issame), protocol=2)`` as Python 2 writes it: str items as (SHORT_)BINSTRING, so
    Python 3 needs ``encoding='bytes'`` (the py3 set's ``load_bin`` fix) to read them, like the real files."""
    out = io.BytesIO()
    out.write(b"\x80\x02")  # PROTO 2
    out.write(b"]")  # EMPTY_LIST
    for k in range(0, len(bins), 1000):
        out.write(b"(")  # MARK
        for b in bins[k : k + 1000]:
            if len(b) < 256:
                out.write(b"U" + bytes([len(b)]) + b)  # SHORT_BINSTRING
            else:
                out.write(b"T" + struct.pack("<I", len(b)) + b)  # BINSTRING
        out.write(b"e")  # APPENDS
    out.write(b"]")
    for k in range(0, len(issame), 1000):
        out.write(b"(")
        out.write(b"".join(b"\x88" if s else b"\x89" for s in issame[k : k + 1000]))  # NEWTRUE / NEWFALSE
        out.write(b"e")
    out.write(b"\x86.")  # TUPLE2, STOP
    return out.getvalue()
