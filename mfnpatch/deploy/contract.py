"""The deployment contract, ``deploy.json`` beside the converted models: what an app must feed the model and
what it gets back — the input blob, its shape, layout, colour order and pixel range, the normalisation the
graph already does (the app must not repeat it), the output blob and whether to L2-normalise it, and the
112x112 alignment template. Every value is read from the converted models themselves, never assumed.

The file carries a digest of its content: mfnpatch reads it back only as written, and a hand-edited contract
is refused (an app developer who changes it should regenerate it instead)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mfnpatch.deploy.align import POINTS, SIZE, TEMPLATE
from mfnpatch.deploy.export import graph
from mfnpatch.deploy.mxnet import FOLDED, INPUT_SHAPE, ConvertError
from mfnpatch.deploy.ncnn import param_io
from mfnpatch.fsutil import UnsafePath, atomic_write, inside, sha256_bytes
from mfnpatch.schema import SchemaError, load_json

NAME = "deploy.json"
SCALARS = {"_minus_scalar": "subtract", "_plus_scalar": "add", "_mul_scalar": "multiply", "_div_scalar": "divide"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    op: Literal["subtract", "add", "multiply", "divide"]
    value: float


class Model(_Strict):
    param: str
    bin: str
    input_blob: str
    output_blob: str


class Input(_Strict):
    shape: list[int] = Field(min_length=4, max_length=4)
    layout: Literal["NCHW"]
    dtype: Literal["float32"]
    colour_order: Literal["RGB"]
    pixel_range: list[float] = Field(min_length=2, max_length=2)
    opencv_imread: str
    normalisation_in_graph: list[Step]
    app_normalises: bool


class Output(_Strict):
    blob_mxnet: str | None = None  # the MXNet graph's output (MXNet lineage)
    blob_onnx: str | None = None  # the ONNX source's output (PyTorch lineage)
    dim: int = Field(ge=1)
    l2_normalise: bool
    compare: str


class Alignment(_Strict):
    size: list[int] = Field(min_length=2, max_length=2)
    points: list[str] = Field(min_length=5, max_length=5)
    template: list[list[float]] = Field(min_length=5, max_length=5)
    method: str


class FarPoint(_Strict):
    far: float = Field(gt=0, lt=1)
    threshold: float
    tar: float = Field(ge=0, le=1)
    measured_far: float = Field(ge=0, le=1)
    resolvable: bool
    note: str = ""


class SetThresholds(_Strict):
    pairs: int = Field(ge=1)
    same: int = Field(ge=0)
    different: int = Field(ge=0)
    best_accuracy_threshold: float
    best_accuracy: float = Field(ge=0, le=1)
    far: list[FarPoint]


class Thresholds(_Strict):
    measured_with: str
    sets: dict[str, SetThresholds]
    all: SetThresholds | None = None


class Golden(_Strict):
    image: str  # relative to the model directory: a PNG an app decodes (BGR as imread gives it) and feeds as RGB
    set: str
    index: int = Field(ge=0)
    embedding: list[float] = Field(min_length=1)  # MXNet's raw output (before L2 normalisation)
    min_cosine: float = Field(gt=0, le=1)  # what an app's pipeline must reach against it


class Contract(_Strict):
    schema_version: Literal[1] = 1
    models: dict[str, Model]
    input: Input
    output: Output
    alignment: Alignment
    thresholds: Thresholds | None = None  # measured on the verification pairs (convert evaluate); None until then
    golden: list[Golden] = Field(default_factory=list)


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def normalisation(g: dict) -> list[Step]:
    """The scalar ops the graph applies to ``data`` before anything else (the pinned fmobilefacenet.py:
    subtract 127.5, multiply 0.0078125)."""
    nodes = g["nodes"]
    at = next((i for i, n in enumerate(nodes) if n["op"] == "null" and n["name"] == "data"), None)
    steps: list[Step] = []
    while at is not None:
        nxt = [i for i, n in enumerate(nodes) if n["op"] != "null" and any(s == at for s, _, _ in n["inputs"])]
        if len(nxt) != 1 or nodes[nxt[0]]["op"] not in SCALARS:
            break
        n = nodes[nxt[0]]
        steps.append(Step(op=SCALARS[n["op"]], value=float(n["attrs"]["scalar"])))  # type: ignore[arg-type]
        at = nxt[0]
    return steps


def _input(steps: list[Step]) -> Input:
    """0..255 RGB NCHW, with the normalisation the graph does (the app then does none)."""
    return Input(
        shape=list(INPUT_SHAPE), layout="NCHW", dtype="float32", colour_order="RGB", pixel_range=[0.0, 255.0],
        opencv_imread="BGR: convert with cv2.cvtColor(img, cv2.COLOR_BGR2RGB) before feeding the model",
        normalisation_in_graph=steps, app_normalises=not steps,
    )  # fmt: skip


def _alignment() -> Alignment:
    return Alignment(size=[SIZE, SIZE], points=list(POINTS), template=[list(p) for p in TEMPLATE],
                     method="similarity transform of the 5 landmarks onto the template, then warpAffine "
                            "(InsightFace's norm_crop; mfnpatch deploy align makes the reference crop)")  # fmt: skip


def make(model_dir: Path, sym, arg) -> Contract:
    """The contract of a converted model directory, read from its graph and its ncnn models."""
    d = Path(model_dir)
    steps = normalisation(graph(sym))
    _, out_shapes, _ = sym.infer_shape(data=INPUT_SHAPE, **{k: v.shape for k, v in arg.items()})
    models = {}
    for label, sub in (("ncnn folded", d), ("ncnn unfolded", d / "unfolded")):
        i, o = param_io(sub / f"{FOLDED}.param")
        models[label] = Model(param=str((sub / f"{FOLDED}.param").relative_to(d)),
                              bin=str((sub / f"{FOLDED}.bin").relative_to(d)), input_blob=i, output_blob=o)  # fmt: skip
    return Contract(
        models=models,
        input=_input(steps),
        output=Output(blob_mxnet=sym.list_outputs()[0].removesuffix("_output"), dim=int(out_shapes[0][1]),
                      l2_normalise=True, compare="cosine similarity of the L2-normalised embeddings"),
        alignment=_alignment(),
    )  # fmt: skip


def make_onnx(model_dir: Path, src) -> Contract:
    """The contract of a model converted from an ONNX source (``onnxsource``): the normalisation that
    ``prepare`` put in front of the graph, the source's output, the one (folded) ncnn model."""
    d = Path(model_dir)
    i, o = param_io(d / f"{FOLDED}.param")
    models = {"ncnn folded": Model(param=f"{FOLDED}.param", bin=f"{FOLDED}.bin", input_blob=i, output_blob=o)}
    steps = [Step(op="subtract", value=src.mean), Step(op="multiply", value=src.scale)]
    return Contract(
        models=models,
        input=_input(steps),
        output=Output(blob_onnx=src.output, dim=src.dim, l2_normalise=True,
                      compare="cosine similarity of the L2-normalised embeddings"),
        alignment=_alignment(),
    )  # fmt: skip


