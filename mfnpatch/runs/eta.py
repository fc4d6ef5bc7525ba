"""The ETA of a run: the last `recipe estimate` of the same plan on the same machine, found by what it is of."""

from __future__ import annotations

import json
from pathlib import Path

from mfnpatch.fsutil import sha256_bytes
from mfnpatch.recipes.expand import Plan


def plan_key(plan: Plan, host: str, builtins: dict | None = None) -> str:
    """What an estimate is of: the recipe file, profile, parameters as planned and the host. The run's own
    places and load (``${run_dir}``, ``${tree}``, ``${cpu_free}`` …) are left out: the estimate's throwaway
    directory and the run's are the same plan."""
    named = sorted(((str(v), k) for k, v in (builtins or {}).items() if isinstance(v, str) and v),
                   key=lambda kv: -len(kv[0]))  # fmt: skip

    def neutral(v):
        if isinstance(v, str):
            for text, name in named:
                v = v.replace(text, f"<{name}>")
        return v

    params = {k: neutral(v) for k, v in plan.parameters.items()}
    body = json.dumps({"sha": plan.loaded.sha256, "profile": plan.profile, "parameters": params, "host": host},
                      sort_keys=True, default=str)  # fmt: skip
    return sha256_bytes(body.encode())[:16]


def estimates_dir() -> Path:
    from mfnpatch.resources import cache_dir

    return cache_dir() / "estimates"


def saved_estimate(plan: Plan, host: str, builtins: dict | None = None) -> dict | None:
    """The last estimate of this plan on this host, or None."""
    p = estimates_dir() / f"{plan_key(plan, host, builtins)}.json"
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("seconds"), int | float) else None


def eta_of(plan: Plan, host: str, builtins: dict | None = None) -> tuple[dict, str] | None:
    """What a run records of its saved estimate, and the line it says it with; None without an estimate."""
    eta = saved_estimate(plan, host, builtins)
    if eta is None:
        return None
    stages = {s["stage"]: s["seconds"] for s in eta.get("stages", []) if s.get("seconds") is not None}
    each = ", ".join(f"{k} {v / 3600:.2f} h" for k, v in stages.items())
    hours = eta["seconds"] / 3600
    line = f"ETA: {hours:.2f} h of training from the start (recipe estimate of {eta.get('made')}: {each})"
    return {"hours": round(hours, 4), "seconds": eta["seconds"], "made": eta.get("made"), "stages": stages}, line
