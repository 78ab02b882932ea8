"""ServerApp: Flower's FedAvg, unedited, over one float32 array of ``model-size-mb`` MiB."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def make_arrays(size_mb: float) -> ArrayRecord:
    """One float32 array of ``size_mb`` MiB (random, so it does not compress)."""
    n = max(1, int(round(size_mb * 1024 * 1024 / 4)))
    data = np.random.default_rng(0).random(n, dtype=np.float32)
    return ArrayRecord({"weights": Array(data)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    min_nodes = max(1, int(cfg["min-available-nodes"]))
    strategy = FedAvg(
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=0.0,
        min_train_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=make_arrays(float(cfg["model-size-mb"])),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
    )
