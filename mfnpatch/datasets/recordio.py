"""MXNet's RecordIO as dmlc-core writes and reads it, and the ``IRHeader`` that MXNet's ``recordio.pack`` puts
in front of each payload — without MXNet, so a dataset can be checked and built on any machine.

A record on disk (dmlc-core ``src/recordio.cc``)::

    uint32 magic 0xced7230a | uint32 lrecord = cflag << 29 | length | payload | zero padding to 4 bytes

A payload that holds the magic number at a 4-byte-aligned position is split there into parts: the first
part has ``cflag`` 1, middle parts 2, the last 3, and the reader puts the magic back between them. A whole
record has ``cflag`` 0.

An MXNet record payload (``mxnet/recordio.py``, ``pack``)::

    struct IRHeader { uint32 flag; float32 label; uint64 id; uint64 id2; }   # '<IfQQ', 24 bytes
    float32 labels[flag]     # when the label is an array: flag = its length, the scalar label is 0
    image bytes

``train.idx`` is text, one ``key<TAB>offset`` line per record, in the order the records were written.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from mfnpatch.errors import MfnError
from mfnpatch.fsutil import replacing

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
MAX_LENGTH = 1 << 29  # dmlc: "RecordIO only accept record less than 2^29 bytes"
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24


class RecordError(MfnError):
    """A record that is not what the format says, at a byte offset."""

    def __init__(self, offset: int, message: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.offset = offset


def align4(n: int) -> int:
    return (n + 3) & ~3


def encode_record(payload: bytes) -> bytes:
    """One record exactly as dmlc-core's ``RecordIOWriter::WriteRecord`` writes it (parts split at the magic)."""
    n = len(payload)
    if n >= MAX_LENGTH:
        raise ValueError(f"a RecordIO record holds less than 2^29 bytes, not {n}")
    out = bytearray()
    dptr = 0
    lower = n & ~3
    i = payload.find(MAGIC_BYTES)
    while 0 <= i < lower:
        if i % 4 == 0:
            out += MAGIC_BYTES + struct.pack("<I", ((1 if dptr == 0 else 2) << 29) | (i - dptr))
            out += payload[dptr:i]
            dptr = i + 4
            i = payload.find(MAGIC_BYTES, i + 4)
        else:
            i = payload.find(MAGIC_BYTES, i + 1)
    out += MAGIC_BYTES + struct.pack("<I", ((3 if dptr else 0) << 29) | (n - dptr))
    out += payload[dptr:]
    out += b"\0" * (align4(n) - n)
    return bytes(out)


def read_record(src, offset: int) -> tuple[bytes, int]:
    """The payload of the record at ``offset`` and the offset just after it; every part is checked (magic,
    continuation flags, length within the file). ``src`` is bytes-like, or an open file descriptor read with
    ``pread`` (nothing mapped into this process: a few records of a large file cost a few reads)."""
    if isinstance(src, int):
        size = os.fstat(src).st_size

        def read(pos: int, n: int) -> bytes:
            return os.pread(src, n, pos)
    else:
        size = len(src)

        def read(pos: int, n: int) -> bytes:
            return bytes(src[pos : pos + n])

    parts: list[bytes] = []
    pos = offset
    while True:
        if pos < 0 or pos + 8 > size:
            what = "the record" if pos == offset else f"part {len(parts) + 1} of the record"
            raise RecordError(pos, f"{what} at byte {pos} is cut off by the end of the file ({size} bytes)")
        magic, lrec = struct.unpack("<II", read(pos, 8))
        if magic != MAGIC:
            raise RecordError(
                pos, f"bad magic 0x{magic:08x} at byte {pos} (a RecordIO record starts with 0x{MAGIC:08x})"
            )
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        if (pos == offset and cflag not in (0, 1)) or (pos != offset and cflag not in (2, 3)):
            expected = "0 or 1 (a record's first part)" if pos == offset else "2 or 3 (a continuation)"
            raise RecordError(pos, f"continuation flag {cflag} at byte {pos} where {expected} belongs")
        end = pos + 8 + align4(length)
        if end > size:
            raise RecordError(pos, f"record length {length} at byte {pos} runs past the end of the file ({size} bytes)")
        parts.append(read(pos + 8, length))
        if cflag in (0, 3):
            return MAGIC_BYTES.join(parts), end
        pos = end


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | tuple[float, ...]  # a tuple when flag > 0 (the label array)
    id: int
    id2: int = 0

    @property
    def first_label(self) -> float:
        """What the pinned FaceImageIter takes as the class: the label, or its first element."""
        return self.label[0] if isinstance(self.label, tuple) else self.label


def pack(label: float | Sequence[float], id: int, id2: int = 0, data: bytes = b"") -> bytes:
    """``mxnet.recordio.pack(IRHeader(0, label, id, id2), data)``: an array label sets flag to its length."""
    if isinstance(label, (int, float)):
        return struct.pack(IR_FORMAT, 0, float(label), id, id2) + data
    labels = [float(x) for x in label]
    return struct.pack(IR_FORMAT, len(labels), 0.0, id, id2) + struct.pack(f"<{len(labels)}f", *labels) + data


def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
    """``mxnet.recordio.unpack``: the header and the bytes after it (the image)."""
    if len(payload) < IR_SIZE:
        raise ValueError(f"{len(payload)} bytes, shorter than an IRHeader ({IR_SIZE})")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, payload)
    if flag == 0:
        return IRHeader(flag, label, id_, id2), payload[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(payload) < end:
        raise ValueError(f"the header says {flag} labels, but the record ends after {len(payload)} bytes")
    return IRHeader(flag, struct.unpack_from(f"<{flag}f", payload, IR_SIZE), id_, id2), payload[end:]


class IndexedWriter:
    """``mxnet.recordio.MXIndexedRecordIO(idx, rec, 'w')``: records appended to the ``.rec``, one ``key\\toffset``
    line per record in the ``.idx``. Byte for byte what MXNet writes (tests/datasets check it against MXNet)."""

    def __init__(self, rec, idx):
        self._rec, self._idx = rec, idx
        self.offset = 0
        self.count = 0

    def write(self, key: int, payload: bytes) -> None:
        data = encode_record(payload)
        self._rec.write(data)
        self._idx.write(f"{key}\t{self.offset}\n".encode())
        self.offset += len(data)
        self.count += 1


@contextmanager
def indexed_writer(rec_path: Path, idx_path: Path) -> Iterator[IndexedWriter]:
    """Write a ``.rec``/``.idx`` pair all or nothing: both appear, complete, only when the block ends."""
    with ExitStack() as stack:
        rec_tmp = stack.enter_context(replacing(Path(rec_path)))
        idx_tmp = stack.enter_context(replacing(Path(idx_path)))
        with open(rec_tmp, "wb") as rec, open(idx_tmp, "wb") as idx:
            w = IndexedWriter(rec, idx)
            yield w
            rec.flush()
            idx.flush()
            os.fsync(rec.fileno())
            os.fsync(idx.fileno())
