"""How a run ended, as words and as the `RunStatus` enums of the coordinator and selector protocols.

Both protocols number `RUN_STATUS_<NAME>` alike; one mapping serves every hop
(coordinator -> selectors -> clients) instead of a table per hop.
"""

from __future__ import annotations

from typing import Any

# finished: the ServerApp returned; failed: it raised, or nothing it asked for was accepted;
# stopped: the website (or an operator) stopped the run.
STATUSES = ("finished", "failed", "stopped")


def to_proto(enum: Any, status: str) -> int:
    """`status` (one of STATUSES) as a value of the protocol's `RunStatus` enum; KeyError otherwise."""
    if status not in STATUSES:
        raise KeyError(status)
    return int(enum.Value(f"RUN_STATUS_{status.upper()}"))


def from_proto(enum: Any, value: int) -> str | None:
    """The status a `RunStatus` value names; None for UNSPECIFIED (or a value this code does not know)."""
    try:
        name = str(enum.Name(value)).removeprefix("RUN_STATUS_").lower()
    except ValueError:
        return None
    return name if name in STATUSES else None
