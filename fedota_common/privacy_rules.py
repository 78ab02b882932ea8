"""The rules of a problem's privacy requirement, one set for the website and the client.

The website checks a requirement when the problem setter saves it; the client checks it
again when it reads a join bundle (which its holder may have edited). Both ask this module,
so what one accepts the other does; each words its own messages.
"""

from __future__ import annotations

import math
from typing import Any

KEYS = ("min_noise_multiplier", "clipping_norm", "delta")
BOUNDS = {
    "min_noise_multiplier": "a number above 0",
    "clipping_norm": "a number above 0",
    "delta": "a number between 0 and 1 (both excluded)",
}


def unknown_keys(doc: Any) -> list[str]:
    """The keys of `doc` that are no setting of a privacy requirement, sorted."""
    return sorted(str(key) for key in doc if key not in KEYS)


def valid(key: str, value: Any) -> bool:
    """Whether `value` may stand for `key` (one of KEYS): a finite number in its bounds, never a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return False
    return math.isfinite(number) and number > 0 and (key != "delta" or number < 1)
