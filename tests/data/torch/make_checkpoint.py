"""Makes a checkpoint_gpu_N.pt the way arcface_torch's train_v2.py saves it with save_all_states=True (0159b24,
lines 216-225), for a tiny backbone and partial FC: run with a PyTorch environment's python (the torch-cpu one).

    python make_checkpoint.py OUT.pt EPOCH GLOBAL_STEP   (epoch1.pt: 1 21; epoch2.pt: 2 42)
"""

import sys

import torch

torch.manual_seed(0)
backbone = torch.nn.Sequential(
    torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 8)
)
fc = torch.nn.Linear(8, 5, bias=False)
opt = torch.optim.SGD(
    [{"params": backbone.parameters()}, {"params": fc.parameters()}], lr=0.1, momentum=0.9, weight_decay=1e-4
)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 100)
x = torch.randn(2, 3, 8, 8)
loss = fc(backbone(x)).pow(2).mean()
loss.backward()
opt.step()
sched.step()
epoch, step = int(sys.argv[2]), int(sys.argv[3])
torch.save(
    {
        "epoch": epoch,
        "global_step": step,
        "state_dict_backbone": backbone.state_dict(),
        "state_dict_softmax_fc": fc.state_dict(),
        "state_optimizer": opt.state_dict(),
        "state_lr_scheduler": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"},
    },
    sys.argv[1],
)
