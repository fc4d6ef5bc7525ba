"""Provenance, in one place: what a stage's result depends on, hashed part by part (recipe, profile,
parameters, command, patch sets, environment, inputs, seed) so that ``--resume`` can say which part changed,
and what ``compare`` holds side by side for a whole run.

A resumed run reuses a stage only when its key is the one recorded; otherwise it names the parts that differ.
"""

from __future__ import annotations

import json
from typing import Any

from mfnpatch.fsutil import sha256_bytes
from mfnpatch.lineages import DEFAULT
from mfnpatch.runs.record import RunRecord


def _h(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def stage_parts(
    recipe_sha256: str,
    profile: str | None,
    parameters: dict,
    seed: int | None,
    rec: RunRecord,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    copies: list,
    inputs: dict,
) -> dict[str, str]:
    """The hashed parts of one stage's provenance; ``inputs``: input name -> the stage it comes from, whose
    own provenance key is part of this one."""
    ups = {key: rec.stage(stage).provenance or "" for key, stage in inputs.items()}
    return {
        "recipe": recipe_sha256,
        "profile": _h(profile),
        "parameters": _h(parameters),
        "command": _h({"argv": argv, "env": env, "cwd": cwd, "copy": copies}),
        "patches": _h([p.model_dump() for p in rec.patches]),
        "environment": _h({"name": rec.environment.name, "lock_sha256": rec.environment.lock_sha256}),
        "inputs": _h(ups),
        "seed": _h(seed),
    }


def key(parts: dict[str, str]) -> str:
    """A stage's provenance key: one hash of its parts."""
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())


def changed_parts(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The parts that differ, in words (``recipe: 1a2b… -> 3c4d…``)."""
    return [f"{k}: {old.get(k, '(absent)')[:12]} -> {v[:12]}" for k, v in new.items() if old.get(k) != v]


def run_provenance(rec: RunRecord, normalize) -> dict[str, Any]:
    """What ``compare`` holds side by side for a run (``normalize`` makes its paths comparable)."""
    r = rec.recipe
    return {
        "recipe": r.name,
        "lineage": r.lineage or DEFAULT,  # records before the field: only that lineage's recipes
        "recipe sha256": r.sha256,
        "profile": r.profile,
        "parameters": normalize(r.parameters),
        "pin": rec.pin.commit,
        "patch sets": [f"{x.name}@{x.version} {x.sha256}" for x in rec.patches],
        "environment": {"name": rec.environment.name, "lock_sha256": rec.environment.lock_sha256},
        "seed": rec.seed if rec.determinism else "(not recorded)",
    }
