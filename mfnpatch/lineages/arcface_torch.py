"""arcface_torch (InsightFace's PyTorch recipe, ``recognition/arcface_torch`` at 0159b24): ``train_v2.py
configs/X.py key=value`` (the config a module, the overrides after it), started by torchrun with one process per
GPU; a polynomial lr decay over the whole run (PolynomialLRWarmup), verification every ``verbose`` steps,
``model.pt`` in ``output`` at each epoch's end and, with ``save_all_states``, ``checkpoint_gpu_N.pt`` (weights,
optimizer, scheduler, epoch and global step), which ``resume=True`` continues from."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from mfnpatch.lineages.base import (
    Capabilities,
    Lineage,
    PolySchedule,
    Resumed,
    ResumeError,
    ResumeRequest,
    TrainerFacts,
)
from mfnpatch.lineages.torch_state import read_state

# The mbf configs at the 0159b24 pin, configs/base.py merged with each (the keys a log's config block prints that
# decide what is trained; recognition/arcface_torch/configs/*_mbf.py).
_MBF = {"network": "mbf", "embedding_size": 512, "sample_rate": 1.0, "fp16": True, "momentum": 0.9,
        "weight_decay": 1e-4, "batch_size": 128, "lr": 0.1, "verbose": 2000, "optimizer": "sgd", "warmup_epoch": 0,
        "interclass_filtering_threshold": 0, "gradient_acc": 1, "seed": 2048}  # fmt: skip
TORCH_CONFIGS: dict[str, dict[str, Any]] = {
    "ms1mv2_mbf": _MBF | {"margin_list": [1.0, 0.5, 0.0], "num_classes": 85742, "num_image": 5822653, "num_epoch": 40},
    "ms1mv3_mbf": _MBF | {"margin_list": [1.0, 0.5, 0.0], "num_classes": 93431, "num_image": 5179510, "num_epoch": 40},
    "glint360k_mbf": _MBF
    | {"margin_list": [1.0, 0.0, 0.4], "num_classes": 360232, "num_image": 17091657, "num_epoch": 20},
}
TRAINER = "train_v2.py"


def torch_args(argv: list[str]) -> dict[str, Any] | None:
    """A stage that runs arcface_torch's train_v2.py: its config (TORCH_CONFIGS) with the key=value overrides
    after it, in the log's terms (batch_size the total batch, per_batch_size per GPU); None for any other."""
    if TRAINER not in argv:
        return None
    i = argv.index(TRAINER)
    name = Path(argv[i + 1]).stem if i + 1 < len(argv) else ""
    args: dict[str, Any] = dict(TORCH_CONFIGS.get(name, {}))
    for item in argv[i + 2 :]:
        key, eq, value = item.partition("=")
        if eq:
            try:
                args[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                args[key] = value
    nproc = processes(argv)
    per = args.get("batch_size")
    if isinstance(per, int):
        args["per_batch_size"], args["batch_size"] = per, per * nproc
    args["lineage"], args["config"] = "arcface_torch", name
    return args


def processes(argv: list[str]) -> int:
    """The trainer processes torchrun starts (--nproc_per_node; 1 without torchrun)."""
    i = argv.index(TRAINER) if TRAINER in argv else len(argv)
    for flag in ("--nproc_per_node", "--nproc-per-node"):
        if flag in argv[:i] and argv.index(flag) + 1 < i:
            try:
                return int(argv[argv.index(flag) + 1])
            except ValueError:
                return 1
    return 1


def set_override(argv: list[str], key: str, value: str) -> list[str]:
    """The command with ``key=value`` after train_v2.py's config (replacing the key's override, if any)."""
    i = argv.index(TRAINER) + 2
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


class ArcfaceTorch(Lineage):
    name = "arcface_torch"
    title = "arcface_torch, InsightFace's PyTorch recipe (0159b24, train_v2.py)"
    framework = "torch"
    model_format = "onnx"  # torch2onnx.py's graph
    cpu_environment, column = "torch-cpu", "PyTorch lineage (mbf)"
    capabilities = Capabilities(resume=None, lr_sentinel=None, fit=None)
    seeding = ("train_v2.py seeds PyTorch, NumPy and Python itself (the config's seed, 2048, by setup_seed), "
               "whatever the run seed")  # fmt: skip
    defining = ("lineage", "network")
    compared = (
        "network",
        "margin_list",
        "embedding_size",
        "lr",
        "weight_decay",
        "momentum",
        "per_batch_size",
        "batch_size",
        "num_classes",
        "num_epoch",
        "warmup_epoch",
        "sample_rate",
        "fp16",
        "optimizer",
    )

    def claims(self, argv: list[str]) -> bool:
        return TRAINER in argv

    def args(self, argv: list[str]) -> dict[str, Any]:
        return torch_args(argv) or {}

    def get(self, argv: list[str], key: str) -> str | None:
        i = argv.index(TRAINER) + 2 if TRAINER in argv else len(argv)
        for a in argv[i:]:
            k, eq, v = a.partition("=")
            if eq and k == key:
                return v
        return None

    def set(self, argv: list[str], key: str, value: str) -> list[str]:
        return set_override(argv, key, value)

    def facts(self, argv: list[str]) -> TrainerFacts:
        a = torch_args(argv) or {}
        per = a.get("per_batch_size") if isinstance(a.get("per_batch_size"), int) else None
        verbose = int(a["verbose"]) if isinstance(a.get("verbose"), int) and a["verbose"] > 0 else 2000
        steps = total_steps(argv)
        lr = a.get("lr")
        schedule = None
        if isinstance(lr, int | float) and steps and isinstance(a.get("num_image"), int) and a.get("batch_size"):
            warm = a["num_image"] // a["batch_size"] * int(a.get("warmup_epoch") or 0)
            schedule = PolySchedule(float(lr), warm, steps)
        return TrainerFacts(self.name, per, processes(argv), verbose, steps, schedule,
                            str(a["output"]) if a.get("output") else None, None)  # fmt: skip

    def probe_argv(self, argv: list[str], prefix: str, steps: int) -> list[str]:
        out = set_override(argv, "output", prefix)
        return set_override(out, "verbose", str(max(1, steps // 2)))

    def state_files(self, argv: list[str], cwd: Path) -> list[Path]:
        a = torch_args(argv) or {}
        if not a.get("save_all_states") or not a.get("output"):
            return []
        return [cwd / str(a["output"]) / f"checkpoint_gpu_{r}.pt" for r in range(processes(argv))]

    def resume(self, req: ResumeRequest) -> Resumed | None:
        """arcface_torch's own resume: ``resume=True`` loads every process's checkpoint_gpu_N.pt from ``output``
        (weights, partial FC, optimizer with its momentum, lr scheduler, epoch and global step) and continues at
        the next epoch; the log counts steps from the stage's start."""
        a = torch_args(req.argv) or {}
        if a.get("save_all_states") is not True:
            raise ResumeError(
                "the stage ran without save_all_states=True, so arcface_torch saved no state to resume from",
                hint="run it again from its start (--force); add save_all_states=True to its command to make it "
                "resumable (the mbf recipe does, parameter save_states)",
            )
        files = self.state_files(req.argv, req.cwd)
        on_disk = [f for f in files if f.is_file()]
        if not on_disk:
            return None  # interrupted in its first epoch: nothing saved yet
        if len(on_disk) < len(files):
            missing = ", ".join(str(f) for f in files if not f.is_file())
            raise ResumeError(f"{missing} is missing: every process must have saved the same epoch",
                              hint="run the stage again from its start (--force)")  # fmt: skip
        states = [read_state(f) for f in files]
        if len({(x.epoch, x.global_step) for x in states}) > 1:
            seen = "; ".join(f"{x.path.name}: epoch {x.epoch}, step {x.global_step}" for x in states)
            raise ResumeError(f"the processes saved different epochs ({seen})",
                              hint="run the stage again from its start (--force)")  # fmt: skip
        st = states[0]
        facts = self.facts(req.argv)
        lr = facts.lr.at(st.global_step) if facts.lr is not None else None
        epochs = a.get("num_epoch")
        reached = req.stop is not None and req.stop.kind == "step" and st.global_step >= req.stop.value
        out = str(files[0].parent)
        summary = (f"resume=True, arcface_torch loads {out}/checkpoint_gpu_*.pt (weights, partial FC, optimizer "
                   f"momentum, lr scheduler) and continues at epoch {st.epoch + 1} of {epochs}")  # fmt: skip
        return Resumed(req.segment, st.epoch, st.global_step, f"the state saved after epoch {st.epoch}", out,
                       str(a.get("output")), lr, [], set_override(req.argv, "resume", "True"), req.stop, files,
                       "stage", DIFFERENCES, summary, reached=reached)  # fmt: skip


DIFFERENCES = (
    "train_v2.py seeds its random generators anew when the segment starts, so the random flips of the epochs "
    "after the resume are drawn differently from an uninterrupted run's (the data order is the same: the "
    "sampler is seeded by the epoch)",
)
