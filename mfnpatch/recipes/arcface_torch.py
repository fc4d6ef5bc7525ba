"""arcface_torch's training command as data (the PyTorch lineage): the mbf configs at the 0159b24 pin and what a
``train_v2.py configs/X.py key=value ...`` command trains with. Read by verify (which stage a log ran), the runner's
hand-over helpers and the estimate (steps, verbose, batch); nothing here runs anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The PyTorch lineage: arcface_torch's mbf configs at the 0159b24 pin, configs/base.py merged with each (the keys
# a log's config block prints that decide what is trained; recognition/arcface_torch/configs/*_mbf.py).
_MBF = {"network": "mbf", "embedding_size": 512, "sample_rate": 1.0, "fp16": True, "momentum": 0.9,
        "weight_decay": 1e-4, "batch_size": 128, "lr": 0.1, "verbose": 2000, "optimizer": "sgd", "warmup_epoch": 0,
        "interclass_filtering_threshold": 0, "gradient_acc": 1, "seed": 2048}  # fmt: skip
TORCH_CONFIGS: dict[str, dict[str, Any]] = {
    "ms1mv2_mbf": _MBF | {"margin_list": [1.0, 0.5, 0.0], "num_classes": 85742, "num_image": 5822653, "num_epoch": 40},
    "ms1mv3_mbf": _MBF | {"margin_list": [1.0, 0.5, 0.0], "num_classes": 93431, "num_image": 5179510, "num_epoch": 40},
    "glint360k_mbf": _MBF
    | {"margin_list": [1.0, 0.0, 0.4], "num_classes": 360232, "num_image": 17091657, "num_epoch": 20},
}


def torch_args(argv: list[str]) -> dict[str, Any] | None:
    """A stage that runs arcface_torch's train_v2.py: its config (TORCH_CONFIGS) with the key=value overrides
    after it, in the log's terms (batch_size the total batch, per_batch_size per GPU); None for any other."""
    import ast

    if "train_v2.py" not in argv:
        return None
    i = argv.index("train_v2.py")
    name = Path(argv[i + 1]).stem if i + 1 < len(argv) else ""
    args: dict[str, Any] = dict(TORCH_CONFIGS.get(name, {}))
    for item in argv[i + 2 :]:
        key, eq, value = item.partition("=")
        if eq:
            try:
                args[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                args[key] = value
    nproc = 1
    for flag in ("--nproc_per_node", "--nproc-per-node"):
        if flag in argv[:i] and argv.index(flag) + 1 < i:
            nproc = int(argv[argv.index(flag) + 1])
    per = args.get("batch_size")
    if isinstance(per, int):
        args["per_batch_size"], args["batch_size"] = per, per * nproc
    args["lineage"], args["config"] = "arcface_torch", name
    return args


def set_override(argv: list[str], key: str, value: str) -> list[str]:
    """The command with ``key=value`` after train_v2.py's config (replacing the key's override, if any)."""
    i = argv.index("train_v2.py") + 2
    out = [a for k, a in enumerate(argv) if k < i or not a.startswith(f"{key}=")]
    return [*out, f"{key}={value}"]


def total_steps(argv: list[str]) -> int | None:
    """Steps of a whole arcface_torch run: num_image // total batch x num_epoch (as train_v2.py computes them)."""
    a = torch_args(argv)
    if not a:
        return None
    n, bs, ep = a.get("num_image"), a.get("batch_size"), a.get("num_epoch")
    if isinstance(n, int) and isinstance(bs, int) and isinstance(ep, int) and bs > 0:
        return n // bs * ep
    return None
