"""Which recipe stage a training log ran: read from the log's own arguments, matched against the recipes.

The pinned ``train_softmax.py`` prints its argparse Namespace (``Called with argument: Namespace(...)``).
Each training stage of each bundled recipe (and of each of its profiles) has a command; its arguments,
with the pinned code's defaults for the flags it does not pass, are the stage's *signature*. A log matches
a stage when its loss type and network equal the signature's and its ``--pretrained`` is what the stage
starts from (nothing, or the checkpoint of the stage it names) or a checkpoint of the stage itself (a
resumed run). Among those, the one with the fewest differing arguments wins; every difference is a
finding, and stages that are just as close are named.

Resumed runs. ``--pretrained PREFIX,N`` restarts the step counter, the lr schedule and the save numbering
at zero. Resuming means starting from the run's own checkpoints: ``--pretrained``'s prefix is the log's own
``--prefix`` (the same path; only where the log has no ``--prefix`` is the checkpoint's name held against the
stage's). Anything else is a new stage started from a pretrained model, whatever the file is called (two runs'
prefixes ``…/model-y1-test/model`` and ``…/model-y1-test2/model`` share a name, not a run). When a log starts
from a checkpoint of its own stage, its step ``s`` is stage step
``s + N x verbose`` (checkpoint N was saved at step N x ``--verbose``, taking the checkpoint to have been
written by a run that started at step 0; a chain of resumed runs shifts further, and ``start_step``
says where). Its ``--lr-steps`` are compared in stage steps too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfnpatch.lineages import of_args, of_argv
from mfnpatch.logs.events import Summary


def keys_of(cfg: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(defining, compared) keys for a log's configuration, as its lineage names them."""
    lin = of_args(cfg)
    return lin.defining, lin.compared


@dataclass
class Signature:
    """A training stage of a recipe (profile), as the arguments its command gives train_softmax.py."""

    recipe: str
    profile: str | None
    stage: str
    args: dict[str, Any]
    output: str | None  # basename of the stage's checkpoint prefix
    input_stage: str | None  # the stage whose checkpoint --pretrained names
    input_output: str | None  # that stage's checkpoint basename
    input_checkpoint: int | None  # the checkpoint number, when the recipe fixes it
    expect: list = field(default_factory=list)
    title: str = ""

    @property
    def label(self) -> str:
        return f"{self.recipe}{'/' + self.profile if self.profile else ''}/{self.stage}"


@dataclass
class Resumed:
    """A log that starts from a checkpoint of its own stage: run steps + offset = stage steps."""

    checkpoint: int | None
    verbose: int | None
    offset: int | None  # None: the mapping cannot be known
    how: str


@dataclass
class StageMatch:
    signature: Signature | None
    differences: list[str]
    also: list[str]  # other stages just as close
    resumed: Resumed | None
    how: str  # how the stage was chosen, in words
    unread: list[str] = field(default_factory=list)  # compared arguments the log's configuration lacks
    start: str = ""  # how the run started, decided and why: from scratch, resumed, or from another run's model
    notes: list[str] = field(default_factory=list)  # what agrees in a form the recipe does not write (4 x 128)
    settings: list[str] = field(default_factory=list)  # the settings that differ from the seed's (no notes)

    @property
    def stage(self) -> str | None:
        return self.signature.stage if self.signature else None

    @property
    def offset(self) -> int | None:
        """Stage step of the log's step 0 (0 for a run that is not resumed, None when unknown)."""
        if self.resumed is None:
            return 0
        return self.resumed.offset

    def to_dict(self) -> dict:
        sig = self.signature
        return {
            "recipe": sig.recipe if sig else None,
            "profile": sig.profile if sig else None,
            "stage": sig.stage if sig else None,
            "exact": sig is not None and not self.differences and not self.unread,
            "unread": self.unread,
            "differences": self.differences,
            "also": self.also,
            "resumed": None if self.resumed is None else self.resumed.__dict__,
            "start": self.start,
            "notes": self.notes,
            "how": self.how,
        }


