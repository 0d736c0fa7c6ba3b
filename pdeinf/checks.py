"""Argument checks shared by every public function: each returns the checked (normalised)
value or raises `InputError` naming the argument."""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from pdeinf.errors import InputError


def positive_int(value, name: str, *, allow_none: bool = False, minimum: int = 1) -> int | None:
    """`value` as an int >= `minimum` (bools and floats refused)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise InputError(f"{name}={value!r}: must be {what}")
    return int(value)


def finite_float(value, name: str, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None, positive: bool = False) -> float:
    """`value` as a finite float, optionally > 0 (`positive`), >= `minimum`, > `above`,
    <= `maximum`."""
    if isinstance(value, bool):
        raise InputError(f"{name}={value!r}: expected a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}={value!r}: expected a number") from None
    if not math.isfinite(out):
        raise InputError(f"{name}={value!r}: expected a finite number")
    above = 0.0 if positive and above is None else above
    for broken, bound in ((minimum is not None and out < minimum, f">= {minimum}"),
                          (above is not None and out <= above, f"> {above}"),
                          (maximum is not None and out > maximum, f"<= {maximum}")):
        if broken:
            raise InputError(f"{name}={value!r}: expected a number {bound}")
    return out


def one_of(value, choices: Iterable, name: str):
    """`value` if it is one of `choices`, else InputError listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{name}: unknown {value!r}; expected one of {', '.join(map(str, choices))}")
    return value
