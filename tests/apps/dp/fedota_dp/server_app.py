"""ServerApp: FedAvg inside the Flower DP wrapper the run's `dp-mode` names.

Writes `dp.json` in the working folder (the coordinator's state folder): the
global model after every round and, for the adaptive wrappers, the clipping
norm they will use next.
"""

import json

import numpy as np
from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

app = ServerApp()


def make_strategy(cfg: dict[str, object], nodes: int) -> Strategy:
    """FedAvg, wrapped as `dp-mode` says (local DP needs no wrapper: the clients add the noise)."""
    fedavg = FedAvg(min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes)
    mode = cfg["dp-mode"]
    noise = float(cfg["noise-multiplier"])
    norm = float(cfg["clipping-norm"])
    adaptive = {
        "initial_clipping_norm": norm,
        "target_clipped_quantile": float(cfg["target-clipped-quantile"]),
        "clip_norm_lr": float(cfg["clip-norm-lr"]),
    }
    if mode == "server-fixed":
        return DifferentialPrivacyServerSideFixedClipping(fedavg, noise, norm, nodes)
    if mode == "client-fixed":
        return DifferentialPrivacyClientSideFixedClipping(fedavg, noise, norm, nodes)
    if mode == "server-adaptive":
        return DifferentialPrivacyServerSideAdaptiveClipping(fedavg, noise, nodes, **adaptive)
    if mode == "client-adaptive":
        return DifferentialPrivacyClientSideAdaptiveClipping(fedavg, noise, nodes, **adaptive)
    if mode == "local-dp":
        return fedavg
    raise ValueError(f"unknown dp-mode {mode!r}")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    strategy = make_strategy(cfg, nodes)
    rounds: list[dict[str, object]] = []

    def record(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Called before round 1 and after each round: the model as it stands, and the
        # clipping norm an adaptive wrapper has settled on for the next round.
        norm = getattr(strategy, "clipping_norm", None)
        rounds.append({"round": server_round, "w": arrays["w"].numpy().tolist(), "clipping_norm": norm})
        return None

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({"w": Array(np.zeros(4))}),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
        evaluate_fn=record,
    )
    train_metrics = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
    evaluate_metrics = {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
    with open("dp.json", "w") as fh:
        json.dump({"mode": cfg["dp-mode"], "rounds": rounds, "train": train_metrics, "evaluate": evaluate_metrics}, fh)
