"""The deployment contract, ``deploy.json`` beside the converted models: what an app must feed the model and
what it gets back — the input blob, its shape, layout, colour order and pixel range, the normalisation the
graph already does (the app must not repeat it), the output blob and whether to L2-normalise it, and the
112x112 alignment template. Every value is read from the converted models themselves, never assumed.

What the digest promises, and what it does not: it is a sha256 of the content, an integrity check against
accidents (a hand edit, a merge, a truncated copy) — not tamper evidence: anyone can edit the file and compute
the digest again. What protects the contract against a deliberate edit is that mfnpatch never trusts it:
``load`` re-derives every field it can from the models in the directory (the models' files and blobs, the
input's shape, colour order, range and the normalisation inside the graph, whether the app normalises, the
output's size and blob, the alignment template) and refuses a contract that disagrees, and it computes the
golden images' embeddings again with the reference engine. Only the thresholds, measured on verification
data the directory does not hold, rest on the digest alone (``convert evaluate`` measures them again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mfnpatch.deploy.align import POINTS, SIZE, TEMPLATE
from mfnpatch.deploy.export import graph
from mfnpatch.deploy.mxnet import FOLDED, INPUT_SHAPE, ConvertError
from mfnpatch.deploy.ncnn import param_io
from mfnpatch.deploy.ncnnparam import read_param
from mfnpatch.errors import MfnError
from mfnpatch.finite import at_least
from mfnpatch.fsutil import UnsafePath, atomic_write, inside, read_bounded, sha256_bytes
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


class TargetEngine(_Strict):
    engine: str
    options: str
    holds: bool
    min_cosine: float | None  # None: not a finite number (never holds)
    measured_on: str


class TargetMask(_Strict):
    layer: str
    type: str
    featmask: int = Field(ge=1, le=255)  # ncnn's 31= on the layer's line of the folded .param
    why: str


class TargetAccuracy(_Strict):
    engine: str
    sampled: str
    accuracy: float = Field(ge=0, le=1)
    reference_accuracy: float = Field(ge=0, le=1)
    min_cosine: float | None
    holds: bool


class TargetClass(_Strict):
    """What an app computes on one CPU class of phones, measured under emulation (convert ncnn --arm, convert
    evaluate --arm): the options verified, the layers masked and why, the accuracy on sampled pairs."""

    isa: str
    qemu_cpu: str
    note: str
    verified: list[TargetEngine] = Field(default_factory=list)
    masked: list[TargetMask] = Field(default_factory=list)
    accuracy: dict[str, list[TargetAccuracy]] = Field(default_factory=dict)


class Contract(_Strict):
    schema_version: Literal[1] = 1
    lineage: str | None = None  # the lineage that trained the model (mfnpatch/lineages/); None: a contract before it
    models: dict[str, Model]
    input: Input
    output: Output
    alignment: Alignment
    thresholds: Thresholds | None = None  # measured on the verification pairs (convert evaluate); None until then
    golden: list[Golden] = Field(default_factory=list)
    targets: dict[str, TargetClass] = Field(default_factory=dict)  # phone CPU classes (emulated); none until --arm


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


def make(model_dir: Path, sym, arg, lineage: str | None = None) -> Contract:
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
        lineage=lineage,
        models=models,
        input=_input(steps),
        output=Output(blob_mxnet=sym.list_outputs()[0].removesuffix("_output"), dim=int(out_shapes[0][1]),
                      l2_normalise=True, compare="cosine similarity of the L2-normalised embeddings"),
        alignment=_alignment(),
    )  # fmt: skip


def make_onnx(model_dir: Path, src, lineage: str | None = None) -> Contract:
    """The contract of a model converted from an ONNX source (``onnxsource``): the normalisation that
    ``prepare`` put in front of the graph, the source's output, the one (folded) ncnn model."""
    d = Path(model_dir)
    i, o = param_io(d / f"{FOLDED}.param")
    models = {"ncnn folded": Model(param=f"{FOLDED}.param", bin=f"{FOLDED}.bin", input_blob=i, output_blob=o)}
    steps = [Step(op="subtract", value=src.mean), Step(op="multiply", value=src.scale)]
    return Contract(
        lineage=lineage,
        models=models,
        input=_input(steps),
        output=Output(blob_onnx=src.output, dim=src.dim, l2_normalise=True,
                      compare="cosine similarity of the L2-normalised embeddings"),
        alignment=_alignment(),
    )  # fmt: skip


def with_targets(contract: Contract, targets: dict[str, dict], replaces: frozenset[str] = frozenset()) -> Contract:
    """The contract with what was measured on emulated CPU classes merged in: a target's fields replaced, its
    verified and accuracy rows engine by engine (``replaces``: engines whose old rows go even when no new one
    comes, e.g. int8 no longer within its tolerance)."""
    body = contract.model_dump(mode="json")
    merged = dict(body.get("targets") or {})
    for name, t in targets.items():
        old = merged.get(name, {})
        new = {**old, **t}
        # measurements of other engines stay: rows are replaced engine by engine
        if "verified" in t and "verified" in old:
            mine = {v["engine"] for v in t["verified"]} | replaces
            new["verified"] = [v for v in old["verified"] if v["engine"] not in mine] + t["verified"]
        if "accuracy" in t and "accuracy" in old:
            acc = {s: list(rows) for s, rows in old["accuracy"].items()}
            for s, rows in t["accuracy"].items():
                mine = {r["engine"] for r in rows} | replaces
                acc[s] = [r for r in acc.get(s, []) if r["engine"] not in mine] + rows
            new["accuracy"] = acc
        merged[name] = new
    return Contract.model_validate(body | {"targets": merged})


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


