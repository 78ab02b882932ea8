"""ServerApp: Flower's weighted-mean strategies one after the other, results written to weighted.json.

Every strategy starts from the same model, so the test can compare, strategy
by strategy, a run whose rounds were folded at the selectors with one whose
replies all reached the ServerApp one by one.
"""

import json
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server import strategy as legacy
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as fl

app = ServerApp()


def initial() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random(1000, dtype=np.float32), rng.random((2, 3))]


class Overridden(fl.FedAvg):
    """Aggregates its own way (counts replies first): its rounds must never be folded."""

    replies_seen: list[int] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.replies_seen.append(len(replies))
        return super().aggregate_train(server_round, replies)


def _strategy(name: str, nodes: int) -> fl.FedAvg:
    common = {"min_available_nodes": nodes, "min_train_nodes": nodes, "min_evaluate_nodes": nodes}
    extra = {"FedProx": {"proximal_mu": 0.1}, "FedAvgM": {"server_momentum": 0.9}}.get(name, {})
    cls = Overridden if name == "Overridden" else getattr(fl, name)
    return cls(**common, **extra)


def _records(history: dict[int, MetricRecord]) -> dict[str, dict[str, object]]:
    return {str(r): dict(m) for r, m in history.items()}


def _message_api(grid: Grid, name: str, rounds: int, nodes: int, timeout: float) -> dict[str, object]:
    start = ArrayRecord({"a": Array(initial()[0]), "b": Array(initial()[1])})
    strategy = _strategy(name, nodes)
    result = strategy.start(grid=grid, initial_arrays=start, num_rounds=rounds, timeout=timeout)
    out: dict[str, object] = {
        "arrays": {k: v.numpy().tolist() for k, v in result.arrays.items()},
        "train": _records(result.train_metrics_clientapp),
        "evaluate": _records(result.evaluate_metrics_clientapp),
    }
    if isinstance(strategy, Overridden):
        out["replies_seen"] = list(strategy.replies_seen)
    return out


def _compat_api(grid: Grid, context: Context, rounds: int, nodes: int) -> dict[str, object]:
    strategy = legacy.FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=nodes,
        min_evaluate_clients=nodes,
        min_available_clients=nodes,
        initial_parameters=ndarrays_to_parameters(initial()),
    )
    legacy_context = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    DefaultWorkflow()(grid, legacy_context)
    final = legacy_context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    return {
        "arrays": {str(i): a.tolist() for i, a in enumerate(final)},
        "evaluate": {str(r): {"loss": loss} for r, loss in legacy_context.history.losses_distributed},
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds, nodes, timeout = int(cfg["rounds-each"]), int(cfg["min-nodes"]), float(cfg["round-timeout"])
    results: dict[str, object] = {}
    for name in str(cfg["strategies"]).split(","):
        if name == "legacy-FedAvg":
            results[name] = _compat_api(grid, context, rounds, nodes)
        else:
            results[name] = _message_api(grid, name, rounds, nodes, timeout)
        with open("weighted.json", "w") as fh:
            json.dump(results, fh)
