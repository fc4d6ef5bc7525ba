"""The configuration line of a run (``Called with argument: Namespace(...)``), read without running it."""

from __future__ import annotations

import ast
import re


def parse_namespace(text: str) -> dict:
    """``Namespace(a=1, b='x')`` -> {'a': 1, 'b': 'x'} (Python 2 and 3 reprs)."""
    inner = text.strip()
    if inner.startswith("Namespace(") and inner.endswith(")"):
        inner = inner[len("Namespace(") : -1]
    src = re.sub(r"(?<=\d)L\b", "", inner)  # Python 2 longs
    try:
        call = ast.parse(f"f({src})", mode="eval").body
        out = {}
        for kw in call.keywords:  # type: ignore[attr-defined]
            if kw.arg is None:
                continue
            try:
                out[kw.arg] = ast.literal_eval(kw.value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                out[kw.arg] = ast.unparse(kw.value)
        return out
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        out = {}
        for m in re.finditer(r"(\w+)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,]*)", src):
            v = m.group(2).strip()
            try:
                out[m.group(1)] = ast.literal_eval(v)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                out[m.group(1)] = v
        return out
