"""Templates in a recipe, in one place: ``${name}`` is a parameter or a built-in, ``${inputs.NAME}`` an input of
the stage, ``${stages.STAGE.outputs.NAME}`` an output of an earlier stage.

A template is rendered once, when the recipe is expanded into a plan (``Scope``). What only a run can know — a
stage's inputs, resolved from earlier stages' logs — stays a ``Slot`` in the rendered ``Text``; the runner fills
the slots (``fill``) and renders nothing again.

Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mfnpatch.recipes import RecipeError

VAR = re.compile(r"\$\{([A-Za-z_][\w.-]*)\}")

# The most characters one rendered value may hold: Linux's limit on one argument of a command (MAX_ARG_STRLEN).
# Parameters that use each other twice over double at every step; the limit is checked before a piece is joined.
MAX_RENDERED = 128 << 10


def _bounded(n: int, what: str) -> int:
    """``n``, the characters rendered so far, unless it is over MAX_RENDERED."""
    if n > MAX_RENDERED:
        raise RecipeError(
            f"{what} renders to more than {MAX_RENDERED // 1024} KiB ({n:,} characters so far): parameters that use "
            "each other more than once grow with every step",
            hint="a value names each parameter it needs once; a command argument is at most 128 KiB",
        )
    return n


@dataclass(frozen=True)
class Slot:
    """``${inputs.NAME}``: a stage input, known once the run has resolved it."""

    name: str


Text = tuple[str | Slot, ...]  # a rendered template: literal pieces and the stage's input slots


def fill(text: Text, inputs: Mapping[str, str]) -> str:
    """A rendered template with its slots filled (a slot without a value is an error of the caller)."""
    return "".join(p if isinstance(p, str) else inputs[p.name] for p in text)


def literal(text: Text) -> bool:
    return all(isinstance(p, str) for p in text)


class Scope:
    """Values for ${...}: parameters (rendered recursively), built-ins, earlier stages' outputs; ``inputs`` holds
    what plain strings (titles, env) show for an input: its value when the plan knows it, else a placeholder."""

    def __init__(self, params: dict[str, Any], builtins: dict[str, Any]):
        self.raw = params
        self.builtins = builtins
        self.rendered: dict[str, Any] = {}
        self.outputs: dict[str, dict[str, str]] = {}
        self.inputs: dict[str, str] = {}
        self._rendering: list[str] = []  # parameters being rendered (a cycle is an error, not a recursion)

    def param(self, name: str) -> Any:
        if name not in self.rendered:
            if name in self._rendering:
                chain = " -> ".join([*self._rendering[self._rendering.index(name) :], name])
                raise RecipeError(
                    f"parameter {name} refers to itself: {chain}",
                    hint="a value may use other parameters, never itself (directly or through others)",
                )
            v = self.raw[name]
            self._rendering.append(name)
            try:
                self.rendered[name] = self.render(v, f"parameter {name}") if isinstance(v, str) else v
            finally:
                self._rendering.pop()
        return self.rendered[name]

    def lookup(self, var: str) -> Any:
        if var in self.raw:
            return self.param(var)
        if var in self.builtins:
            return self.builtins[var]
        parts = var.split(".")
        if parts[0] == "inputs":
            return self.inputs.get(parts[1], f"<{parts[1]}: resolved at run time>")
        if parts[0] == "stages":
            return self.outputs.get(parts[1], {}).get(parts[3], f"<{var}>")
        raise RecipeError(f"unknown parameter '${{{var}}}'")

    @staticmethod
    def _text(v: Any) -> str:
        if isinstance(v, list):
            return " ".join(v)
        return "" if v is None else str(v)

    def render(self, text: str, what: str = "a template") -> str:
        """A template as a string (inputs shown as ``inputs`` says), at most MAX_RENDERED characters."""
        out: list[str] = []
        pos = n = 0
        for m in VAR.finditer(text):
            out += [text[pos : m.start()], self._text(self.lookup(m.group(1)))]
            n = _bounded(n + len(out[-2]) + len(out[-1]), what)
            pos = m.end()
        out.append(text[pos:])
        _bounded(n + len(out[-1]), what)
        return "".join(out)

    def parts(self, text: str) -> Text:
        """A template rendered with its stage inputs left as slots."""
        out: list[str | Slot] = []
        pos = n = 0
        for m in VAR.finditer(text):
            out.append(text[pos : m.start()])
            n += m.start() - pos
            var = m.group(1)
            if var.startswith("inputs."):
                out.append(Slot(var.split(".", 1)[1]))
            else:
                value = self._text(self.lookup(var))
                out.append(value)
                n = _bounded(n + len(value), "a template")
            pos = m.end()
        out.append(text[pos:])
        merged: list[str | Slot] = []
        for p in out:
            if isinstance(p, str) and merged and isinstance(merged[-1], str):
                merged[-1] += p
            elif p != "":
                merged.append(p)
        return tuple(merged) if merged else ("",)

    def is_null(self, text: str) -> bool:
        """A template that is exactly one variable whose value is null/empty."""
        m = VAR.fullmatch(text.strip())
        return m is not None and not m.group(1).startswith("inputs.") and self.lookup(m.group(1)) in (None, "")

    def number(self, v: int | str, what: str) -> int:
        """A checkpoint or step number: an integer of at least 1."""
        text = str(v) if isinstance(v, int) else self.render(v)
        try:
            n = int(text)
        except ValueError:
            raise RecipeError(f"{what}: {text!r} is not a number") from None
        if n < 1:
            raise RecipeError(f"{what}: {n}: checkpoints and steps count from 1")
        return n


def render_command(command: list, scope: Scope) -> list[Text]:
    """A stage's command as rendered texts: a ``{flag, value}`` item is left out when its value is null or
    empty; an item that is exactly a list-valued variable (``${mfnpatch}``) becomes its items."""
    out: list[Text] = []
    for item in command:
        if not isinstance(item, str):  # a FlagArg
            if scope.is_null(item.value):
                continue
            if item.sep is not None:
                out.append((item.flag + item.sep, *scope.parts(item.value)))
            else:
                out += [(item.flag,), scope.parts(item.value)]
        elif (
            (m := VAR.fullmatch(item))
            and not m.group(1).startswith("inputs.")
            and isinstance(scope.lookup(m.group(1)), list)
        ):
            out += [(x,) for x in scope.lookup(m.group(1))]
        else:
            out.append(scope.parts(item))
    return out


def render_env(env: dict[str, str | None], scope: Scope) -> dict[str, str]:
    """An env value that renders empty is still set; ``null`` (or a variable whose value is null) is left out."""
    out = {}
    for k, v in env.items():
        if v is None or ((m := VAR.fullmatch(v.strip())) and scope.lookup(m.group(1)) is None):
            continue
        out[k] = scope.render(v)
    return out


def templated(stage) -> list[tuple[tuple, str]]:
    """(location under the stage, text) of every string a recipe stage renders."""
    out: list[tuple[tuple, str]] = []
    for i, item in enumerate(stage.command):
        if isinstance(item, str):
            out.append((("command", i), item))
        else:
            out.append((("command", i, "value"), item.value))
    for k, v in stage.env.items():
        if v is not None:
            out.append((("env", k), v))
    for k, v in stage.outputs.items():
        out.append((("outputs", k), v))
    for i, c in enumerate(stage.copy_):
        out += [(("copy", i, "checkpoint"), c.checkpoint), (("copy", i, "to"), c.to)]
    for k, ref in stage.inputs.items():
        if isinstance(ref, str):
            out.append((("inputs", k), ref))
        else:
            for f in ("checkpoint", "step"):
                v = getattr(ref, f)
                if isinstance(v, str):
                    out.append((("inputs", k, f), v))
    if stage.stop is not None:
        for f in ("checkpoint", "step"):
            v = getattr(stage.stop, f)
            if isinstance(v, str):
                out.append((("stop", f), v))
    if stage.when:
        out.append((("when",), stage.when))
    if stage.data is not None:
        for f in ("dir", "targets", "variant"):
            v = getattr(stage.data, f)
            if v is not None:
                out.append((("data", f), v))
    for i, e in enumerate(stage.expect):
        if e.json_file:
            out.append((("expect", i, "json"), e.json_file))
    return out
