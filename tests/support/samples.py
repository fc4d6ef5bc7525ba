"""Log text in the pinned code's real line formats, shared by the tests of the parser and of the verdicts."""

from __future__ import annotations

from pathlib import Path

PY3_RUN = """\
use cpu
num_layers 1
image_size [112, 112]
num_classes 20
Called with argument: Namespace(batch_size=16, beta=1000.0, ckpt=2, ctx_num=1, data_dir='/tmp/synth', emb_size=128, \
fc7_wd_mult=10.0, loss_type=0, lr=0.1, lr_steps='40,60', network='y1', per_batch_size=16, \
prefix='/tmp/m/model-y1-softmax', pretrained='', target='lfw,cfp_fp,agedb_30', verbose=20, wd=4e-05)
init mobilefacenet 1
INFO:root:loading recordio /tmp/synth/train.rec...
header0 label [401. 421.]
id2range 20
400
rand_mirror 1
loading bin 0
(200, 3, 112, 112)
ver lfw
lr_steps [40, 60]
[14:36:24] ../src/operator/nn/./mkldnn/mkldnn_base.cc:74: Allocate 73728 bytes with malloc directly
/usr/lib/python3/site-packages/mxnet/module/base_module.py:466: UserWarning: Optimizer created manually outside Module
  optimizer_params=optimizer_params)
call reset()
INFO:root:Epoch[0] Batch [0-20]\tSpeed: 13.41 samples/sec\tacc=0.031250
testing verification..
(200, 128)
infer time 2.356129
[lfw][20]XNorm: 21.733423
[lfw][20]Accuracy-Flip: 0.61000+-0.10440
saving 1
INFO:root:Saved checkpoint to "/tmp/m/model-y1-softmax-0001.params"
[20]Accuracy-Highest: 0.61000
INFO:root:Epoch[0] Train-acc=0.062500
INFO:root:Epoch[0] Time cost=31.245
call reset()
INFO:root:Epoch[1] Batch [0-20]\tSpeed: 14.02 samples/sec\tacc=0.250000
lr change to 0.010000000000000002
lr-batch-epoch: 0.010000000000000002 14 1
testing verification..
(200, 128)
infer time 2.1
[lfw][40]XNorm: 19.5
[lfw][40]Accuracy-Flip: 0.80500+-0.07000
saving 2
INFO:root:Saved checkpoint to "/tmp/m/model-y1-softmax-0002.params"
[40]Accuracy-Highest: 0.80500
"""


# The Namespace the pinned train_softmax.py prints, Python 2 style, as in the blog's logs (line 8).
NAMESPACE = (
    "Namespace(batch_size=512, beta=1000.0, beta_freeze=0, beta_min=5.0, bn_mom=0.9, ckpt=2, ctx_num=1, cutoff=0, "
    "data_dir='/data/data/', easy_margin=0, emb_size=128, end_epoch=100000, fc7_wd_mult=10.0, gamma=0.12, "
    "image_channel=3, image_h=112, image_w=112, loss_type={loss_type}, lr={lr}, lr_steps='{lr_steps}', margin=4, "
    "margin_a=1.0, margin_b=0.0, margin_m=0.5, margin_s={margin_s}, max_steps=0, mom=0.9, network='y1', "
    "num_classes=85164, num_gpus=1, num_layers=1, output_dir='/data/output/', per_batch_size=512, power=1.0, "
    "prefix='/data/output/{prefix}', pretrained='{pretrained}', rand_mirror=1, rescale_threshold=0, "
    "scale=0.9993, target='lfw,cfp_fp,agedb_30', use_deformable=0, {verbose}version_act='prelu', "
    "version_input=1, version_output='E', version_se=0, version_unit=3, wd=4e-05, work_dir='/data/')"
)
STAGES = {
    "softmax": dict(loss_type=0, lr=0.1, lr_steps="120000,140000", margin_s=64.0, prefix="model-y1-softmax",
                    pretrained=""),
    "arcface": dict(loss_type=4, lr=0.1, lr_steps="120000,160000,180000,200000", margin_s=64.0,
                    prefix="model-y1-arcface", pretrained="/data/output/model-y1-softmax,60"),
    "finetune": dict(loss_type=4, lr=0.001, lr_steps="20000,30000,40000", margin_s=128.0,
                     prefix="model-y1-arcface", pretrained="/data/output/model-y1-arcface,100"),
}  # fmt: skip


def make_log(
    path: Path, stage: str, rounds: list[tuple[int, dict[str, float]]], verbose: int | None = 2000, **args
) -> Path:
    """A training log in the format of the blog's: platform timestamps, the Namespace, verification rounds
    (XNorm, Accuracy-Flip) each followed by `saving N`."""
    a = {**STAGES[stage], **args}
    a["verbose"] = f"verbose={verbose}, " if verbose is not None else ""
    ts = "[2018-05-09 02:28:45]  "
    lines = [f"{ts}gpu num: 1", f"{ts}Called with argument: {NAMESPACE.format(**a)}"]
    for step, accs in rounds:
        lines.append(f"{ts}lr-batch-epoch: 0.1 {step % 7431} {step // 7431}")
        for target, acc in accs.items():
            lines += [
                f"{ts}testing verification..",
                f"{ts}(12000L, 128L)",
                f"{ts}infer time 12.946839",
                f"{ts}[{target}][{step}]XNorm: 11.147283",
                f"{ts}[{target}][{step}]Accuracy-Flip: {acc:.5f}+-0.00450",
            ]
        lines.append(f"{ts}saving {step // (verbose or 2000)}")
    path.write_text("\n".join(lines) + "\n")
    return path


ALL3 = ("lfw", "cfp_fp", "agedb_30")


def rounds(values: dict[str, list[float]], start: int = 2000, every: int = 2000):
    n = len(next(iter(values.values())))
    return [(start + i * every, {t: vs[i] for t, vs in values.items()}) for i in range(n)]
