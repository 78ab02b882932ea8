"""Which rounds selectors fold, decided from the running ServerApp (coordinator/folding.py).

A Grid that only records `folding_for` of its caller is driven by Flower's own
`Strategy.start`, so the decision is taken on the real call path.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.server import strategy as legacy
from flwr.serverapp import Grid
from flwr.serverapp import strategy as fl

from coordinator.folding import Folding, _compat_api, _local, folding_for

pytestmark = pytest.mark.usefixtures("task_identity")


class RecordingGrid(Grid):
    """Two nodes that never answer; notes the folding decision of each `send_and_receive`."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, Folding]] = []

    def set_run(self, run_id: int) -> None: ...

    @property
    def run(self) -> Any: ...

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:  # noqa: E501
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [1, 2]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return []

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        msgs = list(messages)
        if msgs:
            kind = msgs[0].metadata.message_type
            self.decisions.append((kind, folding_for(sys._getframe(1), kind)))
        return []


def _decisions(strategy: fl.Strategy) -> dict[str, Folding]:
    grid = RecordingGrid()
    strategy.start(grid, ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))}), num_rounds=1)
    return dict(grid.decisions)


NODES = {"min_available_nodes": 2, "min_train_nodes": 2, "min_evaluate_nodes": 2}
WEIGHTED = [
    fl.FedAvg(**NODES),
    fl.FedProx(**NODES, proximal_mu=0.1),
    fl.FedAvgM(**NODES, server_momentum=0.9),
    fl.FedAdam(**NODES),
    fl.FedYogi(**NODES),
    fl.FedAdagrad(**NODES),
]


@pytest.mark.parametrize("strategy", WEIGHTED, ids=lambda s: type(s).__name__)
def test_flowers_weighted_mean_strategies_fold_train_and_evaluate(strategy: fl.Strategy) -> None:
    got = _decisions(strategy)
    assert set(got) == {"train", "evaluate"}
    assert all(d.fold and d.weight_key == "num-examples" for d in got.values()), got


def test_the_weight_key_is_the_strategys_own() -> None:
    got = _decisions(fl.FedAvg(**NODES, weighted_by_key="samples"))
    assert {d.weight_key for d in got.values()} == {"samples"}


class Recording(fl.FedAvg):
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        return super().aggregate_train(server_round, list(replies))


class OnlyConfigures(fl.FedAvg):
    """Changes what is sent, not how replies are aggregated: still folded."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Grid) -> Iterable[Message]:
        config["extra"] = 1
        return super().configure_train(server_round, arrays, config, grid)


def _max_metrics(records: list[RecordDict], key: str) -> MetricRecord:
    return MetricRecord({"n": max(float(next(iter(r.metric_records.values()))[key]) for r in records)})  # type: ignore[arg-type]


def test_a_subclass_that_overrides_aggregation_is_never_folded() -> None:
    got = _decisions(Recording(**NODES))
    assert not got["train"].fold and "overrides aggregate_train" in got["train"].why
    # Evaluation still is Flower's own.
    assert got["evaluate"].fold


def test_a_subclass_that_only_configures_is_folded() -> None:
    assert all(d.fold for d in _decisions(OnlyConfigures(**NODES)).values())


def test_an_instance_with_a_patched_aggregation_is_not_folded() -> None:
    strategy = fl.FedAvg(**NODES)
    strategy.aggregate_train = lambda server_round, replies: (None, None)  # type: ignore[method-assign]
    assert not _decisions(strategy)["train"].fold


def test_own_metric_aggregation_is_not_folded() -> None:
    got = _decisions(fl.FedAvg(**NODES, train_metrics_aggr_fn=_max_metrics))
    assert not got["train"].fold and "own function" in got["train"].why
    assert got["evaluate"].fold


@pytest.mark.parametrize(
    "strategy",
    [
        fl.FedMedian(**NODES),
        fl.FedTrimmedAvg(**NODES),
        fl.Krum(**NODES),
        fl.QFedAvg(client_learning_rate=0.1, **NODES),
        fl.DifferentialPrivacyServerSideFixedClipping(
            fl.FedAvg(**NODES), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=2
        ),
        fl.DifferentialPrivacyClientSideFixedClipping(
            fl.FedAvg(**NODES), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=2
        ),
    ],
    ids=lambda s: type(s).__name__,
)
def test_other_strategies_training_is_not_folded(strategy: fl.Strategy) -> None:
    got = _decisions(strategy)
    assert not got["train"].fold, got
    # FedMedian and the others inherit FedAvg's evaluation: a weighted mean of metrics, folded.
    fedavg_evaluation = (
        isinstance(strategy, fl.FedAvg) and type(strategy).aggregate_evaluate is fl.FedAvg.aggregate_evaluate
    )
    assert got.get("evaluate", Folding(False, "", "")).fold == fedavg_evaluation, got


def test_a_server_app_calling_the_grid_itself_is_not_folded() -> None:
    grid = RecordingGrid()
    grid.send_and_receive([Message(RecordDict(), 1, "train")])
    [(_, decision)] = grid.decisions
    assert not decision.fold and "not by a Flower strategy's round" in decision.why


def test_query_messages_are_never_folded() -> None:
    assert not folding_for(sys._getframe(), "query").fold


def test_compatibility_strategies() -> None:
    assert _compat_api(legacy.FedAvg(), "train").fold
    assert _compat_api(legacy.FedAdam(initial_parameters=legacy_params()), "train").fold
    assert _compat_api(legacy.FedAvg(), "evaluate").weight_key == "num_examples"
    # A user's metrics function sees one (num_examples, metrics) pair per reply.
    with_fn = legacy.FedAvg(fit_metrics_aggregation_fn=lambda m: {}, evaluate_metrics_aggregation_fn=lambda m: {})
    assert not _compat_api(with_fn, "train").fold
    assert not _compat_api(with_fn, "evaluate").fold
    assert not _compat_api(legacy.FedMedian(), "train").fold
    assert not _compat_api(
        legacy.DifferentialPrivacyServerSideFixedClipping(legacy.FedAvg(), 0.0, 1.0, 2), "train"
    ).fold


def legacy_params() -> Any:
    from flwr.common import ndarrays_to_parameters

    return ndarrays_to_parameters([np.zeros(3, dtype=np.float32)])


def test_reading_the_strategy_from_its_frame_keeps_none_of_its_other_locals_alive() -> None:
    # Strategy.start's frame holds last round's replies while the next round is sent; a
    # snapshot of its locals kept them (a model's worth) alive through the next aggregation.
    class Replies(list[object]):
        pass

    def start() -> None:
        train_replies: Replies | None = Replies()
        gone = weakref.ref(train_replies)
        frame = sys._getframe()
        assert _local(frame, "train_replies") is train_replies
        train_replies = None  # the next round's replies replace them
        assert gone() is None
        del frame

    start()