def _convert_json(d: Path) -> dict:
    try:
        data = load_json(Path(d) / "convert.json", limit=4 << 20)
    except MfnError:
        return {}
    return data if isinstance(data, dict) else {}


def source_of(d: Path) -> dict | None:
    """The ONNX source a model directory was converted from (its convert.json says), or None: an MXNet one."""
    data = _convert_json(d)
    return data.get("onnx_source") if data.get("source_kind") == "onnx" else None


def lineage_of(d: Path) -> str | None:
    """The lineage convert.json records for a model directory (None: converted before it was recorded)."""
    name = _convert_json(d).get("lineage")
    return name if isinstance(name, str) else None


def rederive(model_dir: Path) -> Contract:
    """The static part of the contract, computed again from the models in ``model_dir`` (as convert wrote it)."""
    from types import SimpleNamespace

    d = Path(model_dir)
    if source_of(d) is None:
        from mfnpatch.deploy.mxnet import _mx

        sym, arg, _ = _mx().model.load_checkpoint(str(d / "mxnet"), 0)
        return make(d, sym, arg, lineage_of(d))
    from onnx import numpy_helper

    from mfnpatch.deploy.onnxfile import check_onnx

    m = check_onnx(d / "model.onnx")
    inits = {i.name: i for i in m.graph.initializer}
    if "mfnpatch_mean" not in inits or "mfnpatch_scale" not in inits:
        raise ConvertError(f"{d / 'model.onnx'}: not the graph convert ncnn prepared (no normalisation in front)")
    dims = [x.dim_value for x in m.graph.output[0].type.tensor_type.shape.dim]
    src = SimpleNamespace(mean=float(numpy_helper.to_array(inits["mfnpatch_mean"])),
                          scale=float(numpy_helper.to_array(inits["mfnpatch_scale"])),
                          output=source_of(d)["output"], dim=int(dims[-1]) if dims else 0)  # type: ignore[index]  # fmt: skip
    return make_onnx(d, src, lineage_of(d))


def _first_difference(a, b, at: str = "") -> str | None:
    """The first key path where ``a`` and ``b`` differ (numbers to a relative 1e-6: float32 against float64)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            hit = _first_difference(a.get(k), b.get(k), f"{at}.{k}" if at else k)
            if hit:
                return hit
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return at
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            hit = _first_difference(x, y, f"{at}[{i}]")
            if hit:
                return hit
        return None
    if (
        isinstance(a, float | int)
        and isinstance(b, float | int)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return None if abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b)) else at
    return None if a == b else at


STATIC = ("lineage", "models", "input", "output", "alignment")


def check_against_models(model_dir: Path, contract: Contract, path: Path, hint: str) -> None:
    """Refuse a contract whose static part is not what the models say, or whose golden embeddings the reference
    engine does not compute again."""
    import numpy as np

    derived = rederive(model_dir).model_dump(mode="json")
    said = contract.model_dump(mode="json")
    folded = Path(model_dir) / said["models"]["ncnn folded"]["param"]
    in_param = {x.name: int(x.param(31) or 0) for x in read_param(folded).layers if x.param(31)}
    recorded = {m["layer"]: m["featmask"] for t in said["targets"].values() for m in t["masked"]}
    if in_param != recorded:
        raise ConvertError(
            f"{path}: targets' masked layers {recorded or 'none'} are not the feature masks of {folded} "
            f"({in_param or 'none'})",
            hint=hint,
        )
    for key in STATIC:
        where = _first_difference(said[key], derived[key], key)
        if where:
            raise ConvertError(f"{path}: {where} disagrees with the models in {model_dir} (the contract says one "
                               "thing, the converted models another)", hint=hint)  # fmt: skip
    if not contract.golden:
        return
    import cv2

    from mfnpatch.deploy.engines import embeddings_mxnet, embeddings_onnx

    images = []
    for i, g in enumerate(contract.golden):
        data = read_bounded(Path(model_dir) / g.image, f"golden[{i}] image", 1 << 20, hint=hint)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None or img.shape[:2] != tuple(contract.input.shape[2:]):
            raise ConvertError(f"{path}: golden[{i}]: {g.image} is not a {contract.input.shape[2]}x"
                               f"{contract.input.shape[3]} image", hint=hint)  # fmt: skip
        images.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)
    if source_of(model_dir) is None:
        from mfnpatch.deploy.mxnet import _mx

        sym, arg, aux = _mx().model.load_checkpoint(str(Path(model_dir) / "mxnet"), 0)
        got = embeddings_mxnet(sym, arg, aux, x)
    else:
        got = embeddings_onnx(Path(model_dir) / "model.onnx", x)
    for i, (g, e) in enumerate(zip(contract.golden, got, strict=True)):
        want = np.asarray(g.embedding, np.float64)
        cos = float(want @ e / max(np.linalg.norm(want) * np.linalg.norm(e), 1e-24))
        if not at_least(cos, 0.99999):
            raise ConvertError(f"{path}: golden[{i}]'s embedding is not what the model computes for {g.image} "
                               f"(cosine {cos:.6f})", hint=hint)  # fmt: skip


def load(model_dir: Path, against_models: bool = True) -> Contract:
    """``deploy.json`` as written; a missing, hand-edited or malformed contract is a ConvertError naming it, and
    so is one that the models in the directory contradict (``check_against_models``)."""
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
    if against_models:
        check_against_models(model_dir, contract, path, hint)
    return contract
