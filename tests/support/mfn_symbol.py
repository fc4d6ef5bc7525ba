"""A MobileFaceNet-shaped MXNet symbol with random weights, for conversion tests and benchmarks.

Built from the paper's Table 1 (arXiv 1804.07573) with the op vocabulary InsightFace's y1 uses: input
scaling (_minus_scalar, _mul_scalar), Convolution (depthwise via num_group), BatchNorm (fix_gamma on
the embedding's BN), LeakyReLU prelu, elemwise_add residuals, a linear 7x7 GDConv, FullyConnected
pre_fc1 + BatchNorm fc1. With ``classes`` it has the training head (fc7 + SoftmaxOutput), so slimming has
something to remove. No InsightFace code is used.
"""

from __future__ import annotations

import numpy as np

BN_MOMENTUM = [0.9]  # 0 while calibrating: one training-mode pass then sets the moving statistics


def _conv(mx, x, name, filters, kernel=1, stride=1, pad=0, group=1, act=True):
    x = mx.sym.Convolution(
        x,
        num_filter=filters,
        kernel=(kernel, kernel),
        stride=(stride, stride),
        pad=(pad, pad),
        num_group=group,
        no_bias=True,
        name=f"{name}_conv2d",
    )
    x = mx.sym.BatchNorm(x, fix_gamma=False, momentum=BN_MOMENTUM[0], name=f"{name}_batchnorm")
    if act:
        x = mx.sym.LeakyReLU(x, act_type="prelu", name=f"{name}_relu")
    return x


def _bottleneck(mx, x, name, cin, cout, t, stride):
    h = _conv(mx, x, f"{name}_conv_sep", cin * t)
    h = _conv(mx, h, f"{name}_conv_dw", cin * t, kernel=3, stride=stride, pad=1, group=cin * t)
    return _conv(mx, h, f"{name}_conv_proj", cout, act=False)


def _residuals(mx, x, name, c, n, t):
    for i in range(n):
        x = _bottleneck(mx, x, f"{name}_block{i}", c, c, t, 1) + x
    return x


def mobilefacenet(mx, emb: int = 128, classes: int | None = None, width: int = 1):
    """y1-like: 112x112x3 -> emb (fc1). ``width`` < 1 is not supported; blocks follow Table 1."""
    data = mx.sym.Variable("data")
    x = (data - 127.5) * 0.0078125
    x = _conv(mx, x, "conv_1", 64 * width, kernel=3, stride=2, pad=1)
    x = _conv(mx, x, "conv_2_dw", 64 * width, kernel=3, pad=1, group=64 * width)
    x = _bottleneck(mx, x, "dconv_23", 64 * width, 64 * width, 2, 2)
    x = _residuals(mx, x, "res_3", 64 * width, 4, 2)
    x = _bottleneck(mx, x, "dconv_34", 64 * width, 128 * width, 4, 2)
    x = _residuals(mx, x, "res_4", 128 * width, 6, 2)
    x = _bottleneck(mx, x, "dconv_45", 128 * width, 128 * width, 4, 2)
    x = _residuals(mx, x, "res_5", 128 * width, 2, 2)
    x = _conv(mx, x, "conv_6sep", 512)
    x = _conv(mx, x, "conv_6dw7_7", 512, kernel=7, group=512, act=False)
    # as the pinned fmobilefacenet.py: the weight variable is fc1_weight, the op (and its bias) pre_fc1
    w1 = mx.sym.Variable("fc1_weight", shape=(emb, 512), lr_mult=1.0, wd_mult=10.0)
    x = mx.sym.FullyConnected(x, weight=w1, num_hidden=emb, name="pre_fc1")
    fc1 = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, momentum=BN_MOMENTUM[0], name="fc1")
    if classes is None:
        return fc1
    w = mx.sym.Variable("fc7_weight", shape=(classes, emb))
    fc7 = mx.sym.FullyConnected(fc1, weight=w, no_bias=True, num_hidden=classes, name="fc7")
    return mx.sym.Group([mx.sym.BlockGrad(fc1), mx.sym.SoftmaxOutput(fc7, name="softmax")])


def random_params(mx, sym, seed: int = 0, fix_gamma_value: float = 0.0):
    """Random weights, and BatchNorm statistics measured on random images (so activations keep a sane
    scale, as in a trained model). The gamma of fix_gamma BatchNorms is set to ``fix_gamma_value``: MXNet
    ignores it, checkpoints often hold 0 there, and a converter must not use it."""
    rng = np.random.default_rng(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
    arg, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), arg_shapes, strict=True):
        if name in ("data", "softmax_label"):
            continue
        if name.endswith("_relu_gamma"):
            v = rng.uniform(0.1, 0.3, shape)
        elif name.endswith("_gamma"):
            v = np.full(shape, fix_gamma_value) if name == "fc1_gamma" else rng.uniform(0.5, 1.5, shape)
        elif name.endswith("_beta") or name.endswith("_bias"):
            v = rng.normal(0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            v = rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), shape)
        arg[name] = mx.nd.array(v.astype(np.float32))
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes, strict=True):
        aux[name] = mx.nd.array(np.zeros(shape) if name.endswith("moving_mean") else np.ones(shape))
    # One training pass with BatchNorm momentum 0 sets every moving mean and variance to real statistics
    # (MXNet 1.9 updates them in the backward pass).
    BN_MOMENTUM[0] = 0.0
    try:
        calib = mobilefacenet(mx, emb=arg["fc1_weight"].shape[0])
    finally:
        BN_MOMENTUM[0] = 0.9
    images = mx.nd.array(rng.uniform(0, 255, (16, 3, 112, 112)).astype(np.float32))
    feed = {"data": images, **{k: v.copy() for k, v in arg.items() if k in calib.list_arguments()}}
    grads = {k: mx.nd.zeros_like(v) for k, v in feed.items()}
    ex = calib.bind(mx.cpu(), feed, args_grad=grads, aux_states=aux, grad_req="write")
    ex.forward(is_train=True)
    ex.backward(mx.nd.ones_like(ex.outputs[0]))
    mx.nd.waitall()
    return arg, aux


def save_checkpoint(mx, prefix: str, epoch: int = 1, classes: int | None = 20, seed: int = 0) -> str:
    import os

    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    sym = mobilefacenet(mx, classes=classes)
    arg, aux = random_params(mx, sym, seed)
    mx.model.save_checkpoint(prefix, epoch, sym, arg, aux)
    return f"{prefix},{epoch}"
