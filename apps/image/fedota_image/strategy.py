"""Pick a `flwr.serverapp.strategy` by name from the run config."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as fl

from .task import cfg_float, cfg_int, cfg_str

STRATEGIES: dict[str, type[fl.FedAvg]] = {
    "FedAvg": fl.FedAvg,
    "FedProx": fl.FedProx,
    "FedAvgM": fl.FedAvgM,
    "FedAdam": fl.FedAdam,
    "FedYogi": fl.FedYogi,
    "FedAdagrad": fl.FedAdagrad,
    "FedMedian": fl.FedMedian,
    "FedTrimmedAvg": fl.FedTrimmedAvg,
    "Krum": fl.Krum,
    "MultiKrum": fl.MultiKrum,
    "Bulyan": fl.Bulyan,
}


log = logging.getLogger(__name__)

# Strategies that apply a server-side optimiser step to the averaged update.
SERVER_OPTIMISERS = ("FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")


def _plain_weighted_mean(replies: list[Message], keys: Collection[str], weight_key: str) -> dict[str, np.ndarray]:
    sums: dict[str, np.ndarray] = {}
    total = 0.0
    for msg in replies:
        if msg.has_error():
            continue
        content = msg.content
        metrics = next(iter(content.metric_records.values()), MetricRecord())
        weight = float(metrics.get(weight_key, 0.0))  # type: ignore[arg-type]
        for record in content.array_records.values():
            for key in keys:
                if key in record:
                    value = record[key].numpy().astype(np.float64) * weight
                    sums[key] = sums[key] + value if key in sums else value
        total += weight
    if total <= 0:
        return {}
    return {k: (v / total).astype(np.float32) for k, v in sums.items()}


def _keep_dtypes(arrays: ArrayRecord, replies: list[Message]) -> None:
    """Cast the stepped arrays back to the model's dtypes (the replies').

    The server optimisers compute in float64 (a NumPy float64 scalar learning
    rate promotes float32 arrays), so the next round's model would be float64
    while the clients' model is float32: the app's own `strict` reply policy then
    refuses every reply after round 1.
    """
    for msg in replies:
        if msg.has_error():
            continue
        for record in msg.content.array_records.values():
            for key in list(arrays.keys()):
                if key in record and arrays[key].dtype != record[key].dtype:
                    arrays[key] = Array(arrays[key].numpy().astype(record[key].numpy().dtype))
        return


def with_plain_mean_for(cls: type[fl.FedAvg], keys: Collection[str]) -> type:
    """Subclass ``cls`` so that arrays named in ``keys`` get the weighted mean, and every array the model's dtype.

    Running statistics (the scaler's moments) are not trainable parameters: a
    server optimiser (momentum, Adam, ...) stepping them would overshoot and
    corrupt the normalisation. This keeps the strategy's update for everything
    else and sets those arrays to the plain ``num-examples``-weighted mean.
    """
    keys = frozenset(keys)

    def aggregate_train(
        self: fl.FedAvg, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        plain = _plain_weighted_mean(replies, keys, self.weighted_by_key)
        arrays, metrics = cls.aggregate_train(self, server_round, replies)
        if arrays is not None:
            for key, value in plain.items():
                if key in arrays:
                    arrays[key] = Array(value)
            _keep_dtypes(arrays, replies)
        return arrays, metrics

    return type(cls.__name__, (cls,), {"aggregate_train": aggregate_train})


def _kind(value: Any) -> Any:
    return ("list", len(value)) if isinstance(value, list) else "number"


def _shape_of(msg: Message) -> tuple[Any, ...]:
    """What Flower's aggregation needs to agree across replies: record names, keys, value kinds."""
    content = msg.content
    metrics = tuple(
        sorted(
            (name, tuple(sorted((k, _kind(v)) for k, v in rec.items()))) for name, rec in content.metric_records.items()
        )
    )
    arrays = tuple(sorted((name, tuple(sorted(rec.keys()))) for name, rec in content.array_records.items()))
    return metrics, arrays


def consistent_replies(replies: Iterable[Message]) -> list[Message]:
    """The replies shaped like most of them (errors pass through); the others are logged and left out.

    Flower's strategies refuse to aggregate replies whose records or metric keys
    differ (and fail the whole run): one participant's extra or missing metric
    must cost that reply only, not everyone's training.
    """
    replies = list(replies)
    shapes = {id(m): _shape_of(m) for m in replies if not m.has_error()}
    if len(set(shapes.values())) <= 1:
        return replies
    counts = Counter(shapes.values())
    top = max(counts.values())
    usual = next(shape for shape in shapes.values() if counts[shape] == top)
    kept = []
    for msg in replies:
        shape = shapes.get(id(msg))
        if shape is None or shape == usual:
            kept.append(msg)
        else:
            log.warning(
                "reply left out of the aggregate: its records differ from the other replies' "
                "(node %s sent metrics %s, arrays %s; most sent metrics %s, arrays %s)",
                msg.metadata.src_node_id,
                shape[0],
                shape[1],
                usual[0],
                usual[1],
            )
    return kept


def with_consistent_replies(cls: type[fl.FedAvg]) -> type:
    """Subclass ``cls`` so that it aggregates only replies Flower can aggregate together."""

    def aggregate_train(
        self: fl.FedAvg, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return cls.aggregate_train(self, server_round, consistent_replies(replies))

    def aggregate_evaluate(self: fl.FedAvg, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return cls.aggregate_evaluate(self, server_round, consistent_replies(replies))

    return type(cls.__name__, (cls,), {"aggregate_train": aggregate_train, "aggregate_evaluate": aggregate_evaluate})


def make_strategy(run_config: Mapping[str, Any], statistics_keys: Collection[str] = ()) -> fl.FedAvg:
    """Build the strategy named by ``strategy`` with its run-config parameters.

    Every strategy gets ``fraction-train``/``fraction-evaluate`` and waits for
    ``min-available-nodes`` nodes, sampling at least that many per round; with
    ``clients-per-round`` > 0 exactly that many are sampled for training (and
    evaluation, unless ``fraction-evaluate`` is 0).
    Strategy-specific keys: FedProx ``proximal-mu``; FedAvgM
    ``server-learning-rate``, ``server-momentum``; FedAdam/FedYogi/FedAdagrad
    ``fedopt-eta`` (server learning rate), ``fedopt-tau``; Krum/MultiKrum/Bulyan
    ``num-malicious-nodes``; MultiKrum ``num-nodes-to-select``; FedTrimmedAvg
    ``trim-beta``. Names match case-insensitively; an unknown name raises
    ValueError listing the valid ones. For the server-optimiser strategies the
    arrays named in ``statistics_keys`` (running statistics, not parameters) are
    averaged plainly instead of being stepped by the optimiser. Replies whose
    records differ from most replies' are left out (`consistent_replies`).
    """
    name = cfg_str(run_config, "strategy")
    by_lower = {k.lower(): k for k in STRATEGIES}
    if name.lower() not in by_lower:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")
    name = by_lower[name.lower()]
    min_nodes = max(1, cfg_int(run_config, "min-available-nodes"))
    common: dict[str, Any] = {
        "fraction_train": cfg_float(run_config, "fraction-train"),
        "fraction_evaluate": cfg_float(run_config, "fraction-evaluate"),
        "min_train_nodes": min_nodes,
        "min_evaluate_nodes": min_nodes,
        "min_available_nodes": min_nodes,
    }
    per_round = cfg_int(run_config, "clients-per-round")
    if per_round > 0:
        # Flower samples max(int(connected * fraction), min_*_nodes) nodes and waits
        # until max(min_available_nodes, that) are connected. A fraction this small
        # makes the first term 0 for any real federation, so exactly `per_round` are
        # sampled; it stays above 0.0, which would mean "skip this phase".
        tiny = 1e-9
        common["fraction_train"] = tiny if common["fraction_train"] > 0 else 0.0
        common["min_train_nodes"] = per_round
        if common["fraction_evaluate"] > 0:
            common["fraction_evaluate"] = tiny
            common["min_evaluate_nodes"] = per_round
        common["min_available_nodes"] = min(min_nodes, per_round)
    extra: dict[str, Any] = {}
    if name == "FedProx":
        extra["proximal_mu"] = cfg_float(run_config, "proximal-mu")
    elif name == "FedAvgM":
        extra["server_learning_rate"] = cfg_float(run_config, "server-learning-rate")
        extra["server_momentum"] = cfg_float(run_config, "server-momentum")
    elif name in ("FedAdam", "FedYogi", "FedAdagrad"):
        extra["eta"] = cfg_float(run_config, "fedopt-eta")
        extra["tau"] = cfg_float(run_config, "fedopt-tau")
    elif name in ("Krum", "Bulyan"):
        extra["num_malicious_nodes"] = cfg_int(run_config, "num-malicious-nodes")
    elif name == "MultiKrum":
        extra["num_malicious_nodes"] = cfg_int(run_config, "num-malicious-nodes")
        extra["num_nodes_to_select"] = cfg_int(run_config, "num-nodes-to-select")
    elif name == "FedTrimmedAvg":
        extra["beta"] = cfg_float(run_config, "trim-beta")
    cls = STRATEGIES[name]
    if name in SERVER_OPTIMISERS:
        cls = with_plain_mean_for(cls, statistics_keys)
    cls = with_consistent_replies(cls)
    return cls(**common, **extra)