# --------------------------------------------------------------------------------------------
# Signatures from recipes


def _basename(prefix: str | None) -> str | None:
    return Path(prefix).name if prefix else None


def signatures(recipes: list[str] | None = None, profiles: bool = True) -> list[Signature]:
    """Every training stage of the bundled recipes (or the named ones), default profile first."""
    from mfnpatch.recipes.expand import expand
    from mfnpatch.recipes.recipe import find_recipe, list_recipes, load_recipe

    if recipes is None:
        loaded = [load_recipe(str(p)) for p, r, _ in list_recipes() if r is not None]
    else:
        loaded = [load_recipe(str(find_recipe(r))) for r in recipes]
    out: list[Signature] = []
    for lr in loaded:
        for prof in [None, *(lr.recipe.profiles if profiles else [])]:
            plan = expand(lr, prof)
            outputs = {s.name: _basename(s.outputs.get("checkpoint")) for s in plan.stages}
            for s in plan.stages:
                if s.kind != "train":
                    continue
                lin = of_argv(s.argv)
                args = lin.args(s.argv) if lin else {}
                pin = s.inputs.get("pretrained")
                in_stage = pin.ref.stage if pin else None
                in_ckpt = pin.ref.checkpoint if pin and isinstance(pin.ref.checkpoint, int) else None
                out.append(
                    Signature(lr.recipe.name, prof, s.name, args, outputs.get(s.name), in_stage,
                              outputs.get(in_stage) if in_stage else None, in_ckpt, list(s.expect), s.title)
                )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# Matching


def _steps(v: Any) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in str(v).replace(" ", "").split(",") if x)
    except ValueError:
        return None


def _same(key: str, a: Any, b: Any) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):  # margin_list: (1.0, 0.5, 0.0) or [1.0, 0.5, 0.0]
        return len(a) == len(b) and all(_same(key, x, y) for x, y in zip(a, b, strict=True))
    if key == "lr_steps":
        return _steps(a) == _steps(b)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def _pretrained(cfg: dict) -> tuple[str | None, int | None]:
    raw = str(cfg.get("pretrained") or "").strip()
    if not raw:
        return None, None
    prefix, _, n = raw.rpartition(",")
    if not prefix:
        return _basename(raw), None
    return _basename(prefix), int(n) if n.strip().lstrip("-").isdigit() else None


def _norm(prefix: str) -> str:
    return os.path.normpath(prefix.strip())


def start_of(cfg: dict, sig: Signature) -> tuple[bool, str]:
    """(resumes its own stage, how the run started and why it was decided so)."""
    raw = str(cfg.get("pretrained") or "").strip()
    if not raw:
        return False, "started from scratch (no --pretrained)"
    prefix = raw.rpartition(",")[0] or raw
    own = str(cfg.get("prefix") or "").strip()
    base = _basename(prefix)
    if sig.input_stage is not None and base == sig.input_output:
        return False, (f"started from {sig.input_stage}'s model, as the stage does: --pretrained {raw}"
                       + (" (written into the same prefix, as the seed's fine-tune is: not a resume)"
                          if own and _norm(prefix) == _norm(own) else ""))  # fmt: skip
    if own:
        if _norm(prefix) == _norm(own):
            return True, f"resumed: --pretrained {raw} is a checkpoint of its own --prefix {own}"
        return False, (f"a new stage started from another run's model: --pretrained {raw}, while its own --prefix is "
                       f"{own} (resuming means the same prefix)")  # fmt: skip
    if base == sig.output:
        return True, (f"resumed, judged by the checkpoint's name only: --pretrained {raw} is named as the stage's "
                      f"own checkpoints ({sig.output}) and the log has no --prefix to compare")  # fmt: skip
    return False, f"started from a pretrained model: --pretrained {raw}"


