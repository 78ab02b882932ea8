"""One thread at a time in `ast.parse`: a guard against a CPython 3.11 bug.

CPython 3.11 (3.11.7 here) keeps the depth counter of its AST-to-Python conversion in
interpreter-wide state, not per thread. When two threads convert at once (a switch in
the middle of one conversion, through a finaliser or the GIL's switch interval), the
count one of them ends with differs from the one it started with, and `ast.parse`
raises `SystemError: AST constructor recursion depth mismatch` (CPython gh-106905 and
its reports; seen in the coordinator's checkpoint writer, under load). Our services parse
small expressions all the time without asking: numpy reads every `.npy` header with
`ast.literal_eval`, and Flower's `Array.numpy()` loads each array that way, from the
gRPC, folding, checkpoint and report threads at once.

`install()` wraps `ast.parse` (which `ast.literal_eval` calls) in a re-entrant lock, so
conversions never overlap. The header of an array is a few dozen characters: the lock
is held for microseconds.
"""

from __future__ import annotations

import ast
import functools
import threading
from typing import Any

_LOCK = threading.RLock()
# Marks the wrapper, so a second install() leaves it as it is.
_GUARDED = "_fedota_one_thread_at_a_time"


def install() -> None:
    """Serialise `ast.parse` in this process (idempotent)."""
    original = ast.parse
    if getattr(original, _GUARDED, False):
        return

    @functools.wraps(original)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return original(*args, **kwargs)

    setattr(parse, _GUARDED, True)
    ast.parse = parse  # type: ignore[assignment]
