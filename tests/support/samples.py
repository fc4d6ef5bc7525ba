"""Log text in the pinned code's real line formats, shared by the tests of the parser and of the verdicts."""

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
