"""Attempts and resuming a run from its last checkpoint.

Every start of a coordinator on a run's state folder is a numbered attempt
(`attempts.json`). Round records are appended to `rounds.jsonl` with their
attempt, and checkpoints of attempt K > 1 go to `checkpoints/attempt-K/`, so no
attempt overwrites another's history.

A restarted coordinator resumes from the last round whose checkpoint is on
disk when the ServerApp runs one of Flower's Message-API strategies through
`Strategy.start` (the built-in apps and most uploaded apps). Flower has no
"start at round N" of its own, so the first `Strategy.start` of the restarted
ServerApp is given:

- the checkpoint as `initial_arrays` and the rounds left as `num_rounds`;
- round numbers that continue: the strategy's configure and aggregate methods
  see `server_round + N`, so messages carry `server-round` N+1, N+2, ... and
  server optimisers (FedAdam, FedYogi, FedAdagrad) use the right step;
- the server-optimiser state saved with the checkpoint (`m_t`, `v_t` of the
  FedOpt family, FedAvgM's `momentum_vector`).

Not restored: anything else the ServerApp keeps in memory (its own variables,
the `Result` history before the restart, a centralised `evaluate_fn`'s round
numbers, which count from 1 again), and apps that do not use `Strategy.start`
(the compatibility API's workflows, a ServerApp driving the Grid itself): those
restart at round 1 as a new attempt, and the coordinator says so.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as fl

log = logging.getLogger(__name__)

ATTEMPTS = "attempts.json"
# The methods whose `server_round` argument continues the numbering after a resume.
_ROUND_METHODS = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")
# Marks a method wrapped to continue the round numbering (coordinator/folding.py sees through it).
OFFSET_OF = "fedota_offset_of"


@dataclass(frozen=True)
class Plan:
    """Where a restarted run picks up: after `round`, from `arrays` and the strategy `state`."""

    round: int
    arrays: ArrayRecord
    state: dict[str, np.ndarray]
    attempt: int


def identity(run_id: int, fab_sha256: str, run_config: dict[str, Any]) -> str:
    """What must be the same for a state folder's checkpoints to belong to this run."""
    doc = json.dumps({"run": run_id, "fab": fab_sha256, "config": run_config}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def begin_attempt(state_dir: Path, run_identity: str, *, resume: bool) -> tuple[int, Plan | None]:
    """Record a new attempt of the run in `state_dir`; the plan to resume from, if any.

    A state folder that holds another run's history has it moved to
    `archive/` first, never deleted.
    """
    path = state_dir / ATTEMPTS
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("attempts.json is unreadable; starting a new history", extra={"error": str(exc)})
            doc = {}
    if doc and doc.get("identity") != run_identity:
        _archive(state_dir)
        doc = {}
    attempts: list[dict[str, Any]] = list(doc.get("attempts", []))
    attempt = len(attempts) + 1
    plan = _plan(state_dir, attempt) if resume and attempts else None
    attempts.append({"attempt": attempt, "started": time.time(), "resumed_after_round": plan.round if plan else None})
    path.write_text(json.dumps({"identity": run_identity, "attempts": attempts}, indent=2))
    return attempt, plan


def _archive(state_dir: Path) -> None:
    target = state_dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for name in (ATTEMPTS, "rounds.jsonl", "checkpoints", "summary.json", "final_model.npz", "final_model.pt"):
        source = state_dir / name
        if source.exists():
            source.rename(target / name)
    log.info("another run's history moved aside", extra={"to": str(target)})


def _plan(state_dir: Path, attempt: int) -> Plan | None:
    """The last round (in the order recorded) whose checkpoint is complete on disk."""
    records = state_dir / "rounds.jsonl"
    if not records.exists():
        return None
    for line in reversed(records.read_text().splitlines()):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        checkpoint, number = doc.get("checkpoint"), doc.get("round")
        if not checkpoint or not isinstance(number, int) or not (state_dir / checkpoint).is_file():
            continue
        with np.load(state_dir / checkpoint) as npz:
            arrays = ArrayRecord({k: Array(npz[k]) for k in npz.files})
        state: dict[str, np.ndarray] = {}
        saved = doc.get("strategy_state")
        if saved and (state_dir / saved).is_file():
            with np.load(state_dir / saved) as npz:
                state = {k: npz[k] for k in npz.files}
        return Plan(number, arrays, state, attempt)
    return None


# ---- the strategy's state ------------------------------------------------------------------


def capture(strategy: object) -> dict[str, np.ndarray]:
    """The server-optimiser state of one of Flower's strategies, flat (references, no copies)."""
    out: dict[str, np.ndarray] = {}
    for name in ("m_t", "v_t"):
        value = getattr(strategy, name, None)
        if isinstance(value, dict):
            out.update({f"{name}/{k}": np.asarray(v) for k, v in value.items()})
    momentum = getattr(strategy, "momentum_vector", None)
    if isinstance(momentum, list):
        out.update({f"momentum_vector/{i}": np.asarray(v) for i, v in enumerate(momentum)})
    return out


def _restore(strategy: object, state: dict[str, np.ndarray]) -> None:
    dicts: dict[str, dict[str, np.ndarray]] = {}
    momentum: dict[int, np.ndarray] = {}
    for key, value in state.items():
        name, _, item = key.partition("/")
        if name in ("m_t", "v_t"):
            dicts.setdefault(name, {})[item] = value
        elif name == "momentum_vector":
            momentum[int(item)] = value
    for name, arrays in dicts.items():
        setattr(strategy, name, arrays)
    if momentum:
        strategy.momentum_vector = [momentum[i] for i in sorted(momentum)]  # type: ignore[attr-defined]


def _continue_numbering(strategy: object, offset: int) -> None:
    for name in _ROUND_METHODS:
        method = getattr(type(strategy), name)

        def shifted(server_round: int, *args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            return _method(strategy, server_round + offset, *args, **kwargs)

        functools.update_wrapper(shifted, method)
        setattr(shifted, OFFSET_OF, method)
        setattr(strategy, name, shifted)


@contextlib.contextmanager
def running(plan: Plan | None, echo: Callable[[str], None], on_result: Callable[[ArrayRecord], None]) -> Iterator[None]:
    """While the ServerApp runs, Flower's `Strategy.start` is watched.

    Its first call picks up where `plan` left off (if there is one), and every
    call hands the model it returns to `on_result`: the last round's model,
    which the coordinator would not otherwise see unless it is sent out again.
    """
    original = fl.Strategy.start
    signature = inspect.signature(original)
    pending = [plan] if plan is not None else []

    def start(self: fl.Strategy, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if pending:
            taken = pending.pop()
            total = int(bound.arguments["num_rounds"])
            _restore(self, taken.state)
            _continue_numbering(self, taken.round)
            bound.arguments["initial_arrays"] = taken.arrays
            bound.arguments["num_rounds"] = max(0, total - taken.round)
            what = "with its server-optimiser state" if taken.state else "(no server-optimiser state to restore)"
            echo(
                f"attempt {taken.attempt}: resuming after round {taken.round} of {total} from its checkpoint, "
                f"{type(self).__name__} {what}"
            )
        result = original(*bound.args, **bound.kwargs)
        arrays = getattr(result, "arrays", None)
        if isinstance(arrays, ArrayRecord):
            on_result(arrays)
        return result

    fl.Strategy.start = start  # type: ignore[method-assign]
    try:
        yield
    finally:
        fl.Strategy.start = original  # type: ignore[method-assign]
        if pending and plan is not None:
            echo(
                f"attempt {plan.attempt}: could not resume after round {plan.round}: the ServerApp does not run "
                "a Flower strategy's start(); it started again at round 1"
            )
