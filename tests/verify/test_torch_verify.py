"""verify on arcface_torch's logs: the stage told from the config the log records (the mbf configs at the pin,
with the overrides a recipe passes), the checks from the published mbf results, and the total batch."""

from __future__ import annotations

from pathlib import Path

from mfnpatch.lineages.arcface_torch import TORCH_CONFIGS, torch_args

BASE = {"margin_list": "(1.0, 0.5, 0.0)", "network": "mbf", "resume": "False", "output": "work_dirs/ms1mv2_mbf",
        "embedding_size": "512", "sample_rate": "1.0", "interclass_filtering_threshold": "0", "fp16": "True",
        "batch_size": "128", "optimizer": "sgd", "lr": "0.1", "momentum": "0.9", "weight_decay": "0.0001",
        "verbose": "2000", "frequent": "10", "gradient_acc": "1", "seed": "2048", "rec": "/train_tmp/faces_emore",
        "num_classes": "85742", "num_image": "5822653", "num_epoch": "40", "warmup_epoch": "0",
        "val_targets": "['lfw', 'cfp_fp', 'agedb_30']", "total_batch_size": "1024", "warmup_step": "0",
        "total_step": "227440"}  # fmt: skip


def torch_log(path: Path, accuracies: dict[str, float], **cfg: str) -> Path:
    lines = ["Training: 2026-12-01 10:00:00,000-rank_id: 0"]
    for k, v in (BASE | cfg).items():
        lines.append(f"Training: 2026-12-01 10:00:01,000-: {k}{' ' * (25 - len(k))}{v}")
    for step in (2000, 4000):
        speed = (f"Speed 10543.27 samples/sec   Loss 40.0000   LearningRate 0.1000   Epoch: 0   Global Step: "
                 f"{step - 10}   Fp16 Grad Scale: 4096   Required: 37 hours")  # fmt: skip
        lines.append(f"Training: 2026-12-01 10:01:00,000-{speed}")
        for t, a in accuracies.items():
            lines.append(f"Training: 2026-12-01 10:02:00,000-[{t}][{step}]XNorm: 20.000000")
            lines.append(f"Training: 2026-12-01 10:02:00,000-[{t}][{step}]Accuracy-Flip: {a:1.5f}+-0.00500")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_run_of_the_ms1mv2_config_is_mbf_train(tmp_path, cli):
    log = torch_log(tmp_path / "ok.log", {"lfw": 0.9970, "cfp_fp": 0.9560, "agedb_30": 0.9700})
    v = cli("verify", "--log", log, "--json").json()
    assert v["match"] | {"how": None} == {
        "recipe": "mbf",
        "profile": None,
        "stage": "train",
        "exact": True,
        "unread": [],
        "differences": [],
        "also": [],
        "resumed": None,
        "start": "started from scratch (no --pretrained)",
        "notes": [],
        "how": None,
    }
    assert v["experiment"] == {"same_as_seed": True, "differs": []}
    assert v["passed"] and {c["id"] for c in v["checks"]} >= {"lfw best", "cfp_fp best", "agedb_30 best"}
    low = torch_log(tmp_path / "low.log", {"lfw": 0.9900, "cfp_fp": 0.9560, "agedb_30": 0.9700})
    r = cli("verify", "--log", low, "--json")
    bad = r.json()
    assert r.code == 1 and not bad["passed"]
    assert [c["id"] for c in bad["checks"] if c["verdict"] == "fail"] == ["lfw best"]


def test_other_configs_and_overrides_are_told_apart(tmp_path, cli):
    v3 = torch_log(tmp_path / "v3.log", {"lfw": 0.997}, num_classes="93431", num_image="5179510",
                   rec="/train_tmp/ms1m-retinaface-t1")  # fmt: skip
    assert cli("verify", "--log", v3, "--json").json()["match"]["profile"] == "ms1mv3"
    # 4 GPUs instead of 8: the same stage, with the batch said as a difference and as another experiment
    four = torch_log(tmp_path / "four.log", {"lfw": 0.997}, total_batch_size="512")
    v = cli("verify", "--log", four, "--json").json()
    assert v["match"]["stage"] == "train" and v["match"]["differences"] == [
        "batch_size 512 in the log, 1024 in the recipe"]  # fmt: skip
    assert any(f.startswith("total batch 512") and "the recipe's stage 1024" in f for f in v["findings"])


def test_torch_args_reads_the_command_as_train_v2_does():
    argv = ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "train_v2.py",
            "configs/ms1mv3_mbf.py", "rec=/data/x", "num_epoch=2", "fp16=False"]  # fmt: skip
    a = torch_args(argv)
    assert a is not None and a["num_classes"] == TORCH_CONFIGS["ms1mv3_mbf"]["num_classes"]
    got = (a["num_epoch"], a["fp16"], a["rec"], a["per_batch_size"], a["batch_size"])
    assert got == (2, False, "/data/x", 128, 512)
    assert torch_args(["python", "-u", "train_softmax.py", "--network", "y1"]) is None