def measured(contract: Contract, thresholds: dict, golden: list[dict]) -> Contract:
    """The contract with what ``convert evaluate`` measured: thresholds and golden inputs (validated)."""
    body = contract.model_dump(mode="json") | {"thresholds": thresholds, "golden": golden}
    return Contract.model_validate(body)


def write(model_dir: Path, contract: Contract) -> Path:
    body = contract.model_dump(mode="json")
    doc = body | {"digest": "sha256:" + sha256_bytes(_canonical(body))}
    path = Path(model_dir) / NAME
    atomic_write(path, json.dumps(doc, indent=2) + "\n")
    return path


def load(model_dir: Path) -> Contract:
    """``deploy.json`` as written; a missing, hand-edited or malformed contract is a ConvertError naming it."""
    path = Path(model_dir) / NAME
    hint = f"regenerate it: mfnpatch convert ncnn PREFIX,EPOCH -o {model_dir}"
    if not path.is_file():
        raise ConvertError(f"{path}: no deployment contract", hint=hint)
    try:
        doc = load_json(path, limit=4 << 20)
    except SchemaError as e:
        raise ConvertError(str(e), hint=hint) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("digest"), str):
        raise ConvertError(f"{path}: not a deployment contract (no digest)", hint=hint)
    digest = doc.pop("digest")
    if digest != "sha256:" + sha256_bytes(_canonical(doc)):
        raise ConvertError(f"{path}: edited by hand (its digest does not match its content)", hint=hint)
    try:
        contract = Contract.model_validate(doc)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConvertError(f"{path}: {where}: {first['msg']}", hint=hint) from None
    for label, m in contract.models.items():
        try:  # a path from the file: never read one outside the model directory
            p = inside(model_dir, Path(model_dir) / m.param, f"{path}: {label}: param")
        except UnsafePath as e:
            raise ConvertError(e.message, hint=hint) from None
        if not p.is_file():
            raise ConvertError(f"{path}: {label}: {p} is missing", hint=hint)
        if param_io(p) != (m.input_blob, m.output_blob):
            raise ConvertError(f"{path}: {label}: blobs {m.input_blob}/{m.output_blob} are not {p}'s", hint=hint)
    for i, g in enumerate(contract.golden):
        try:
            p = inside(model_dir, Path(model_dir) / g.image, f"{path}: golden[{i}].image")
        except UnsafePath as e:
            raise ConvertError(e.message, hint=hint) from None
        if not p.is_file():
            raise ConvertError(f"{path}: golden[{i}]: {p} is missing", hint="measure again: mfnpatch convert evaluate "
                               f"{model_dir} --data DATA")  # fmt: skip
        if len(g.embedding) != contract.output.dim:
            raise ConvertError(f"{path}: golden[{i}]: {len(g.embedding)} values, the output has {contract.output.dim}",
                               hint=hint)  # fmt: skip
    return contract