def resumed_of(cfg: dict, sig: Signature, start_step: int | None = None) -> Resumed | None:
    """Whether a log with this configuration continues its own stage, and its step mapping."""
    base, n = _pretrained(cfg)
    if base is None or not start_of(cfg, sig)[0]:
        return None
    verbose = cfg.get("verbose")
    if start_step is not None:
        return Resumed(n, verbose if isinstance(verbose, int) else None, start_step,
                       f"resumed from its own checkpoint {n}: log step s is stage step s + {start_step} "
                       f"(given with --start-step)")  # fmt: skip
    if n is None or not isinstance(verbose, int):
        why = "no checkpoint number in --pretrained" if n is None else "no --verbose in its configuration"
        return Resumed(n, None, None, f"resumed from its own stage's checkpoint, but the stage step it starts from "
                                      f"cannot be known ({why}): give --start-step")  # fmt: skip
    off = n * verbose
    return Resumed(n, verbose, off,
                   f"resumed from its own checkpoint {n}: log step s is stage step s + {off} (checkpoint {n} x "
                   f"--verbose {verbose}, taking checkpoint {n} to be from a run that started at step 0)")  # fmt: skip


def _total(cfg: dict) -> tuple[int, str] | None:
    """A log's total batch: the pinned code's batch_size (per_batch_size x ctx_num), else their product."""
    bs, per, ctx = cfg.get("batch_size"), cfg.get("per_batch_size"), cfg.get("ctx_num")
    if isinstance(per, int) and isinstance(ctx, int) and ctx > 0:
        return per * ctx, f"{ctx} GPU(s) x {per}"
    if isinstance(bs, int) and bs > 0:
        return bs, f"batch_size {bs}"
    return None


def _total_batch_difference(cfg: dict, seed_per: Any) -> str | None:
    """The total batch is what the seed fixed (one P40 x per_batch_size): 4 GPUs x 128 is the seed's 512."""
    total = _total(cfg)
    if total is None or not isinstance(seed_per, int):
        per = cfg.get("per_batch_size")
        return (
            None
            if _same("per_batch_size", per, seed_per)
            else (f"per_batch_size {per!r} in the log, {seed_per!r} in the recipe (the log does not say how many GPUs)")
        )
    if total[0] == seed_per:
        return None
    return f"total batch {total[0]} ({total[1]}) in the log, the seed's {seed_per} (one GPU x {seed_per})"


def total_note(cfg: dict, sig: Signature) -> str | None:
    """Where the total batch is the seed's in another form, say so (it is the same experiment)."""
    total, seed = _total(cfg), sig.args.get("per_batch_size")
    if total and isinstance(seed, int) and total[0] == seed and cfg.get("ctx_num") not in (None, 1):
        return f"total batch {total[0]} = the seed's, on {total[1]}"
    return None


def compare(cfg: dict, sig: Signature, start_step: int | None = None) -> tuple[bool, list[str], Resumed | None]:
    """(eligible, differences, resumed) of a log configuration against a stage signature. Eligible: the
    defining arguments are equal and --pretrained is what the stage starts from, or its own checkpoint."""
    resumed = resumed_of(cfg, sig, start_step)
    base, n = _pretrained(cfg)
    defining, compared = keys_of(cfg)
    eligible = all(key not in cfg or _same(key, cfg[key], sig.args.get(key)) for key in defining)
    eligible = eligible and of_args(cfg).name == of_args(sig.args).name
    if resumed is None and (base is None) != (sig.input_stage is None):
        eligible = False
    diffs: list[str] = []
    for key in compared:
        if key not in cfg:
            continue
        got, want = cfg[key], sig.args.get(key)
        if key == "per_batch_size" and of_args(cfg).batch_per_device:
            d = _total_batch_difference(cfg, want)
            if d:
                diffs.append(d)
            continue
        if key == "lr_steps" and resumed is not None and resumed.offset:
            steps = _steps(got)
            if steps is not None:
                mapped = ",".join(str(s + resumed.offset) for s in steps)
                if not _same(key, mapped, want):
                    diffs.append(f"lr_steps {got!r} in the log ({mapped} in stage steps), {want!r} in the recipe")
                continue
        if not _same(key, got, want):
            diffs.append(f"{key} {got!r} in the log, {want!r} in the recipe")
    if resumed is None:
        if sig.input_stage is None and base is not None:
            diffs.append(f"pretrained {cfg.get('pretrained')!r} in the log; the recipe's stage starts from scratch")
        elif sig.input_stage is not None and base is None:
            diffs.append(f"no pretrained model in the log; the recipe starts from {sig.input_stage}")
        elif sig.input_stage is not None and base != sig.input_output:
            diffs.append(f"pretrained {base!r} in the log, the recipe starts from {sig.input_stage} "
                         f"({sig.input_output})")  # fmt: skip
        elif sig.input_checkpoint is not None and n != sig.input_checkpoint:
            diffs.append(f"pretrained checkpoint {n} in the log, {sig.input_checkpoint} in the recipe")
    return eligible, diffs, resumed


