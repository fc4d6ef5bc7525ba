"""An ncnn ``.param`` file as data: read strictly (every fault a ConvertError naming the file and the line), and
written back byte for byte with the changes asked for (``with_params``: a layer's ``key=value`` set, e.g. the
feature mask ``31=`` that turns a precision off for one layer).

The format (ncnn's ``src/net.cpp``, ``load_param``)::

    7767517
    LAYERS BLOBS
    TYPE NAME BOTTOMS TOPS bottom... top... key=value ...

A value is a number, or an array written ``-23300-key=N,a,b,...`` as ``-(23300+key)=N,...``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mfnpatch.deploy.mxnet import ConvertError
from mfnpatch.errors import MfnError
from mfnpatch.fsutil import read_bounded

MAGIC = "7767517"
MAX_PARAM_BYTES = 16 << 20  # MobileFaceNet's is 20 KB; the largest published ncnn models' about 1 MB
_NAME = re.compile(r"^[^\s=]{1,255}\Z")
_KEY = re.compile(r"^-?\d{1,6}\Z")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_VALUE = re.compile(rf"^{_NUM}(?:,{_NUM})*\Z")  # a number, or an array: N,a,b,...
HINT = "convert the model again: mfnpatch convert ncnn CHECKPOINT -o DIR"


@dataclass(frozen=True)
class Layer:
    """One line of an ncnn param file: its type, name, input blobs, output blobs and ``key=value`` params."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: tuple[tuple[str, str], ...] = ()
    line: int = 0

    def param(self, key: int | str) -> str | None:
        return dict(self.params).get(str(key))

    def text(self) -> str:
        cols = [self.type, self.name, str(len(self.bottoms)), str(len(self.tops)), *self.bottoms, *self.tops]
        return " ".join(cols + [f"{k}={v}" for k, v in self.params])


@dataclass
class ParamFile:
    path: str
    layers: list[Layer]
    blobs: int
    lines: list[str] = field(default_factory=list)  # the file's lines, as read

    @property
    def input(self) -> str:
        return next(x for x in self.layers if x.type == "Input").tops[0]

    @property
    def output(self) -> str:
        return self.layers[-1].tops[-1]

    def counts(self) -> Counter:
        return Counter(x.type for x in self.layers)

    def layer(self, name: str) -> Layer:
        for x in self.layers:
            if x.name == name:
                return x
        raise ConvertError(f"{self.path}: no layer {name!r}", hint=HINT)

    def with_params(self, changes: dict[str, dict[str, str | None]]) -> str:
        """The file's text with, for each named layer, its params set (a value) or removed (None); every other
        line as it was."""
        missing = [n for n in changes if n not in {x.name for x in self.layers}]
        if missing:
            raise ConvertError(f"{self.path}: no layer {missing[0]!r}", hint=HINT)
        lines = list(self.lines)
        for x in self.layers:
            if x.name not in changes:
                continue
            params = dict(x.params)
            for k, v in changes[x.name].items():
                if v is None:
                    params.pop(k, None)
                else:
                    params[k] = v
            lines[x.line - 1] = Layer(x.type, x.name, x.bottoms, x.tops, tuple(params.items())).text()
        return "\n".join(lines) + "\n"


def parse_param(text: str, path: str) -> ParamFile:
    """A param file's text, checked line by line; a ConvertError names the line and what is wrong with it."""
    lines = text.splitlines()

    def bad(n: int, why: str) -> ConvertError:
        return ConvertError(f"{path}:{n}: {why}", hint=HINT)

    if not lines or lines[0].strip() != MAGIC:
        raise bad(1, f"not an ncnn param file (its first line is not the magic number {MAGIC})")
    head = lines[1].split() if len(lines) > 1 else []
    if len(head) != 2 or not all(t.isascii() and t.isdigit() and len(t) <= 7 for t in head):
        raise bad(2, f"{(lines[1] if len(lines) > 1 else '')[:80]!r} is not 'LAYERS BLOBS' (two counts)")
    n_layers, n_blobs = int(head[0]), int(head[1])
    layers: list[Layer] = []
    for n, ln in enumerate(lines[2:], 3):
        p = ln.split()
        if not p:
            continue
        if len(p) < 4 or not all(t.isascii() and t.isdigit() and len(t) <= 5 for t in p[2:4]):
            raise bad(n, f"{ln[:80]!r} is not 'TYPE NAME BOTTOMS TOPS ...'")
        nin, nout = int(p[2]), int(p[3])
        if len(p) < 4 + nin + nout:
            raise bad(n, f"layer {p[1]} names {nin} input and {nout} output blobs but the line holds fewer")
        if not (_NAME.match(p[0]) and _NAME.match(p[1])):
            raise bad(n, f"layer type or name {p[0]!r} {p[1]!r} is not a name")
        blobs = p[4 : 4 + nin + nout]
        params = []
        for tok in p[4 + nin + nout :]:
            k, eq, v = tok.partition("=")
            if not eq or not _KEY.match(k) or not _VALUE.match(v):
                raise bad(n, f"layer {p[1]}: {tok[:40]!r} is not key=value (a number or a list of numbers)")
            params.append((k, v))
        for b in blobs:
            if not _NAME.match(b):
                raise bad(n, f"layer {p[1]}: blob {b[:40]!r} is not a name")
        layers.append(Layer(p[0], p[1], tuple(blobs[:nin]), tuple(blobs[nin:]), tuple(params), n))
    if len(layers) != n_layers:
        raise bad(2, f"says {n_layers} layers, the file holds {len(layers)}")
    if not layers or not any(x.type == "Input" for x in layers):
        raise bad(3, "no Input layer: a model's first layer takes the image")
    if not layers[-1].tops:
        raise bad(layers[-1].line, f"the last layer {layers[-1].name} has no output blob")
    return ParamFile(path, layers, n_blobs, lines)


def read_param(path: Path) -> ParamFile:
    """``path`` (a regular file of at most 16 MiB, UTF-8) parsed; any fault a ConvertError."""
    try:
        data = read_bounded(Path(path), "ncnn param file", MAX_PARAM_BYTES, hint=HINT)
    except MfnError as e:
        raise ConvertError(e.message, hint=e.hint) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConvertError(f"{path}: not an ncnn param file (not UTF-8 text at byte {e.start})", hint=HINT) from None
    return parse_param(text, str(path))
