"""Attempts and resume plans (coordinator/resume.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as fl

from coordinator.folding import _TRAIN, _own
from coordinator.resume import _continue_numbering, _restore, begin_attempt, capture, identity

pytestmark = pytest.mark.usefixtures("task_identity")

RUN = identity(1, "abc", {"num-server-rounds": 5})


def _round(state: Path, number: int, attempt: int, *, write: bool = True) -> None:
    folder = "checkpoints" + (f"/attempt-{attempt}" if attempt > 1 else "")
    path = state / folder / f"round_{number:04d}.npz"
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, w=np.full(3, float(number), dtype=np.float32))
    doc = {"round": number, "attempt": attempt, "checkpoint": str(path.relative_to(state)), "strategy_state": None}
    with (state / "rounds.jsonl").open("a") as fh:
        fh.write(json.dumps(doc) + "\n")


def test_the_first_attempt_has_nothing_to_resume(tmp_path: Path) -> None:
    assert begin_attempt(tmp_path, RUN, resume=True) == (1, None)


def test_a_restart_resumes_after_the_last_round_whose_checkpoint_is_on_disk(tmp_path: Path) -> None:
    begin_attempt(tmp_path, RUN, resume=True)
    _round(tmp_path, 1, 1)
    _round(tmp_path, 2, 1)
    _round(tmp_path, 3, 1, write=False)  # killed while its checkpoint was being written
    attempt, plan = begin_attempt(tmp_path, RUN, resume=True)
    assert attempt == 2 and plan is not None and plan.round == 2
    assert plan.arrays["w"].numpy().tolist() == [2.0, 2.0, 2.0]
    # resume off: a new attempt, from round 1, history kept
    attempt, plan = begin_attempt(tmp_path, RUN, resume=False)
    assert attempt == 3 and plan is None
    assert len((tmp_path / "rounds.jsonl").read_text().splitlines()) == 3


def test_another_runs_history_is_moved_aside_not_resumed(tmp_path: Path) -> None:
    begin_attempt(tmp_path, RUN, resume=True)
    _round(tmp_path, 1, 1)
    other = identity(2, "abc", {"num-server-rounds": 5})
    assert begin_attempt(tmp_path, other, resume=True) == (1, None)
    [archived] = (tmp_path / "archive").iterdir()
    assert (archived / "rounds.jsonl").exists() and (archived / "checkpoints" / "round_0001.npz").exists()
    assert not (tmp_path / "rounds.jsonl").exists()


@pytest.mark.parametrize("cls", [fl.FedAdam, fl.FedYogi, fl.FedAdagrad])
def test_server_optimiser_state_round_trips(cls: type[fl.FedOpt]) -> None:
    before = cls()
    before.m_t = {"w": np.ones(3)}
    before.v_t = {"w": np.full(3, 2.0)}
    after = cls()
    _restore(after, {k: np.array(v) for k, v in capture(before).items()})
    assert after.m_t is not None and after.v_t is not None
    assert after.m_t["w"].tolist() == [1.0] * 3 and after.v_t["w"].tolist() == [2.0] * 3


def test_fedavgm_momentum_round_trips() -> None:
    before = fl.FedAvgM(server_momentum=0.9)
    before.momentum_vector = [np.ones(2), np.zeros(3)]
    after = fl.FedAvgM(server_momentum=0.9)
    _restore(after, capture(before))
    assert after.momentum_vector is not None and [v.shape for v in after.momentum_vector] == [(2,), (3,)]


def test_a_resumed_strategy_is_still_folded() -> None:
    """Its methods are wrapped to continue the numbering; folding looks at what they wrap."""
    strategy = fl.FedAvg()
    _continue_numbering(strategy, 3)
    assert "aggregate_train" in vars(strategy) and _own(strategy, "aggregate_train", _TRAIN)


def test_offset_reaches_the_round_number_flower_uses() -> None:
    strategy = fl.FedAvg(min_available_nodes=1, min_train_nodes=1)
    _continue_numbering(strategy, 3)
    arrays, _metrics = strategy.aggregate_train(1, [])
    assert arrays is None  # nothing to aggregate, but it ran as round 4

    class OneNode:
        def get_node_ids(self) -> list[int]:
            return [7]

    from flwr.app import ConfigRecord

    record = ConfigRecord()
    strategy.configure_train(1, ArrayRecord({"w": Array(np.zeros(1))}), record, OneNode())  # type: ignore[arg-type]
    assert record["server-round"] == 4
