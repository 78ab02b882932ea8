"""ServerApp: Flower's FedAvg, unedited, over ``model-size-mb`` MiB of float32 in ``model-layers`` arrays."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def make_arrays(size_mb: float, layers: int = 1) -> ArrayRecord:
    """``size_mb`` MiB of float32 (random, so it does not compress) in ``layers`` arrays.

    One array (the default) is the layout earlier figures were measured with; a
    model with layers, as real ones have, is ``layers`` weight arrays of about
    equal size (``layer_NN.weight``), each followed by a small bias.
    """
    n = max(1, int(round(size_mb * 1024 * 1024 / 4)))
    rng = np.random.default_rng(0)
    if layers <= 1:
        return ArrayRecord({"weights": Array(rng.random(n, dtype=np.float32))})
    bias = 16
    per_layer = max(1, (n - layers * bias) // layers)
    arrays = {}
    for i in range(layers):
        # The last layer takes what the even split left over, so the total stays n.
        size = n - (layers - 1) * (per_layer + bias) - bias if i == layers - 1 else per_layer
        arrays[f"layer_{i:02d}.weight"] = Array(rng.random(max(1, size), dtype=np.float32))
        arrays[f"layer_{i:02d}.bias"] = Array(rng.random(bias, dtype=np.float32))
    return ArrayRecord(arrays)


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
        initial_arrays=make_arrays(float(cfg["model-size-mb"]), int(cfg.get("model-layers", 1))),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
    )
