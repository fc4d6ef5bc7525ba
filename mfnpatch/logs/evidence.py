"""Patch-set evidence: what a training log (its Namespace, its Python, its checkpoint's symbol) reveals
about the patch sets that produced it. What cannot be observed is said, and never fails a verification.
"""

from __future__ import annotations

import json
from pathlib import Path

from mfnpatch.checkpoint import Checkpoint
from mfnpatch.errors import MfnError
from mfnpatch.logs.events import Summary
from mfnpatch.logs.verdicts import Check
from mfnpatch.source.patchset import Evidence, PatchSet

# --------------------------------------------------------------------------------------------
# Patch-set evidence


def checkpoint_symbol(log: Summary, checkpoint: str | None) -> tuple[Path | None, str]:
    """The training symbol of the run's checkpoints: --checkpoint PREFIX (or PREFIX,N, or the symbol file
    itself), else the prefix the log saved to."""
    candidates = []
    if checkpoint:
        prefix = checkpoint.rpartition(",")[0] if "," in checkpoint else checkpoint
        candidates.append(Path(prefix) if prefix.endswith("-symbol.json") else Checkpoint(prefix, 0).symbol)
    saved = next((Checkpoint.from_params(c["path"]) for c in log.checkpoints.values() if c.get("path")), None)
    if saved is not None:
        candidates.append(saved.symbol)
    for c in candidates:
        if c.is_file():
            return c, str(c)
    tried = ", ".join(str(c) for c in candidates) or "no checkpoint prefix in the log"
    return None, f"no checkpoint symbol found ({tried})"


def symbol_nodes(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text())
        return {n.get("name", "") for n in data.get("nodes", [])}
    except (OSError, ValueError, AttributeError) as e:
        raise MfnError(f"{path}: not an MXNet symbol file ({e})") from None


def evidence_checks(log: Summary, sets: list[PatchSet], checkpoint: str | None = None) -> list[Check]:
    checks: list[Check] = []
    symbol, symbol_note = checkpoint_symbol(log, checkpoint)
    for s in sets:
        for ev in s.manifest.evidence:
            checks.append(_evidence(log, s, ev, symbol, symbol_note))
        covered = {ev.patch for ev in s.manifest.evidence}
        for p in s.patches:
            if p.name not in covered and None not in covered:
                checks.append(
                    Check(
                        f"{s.label}/{p.name}",
                        "unmeasured",
                        f"{s.label}/{p.name}: the set declares no evidence",
                        False,
                        group="patches",
                    )
                )
    return checks


def _evidence(log: Summary, s: PatchSet, ev: Evidence, symbol: Path | None, symbol_note: str) -> Check:
    cid = f"{s.label}/{ev.patch}" if ev.patch else s.label
    cfg = log.config or {}
    if ev.unobservable:
        return Check(cid, "unmeasured", f"{cid}: cannot be checked: {ev.unobservable}", False, group="patches")
    for key, value in ev.when.items():
        if key not in cfg:
            return Check(
                cid,
                "unmeasured",
                f"{cid}: the log shows no {key}, so it is unknown whether it applies",
                False,
                group="patches",
            )
        if cfg[key] != value:
            return Check(
                cid,
                "n/a",
                f"{cid}: does not apply to this run ({key}={cfg[key]!r}, needs {value!r})",
                False,
                value,
                cfg[key],
                group="patches",
            )
    if ev.config is not None:
        if not cfg:
            return Check(cid, "unmeasured", f"{cid}: the log has no configuration line", False, group="patches")
        bad = {k: cfg.get(k, "(absent)") for k, v in ev.config.items() if cfg.get(k) != v}
        if bad:
            shown = ", ".join(f"{k}={v!r}" for k, v in bad.items())
            return Check(
                cid,
                "fail",
                f"{cid}: the log shows {shown}, the set implies "
                + ", ".join(f"{k}={v!r}" for k, v in ev.config.items())
                + f": {ev.explain}",
                True,
                ev.config,
                bad,
                group="patches",
            )
        return Check(
            cid,
            "pass",
            f"{cid}: the log shows " + ", ".join(f"{k}={v!r}" for k, v in ev.config.items()),
            True,
            ev.config,
            ev.config,
            group="patches",
        )
    if ev.python is not None:
        if log.python is None:
            return Check(
                cid, "unmeasured", f"{cid}: the log does not reveal its Python version", False, group="patches"
            )
        ok = log.python == ev.python
        return Check(
            cid,
            "pass" if ok else "fail",
            f"{cid}: the log was written by Python {log.python}" + ("" if ok else f": {ev.explain}"),
            True,
            ev.python,
            log.python,
            group="patches",
        )
    if ev.symbol_lacks is not None:
        if symbol is None:
            return Check(cid, "unmeasured", f"{cid}: {symbol_note}; give --checkpoint PREFIX", False, group="patches")
        present = sorted(set(ev.symbol_lacks) & symbol_nodes(symbol))
        if present:
            return Check(
                cid,
                "fail",
                f"{cid}: {symbol} has {', '.join(present)}: {ev.explain}",
                True,
                f"no {', '.join(ev.symbol_lacks)}",
                present,
                group="patches",
            )
        return Check(
            cid,
            "pass",
            f"{cid}: {symbol} has no {', '.join(ev.symbol_lacks)}",
            True,
            f"no {', '.join(ev.symbol_lacks)}",
            "absent",
            group="patches",
        )
    return Check(cid, "unmeasured", f"{cid}: no check declared", False, group="patches")


def python_finding(log: Summary, sets: list[PatchSet]) -> list[str]:
    names = {s.name for s in sets}
    if log.python == 3 and "py3" not in names:
        return ["the log was written by Python 3, which the pinned code needs the py3 set for; it is not named"]
    return []