def detect_stage(
    summary: Summary,
    *,
    recipe: str | None = None,
    profile: str | None = None,
    stage: str | None = None,
    start_step: int | None = None,
) -> StageMatch:
    """The recipe stage a log ran (``recipe``/``profile``/``stage`` narrow or override the search)."""
    from mfnpatch.recipes.recipe import RecipeError

    sigs = signatures([recipe] if recipe else None, profiles=True)
    if profile is not None:
        sigs = [s for s in sigs if s.profile == profile]
    elif recipe is not None:
        sigs = [s for s in sigs if s.profile is None] or sigs
    if stage is not None:
        named = [s for s in sigs if s.stage == stage]
        if not named:
            have = sorted({s.stage for s in sigs})
            raise RecipeError(f"--stage {stage}: no training stage of that name", hint=f"stages: {', '.join(have)}")
        sigs = named
    cfg = summary.config
    defining, compared = keys_of(cfg or {})
    if cfg is not None and stage is None and not all(k in cfg for k in defining):
        missing = [k for k in defining if k not in cfg]
        return StageMatch(None, [], [], None,
                          f"the log's 'Called with argument' line has no {' or '.join(missing)}: its stage cannot be "
                          f"told (comparing nothing is no match); name it with --stage")  # fmt: skip
    if cfg is None:
        if stage is not None:
            sig = sigs[0]
            return StageMatch(sig, [], [], None,
                              "given with --stage (the log has no configuration line to compare)")  # fmt: skip
        return StageMatch(None, [], [], None, "the log has no 'Called with argument' line: its stage is unknown")
    scored = []
    for i, sig in enumerate(sigs):
        ok, diffs, resumed = compare(cfg, sig, start_step)
        if ok or stage is not None:
            scored.append((len(diffs) if ok else 1000 + len(diffs), i, sig, diffs, resumed))
    if not scored:
        seen = sorted({f"{s.stage} (loss_type {s.args.get('loss_type')})" for s in sigs})
        return StageMatch(None, [], [], None,
                          f"matches no recipe stage (loss_type {cfg.get('loss_type')!r}, network "
                          f"{cfg.get('network')!r}, pretrained {cfg.get('pretrained')!r}; stages: "
                          f"{', '.join(seen)})")  # fmt: skip
    scored.sort(key=lambda x: (x[0], x[1]))
    best, _, sig, diffs, resumed = scored[0]
    _, start = start_of(cfg, sig)
    notes = [n for n in (total_note(cfg, sig),) if n]
    also = [s.label for score, _, s, _, _ in scored[1:] if score == best]
    unread = [k for k in compared if k not in cfg]
    if stage is not None:
        how = f"given with --stage {stage}"
    elif not diffs and not unread:
        how = "every compared argument equals the recipe's"
    elif not diffs:
        how = (f"the {len(compared) - len(unread)} compared arguments the log has equal the recipe's; it lacks "
               f"{', '.join(unread)}")  # fmt: skip
    else:
        how = f"the closest stage with the same {', '.join(k.replace('_', ' ') for k in defining)} and starting point"
    # the pretrained model's file name tells stages apart, but is no setting of the experiment
    settings = [d for d in diffs if not d.startswith("pretrained ")]
    return StageMatch(sig, diffs, also, resumed, how, unread, start, notes, settings)
