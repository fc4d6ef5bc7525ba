"""The pinned MXNet code (InsightFace 4bc8132, ``src/train_softmax.py``): ``--flag value`` arguments, argparse's
defaults for what a command leaves out, a step schedule (--lr, --lr-steps), checkpoints every --verbose steps at
--prefix, a start from --pretrained PREFIX,N."""

from __future__ import annotations

from typing import Any

from mfnpatch.lineages.base import Capabilities, Lineage, Resumed, ResumeRequest, StepSchedule, TrainerFacts
from mfnpatch.lineages.mxnet_resume import plan_resume

# argparse defaults of src/train_softmax.py at the pin (lines 48-85), for the flags a recipe leaves out.
TRAIN_DEFAULTS: dict[str, Any] = {
    "network": "r50",
    "loss_type": 4,
    "lr": 0.1,
    "lr_steps": "",
    "wd": 0.0005,
    "fc7_wd_mult": 1.0,
    "emb_size": 512,
    "per_batch_size": 128,
    "margin_m": 0.5,
    "margin_s": 64.0,
    "verbose": 2000,
}
DEFAULT_VERBOSE = TRAIN_DEFAULTS["verbose"]


def get_opt(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def set_opt(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    for i, a in enumerate(out):
        if a == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if a.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    return out + [flag, value]


def _typed(key: str, value: str) -> Any:
    default = TRAIN_DEFAULTS.get(key)
    try:
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int):
            return int(value)
    except ValueError:
        return value
    return value


def argv_args(argv: list[str]) -> dict[str, Any]:
    """``--lr-steps 1,2 --wd 0.00004`` -> {'lr_steps': '1,2', 'wd': 4e-05} (after train_softmax.py)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            key, _, val = a[2:].partition("=")
            key = key.replace("-", "_")
            if not val and i + 1 < len(argv):
                val = argv[i + 1]
                i += 1
            out[key] = _typed(key, val)
        i += 1
    return out


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


class InsightfaceMxnet(Lineage):
    name = "insightface_mxnet"
    title = "the pinned MXNet code (InsightFace 4bc8132, train_softmax.py)"
    framework = "mxnet"
    model_format = "mxnet"  # a checkpoint, PREFIX,EPOCH (model_slim.py's too)
    cpu_environment, column = "cpu", "MXNet lineage (may16)"
    no_gpu_build = "MXNet is retired; building it from source with CUDA >= 11.8 is the only other way"
    capabilities = Capabilities(resume=None, lr_sentinel=None, fit=None)
    defining = ("loss_type", "network")
    compared = ("network", "loss_type", "lr", "lr_steps", "margin_s", "margin_m", "wd", "fc7_wd_mult", "emb_size",
                "per_batch_size")  # fmt: skip

    batch_per_device = True

    def claims(self, argv: list[str]) -> bool:
        return any(a.endswith("train_softmax.py") for a in argv)

    def total_batch_of(self, args: dict[str, Any]) -> int | None:
        per = args.get("per_batch_size")  # the seed trained on one P40
        return per if isinstance(per, int) else None

    def args(self, argv: list[str]) -> dict[str, Any]:
        return {**TRAIN_DEFAULTS, **argv_args(argv)}

    def get(self, argv: list[str], key: str) -> str | None:
        return get_opt(argv, _flag(key))

    def set(self, argv: list[str], key: str, value: str) -> list[str]:
        return set_opt(argv, _flag(key), value)

    def facts(self, argv: list[str]) -> TrainerFacts:
        def number(key: str, kind=int):
            raw = self.get(argv, key)
            try:
                return kind(raw) if raw is not None else TRAIN_DEFAULTS.get(key)
            except ValueError:
                return None

        lr = number("lr", float)
        raw = self.get(argv, "lr_steps")
        try:
            steps = [int(x) for x in raw.split(",") if x.strip()] if raw else None
            schedule = StepSchedule(float(lr), steps) if lr is not None else None
        except ValueError:  # a command written unusually: its schedule is not known
            schedule = None
        verbose = number("verbose")
        return TrainerFacts(self.name, number("per_batch_size"), 1, verbose if isinstance(verbose, int) and verbose > 0
                            else DEFAULT_VERBOSE, None, schedule, self.get(argv, "prefix"),
                            self.get(argv, "pretrained") or None)  # fmt: skip

    def probe_argv(self, argv: list[str], prefix: str, steps: int) -> list[str]:
        out = [a for a in argv]
        if "--pretrained" in out:  # a step costs the same from any weights: no pretrained model to read
            i = out.index("--pretrained")
            del out[i : i + 2]
        out = self.set(out, "prefix", prefix)
        return self.set(out, "verbose", str(max(1, steps // 2)))

    def resume(self, req: ResumeRequest) -> Resumed | None:
        return plan_resume(req, self.get, self.set)
