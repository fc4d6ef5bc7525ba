"""The engines a converted model runs on, as typed records: which runtime, which of the directory's graphs, which
weights, which precision, on which CPU. Nothing decides by parsing an engine's name: ``convert verify``,
``convert evaluate`` and ``bench`` take records from here and read their fields; a name is only how a record is
shown and asked for (``--engines``), and each record has exactly one.

Targets: ``host`` is this machine's CPU (x86 here). The ARM targets are CPU classes of phones, run under QEMU
user-mode emulation with the aarch64 build of the same ncnn (the ``arm64-qemu`` environment): ``cortex-a53``
(ARMv8.0: NEON fp32, no fp16 arithmetic), ``cortex-a76`` (ARMv8.2: fp16 arithmetic, dot product) and ``max``
(QEMU's newest: bf16, i8mm). On each, ``app`` is ncnn's default options, what an app gets without asking (on
ARMv8.2: fp16 storage *and* arithmetic, so an explicit fp16 row would repeat it), and the precisions that differ
from it are switched explicitly: fp32 everywhere, fp16 storage alone on ARMv8.2, bf16 where the CPU has it.

A new engine is a record here (and, for a new runtime, its runner in ``engines.py``); a new CPU class is a
``Target``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mfnpatch.deploy.mxnet import ConvertError

Kind = Literal["mxnet", "onnxruntime", "ncnn"]
Graph = Literal["slim", "onnx", "folded", "unfolded"]
Weights = Literal["converted", "denormals kept", "denormals flushed"]
# fp32: ncnn's half precisions off; fp16: fp16 storage and arithmetic on; fp16-storage: storage only; bf16: bf16
# storage; app: ncnn's defaults as an app gets them; int8: the int8 model (quantised weights, int8 arithmetic)
Precision = Literal["fp32", "fp16", "fp16-storage", "bf16", "app", "int8"]

FP16 = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic")
BF16 = ("use_bf16_storage", "use_bf16_packed")


@dataclass(frozen=True)
class Target:
    """A CPU an engine runs on: this machine, or a phone's CPU class emulated by QEMU."""

    name: str
    qemu_cpu: str | None  # None: this machine
    isa: str
    features: tuple[str, ...]  # what ncnn can use there (checked by the doctor under emulation)
    precisions: tuple[Precision, ...]  # what is run there, "app" first where it is a phone
    note: str

    @property
    def emulated(self) -> bool:
        return self.qemu_cpu is not None


HOST = Target("host", None, "this machine", (), ("fp32", "fp16"), "this machine's CPU")
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        HOST,
        Target("cortex-a53", "cortex-a53", "ARMv8.0-A", ("asimd",), ("app", "fp32", "int8"),
               "phones up to about 2018: NEON fp32; no fp16 arithmetic (no asimdhp)"),
        Target("cortex-a76", "cortex-a76", "ARMv8.2-A", ("asimd", "asimdhp", "asimddp"),
               ("app", "fp32", "fp16-storage", "int8"),
               "nearly every phone since 2019: fp16 arithmetic (asimdhp) on by default in ncnn, dot product"),
        Target("max", "max", "ARMv9-A (QEMU's max)", ("asimd", "asimdhp", "asimddp", "bf16", "i8mm"),
               ("app", "fp32", "bf16", "int8"), "the newest cores: bf16 and int8 matrix multiply (i8mm)"),
    )
}  # fmt: skip
ARM_TARGETS = tuple(n for n, t in TARGETS.items() if t.emulated)


