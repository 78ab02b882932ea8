"""ServerApp: Flower's FedAvg from a model of zeros, no evaluation.

Every client adds 1 to what it receives, so the weighted mean after round N is N (up
to float32 rounding in Flower's weighted sum, a few thousandths over hundreds of
rounds): a run resumed from the right checkpoint, with no round counted twice, ends
holding the number of its rounds that had results.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = max(1, int(cfg["min-available-nodes"]))
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=nodes)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({"count": Array(np.zeros(4, dtype=np.float32))}),
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
    )
