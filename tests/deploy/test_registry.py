"""The engine registry: every engine a typed record with one name, options read from its fields, and the
arithmetic of a model counted from its graph."""

from __future__ import annotations

import importlib.util

import pytest

from mfnpatch.deploy.mxnet import ConvertError
from mfnpatch.deploy.registry import (
    ARM_TARGETS,
    DENORMALS_FLUSHED,
    DENORMALS_KEPT,
    HOST_ENGINES,
    MXNET,
    ONNXRUNTIME,
    TARGETS,
    Engine,
    arm_engines,
    lookup,
    parse_targets,
    reference,
)


def test_every_engine_has_one_name_and_the_old_names_still_read():
    every = [*HOST_ENGINES["mxnet"], *DENORMALS_KEPT, DENORMALS_FLUSHED, MXNET, *arm_engines(ARM_TARGETS, int8=True)]
    names = [e.name for e in every]
    assert len(names) == len(set(names))
    # the names evaluate.json and bench.json have always carried
    assert [e.name for e in HOST_ENGINES["mxnet"]] == ["onnxruntime", "ncnn folded", "ncnn unfolded",
                                                         "ncnn folded fp16", "ncnn unfolded fp16"]  # fmt: skip
    assert [e.name for e in DENORMALS_KEPT] == ["mxnet, denormals kept", "ncnn folded, denormals kept"]
    assert DENORMALS_FLUSHED.name == "mxnet, denormals flushed"
    assert lookup(["ncnn  folded   fp16"], "mxnet") == [Engine("ncnn", "folded", "fp16")]
    assert lookup(["ncnn folded app @ cortex-a76"], "mxnet") == [Engine("ncnn", "folded", "app", target="cortex-a76")]
    with pytest.raises(ConvertError, match="not an engine of this model"):
        lookup(["ncnn unfolded"], "onnx")
    assert reference("mxnet") == MXNET and reference("onnx") == ONNXRUNTIME


def test_options_come_from_the_fields():
    e = Engine("ncnn", "folded", "fp16-storage", target="cortex-a76")
    assert e.ncnn_options() == {"use_fp16_storage": True, "use_fp16_packed": True, "use_fp16_arithmetic": False,
                                "use_bf16_storage": False, "use_bf16_packed": False}  # fmt: skip
    assert Engine("ncnn", "folded", "app", target="max").ncnn_options() == {}  # an app's defaults, untouched
    assert not any(Engine("ncnn", "folded").ncnn_options().values())
    assert Engine("ncnn", "folded", "bf16").ncnn_options()["use_bf16_storage"]
    assert Engine("ncnn", "unfolded").files() == ("unfolded/mobilefacenet.param", "unfolded/mobilefacenet.bin")
    assert DENORMALS_KEPT[1].files()[0] == "unflushed/mobilefacenet.param"
    assert Engine("ncnn", "folded", "int8", target="cortex-a53").files()[0] == "int8/mobilefacenet.param"
    assert e.emulated and not Engine("ncnn", "folded").emulated and e.half


def test_targets():
    assert ARM_TARGETS == ("cortex-a53", "cortex-a76", "max")
    assert "asimdhp" not in TARGETS["cortex-a53"].features and "asimdhp" in TARGETS["cortex-a76"].features
    assert parse_targets("all") == list(ARM_TARGETS) and parse_targets("cortex-a76, cortex-a76") == ["cortex-a76"]
    with pytest.raises(ConvertError, match="not an emulated CPU class"):
        parse_targets("cortex-x4")


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mxnet", "onnx", "onnxruntime", "ncnn", "pnnx")),
    reason="needs the cpu environment (mxnet, onnx, onnxruntime, ncnn, pnnx): mfnpatch env create cpu",
)
def test_the_arithmetic_is_counted_from_the_graph(tmp_path):
    """MobileFaceNet's 221 M multiply-adds (the paper's Table 2), counted from the converted ONNX graph; a narrower
    net counts less (nothing is assumed)."""
    import mxnet as mx
    from mfn_symbol import save_checkpoint

    from mfnpatch.deploy.export import export_onnx
    from mfnpatch.deploy.flops import gflop, multiply_adds
    from mfnpatch.deploy.mxnet import load_checkpoint, slim_symbol

    sym, arg, aux = load_checkpoint(save_checkpoint(mx, str(tmp_path / "m"), 1, classes=None))
    sym, arg = slim_symbol(sym, arg)
    export_onnx(sym, arg, aux, tmp_path / "m.onnx")
    n = multiply_adds(tmp_path / "m.onnx")
    assert 220e6 < n < 222e6 and abs(gflop(tmp_path / "m.onnx") - 2 * n / 1e9) < 1e-12