@dataclass(frozen=True)
class Engine:
    kind: Kind
    graph: Graph
    precision: Precision = "fp32"
    weights: Weights = "converted"
    target: str = "host"

    @property
    def name(self) -> str:
        """How the engine is shown and asked for: ``ncnn folded fp16``, ``mxnet, denormals kept``,
        ``ncnn folded app @ cortex-a76``."""
        base = {"mxnet": "mxnet", "onnxruntime": "onnxruntime"}.get(self.kind, f"ncnn {self.graph}")
        if self.precision != "fp32":
            base += f" {self.precision}"
        if self.weights != "converted":
            base += f", {self.weights}"
        return base if self.target == "host" else f"{base} @ {self.target}"

    @property
    def emulated(self) -> bool:
        return TARGETS[self.target].emulated

    @property
    def half(self) -> bool:
        """Whether it computes in less than float32 somewhere (its cosine tolerance is fp16's)."""
        return self.precision != "fp32"

    def ncnn_options(self) -> dict[str, bool]:
        """ncnn's Option fields this engine sets (``app`` sets none: ncnn's defaults, as an app gets them)."""
        if self.precision == "app":
            return {}
        on = {"fp16": FP16, "fp16-storage": FP16[:2], "bf16": BF16}.get(self.precision, ())
        return {o: o in on for o in FP16 + BF16}

    def files(self) -> tuple[str, str]:
        """The ncnn model's param and bin, relative to the model directory."""
        sub = {"unfolded": "unfolded/", "folded": ""}[self.graph]
        if self.weights == "denormals kept":
            sub = "unflushed/"
        if self.precision == "int8":
            sub += "int8/"
        return f"{sub}mobilefacenet.param", f"{sub}mobilefacenet.bin"


MXNET = Engine("mxnet", "slim")
INT8 = Engine("ncnn", "folded", "int8")  # the int8 model (convert int8) on this machine
ONNXRUNTIME = Engine("onnxruntime", "onnx")

# what runs on this machine, by the source a directory was converted from
HOST_ENGINES: dict[str, tuple[Engine, ...]] = {
    "mxnet": (ONNXRUNTIME, Engine("ncnn", "folded"), Engine("ncnn", "unfolded"), Engine("ncnn", "folded", "fp16"),
              Engine("ncnn", "unfolded", "fp16")),
    "onnx": (Engine("ncnn", "folded"), Engine("ncnn", "folded", "fp16")),
}  # fmt: skip
DENORMALS_KEPT = (Engine("mxnet", "slim", weights="denormals kept"), Engine("ncnn", "folded", weights="denormals kept"))
DENORMALS_FLUSHED = Engine("mxnet", "slim", weights="denormals flushed")


def reference(source_kind: str) -> Engine:
    """What every other engine is judged against: MXNet for a checkpoint, onnxruntime for an ONNX source."""
    return MXNET if source_kind == "mxnet" else ONNXRUNTIME


def arm_engines(targets: list[str] | tuple[str, ...], int8: bool = False) -> list[Engine]:
    """The folded ncnn model on each emulated target, once per precision run there (int8 only when asked: it
    needs the int8 model)."""
    out = []
    for t in targets:
        for p in TARGETS[t].precisions:
            if p != "int8" or int8:
                out.append(Engine("ncnn", "folded", p, target=t))
    return out


def parse_targets(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["all"]:
        return list(ARM_TARGETS)
    for n in names:
        if n not in ARM_TARGETS:
            raise ConvertError(f"--arm {n!r}: not an emulated CPU class", hint="one of: " + ", ".join(ARM_TARGETS) +
                               ", or all")  # fmt: skip
    return list(dict.fromkeys(names))


def lookup(names: list[str], source_kind: str) -> list[Engine]:
    """The engines asked for by name (``--engines``), for a directory converted from ``source_kind``."""
    known = {e.name: e for e in (*HOST_ENGINES[source_kind], INT8, *arm_engines(ARM_TARGETS, int8=True))}
    out = []
    for n in names:
        e = known.get(" ".join(n.split()))
        if e is None:
            here = ", ".join(e.name for e in HOST_ENGINES[source_kind])
            raise ConvertError(f"--engines: {n!r} is not an engine of this model",
                               hint=f"engines: {here}; on an emulated phone: 'ncnn folded app @ cortex-a76' and the "
                               "like (--arm)")  # fmt: skip
        out.append(e)
    return list(dict.fromkeys(out))
