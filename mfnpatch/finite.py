"""Numbers that decide a verdict: a non-finite value (NaN, infinity) never passes.

``x >= tol`` is False for NaN, but ``x < tol`` is False too, and ``min()`` of a list that holds a NaN depends on
where the NaN stands: a check written as "fail when below" passes a NaN. Every comparison that decides a
verdict goes through ``at_least``/``at_most`` (False for a non-finite value), and the worst of several values
is ``lowest`` (NaN when any is NaN). ``finite`` turns an object into strict JSON's numbers (NaN and infinity
as null), for every JSON file and stdout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def is_finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError, OverflowError):
        return False


def at_least(x: Any, floor: float) -> bool:
    """``x >= floor`` for a finite number ``x``; False for NaN, infinities and what is not a number."""
    return is_finite(x) and float(x) >= floor


def at_most(x: Any, ceiling: float) -> bool:
    """``x <= ceiling`` for a finite number ``x``; False for NaN, infinities and what is not a number."""
    return is_finite(x) and float(x) <= ceiling


def lowest(values: Iterable[Any]) -> float:
    """The smallest of ``values``, or NaN when any of them is not a finite number (whatever its place)."""
    vals = [float(v) for v in values]
    if not vals or any(not math.isfinite(v) for v in vals):
        return math.nan
    return min(vals)


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, Infinity: not JSON) as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
