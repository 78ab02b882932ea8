"""ServerApp: Flower's FedAvg, unedited, over one float32 array of ``model-size-mb`` MiB.

It prints one line per round, ``BENCH-ROUND {"round": r, "t": <unix time>}``,
from the ``evaluate_fn`` that ``Strategy.start`` calls before round 1 (r = 0)
and after every round: the same code on every runtime, so the gaps between
consecutive lines are each runtime's round time, measured the same way. It
goes through ``evaluate_fn`` rather than a wrapper around the strategy's
methods so that the strategy stays Flower's own FedAvg, which is what decides
whether a runtime may treat it as one.
"""

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()

MARK = "BENCH-ROUND"


def make_arrays(size_mb: float) -> ArrayRecord:
    """One float32 array of ``size_mb`` MiB (random, so it does not compress)."""
    n = max(1, int(round(size_mb * 1024 * 1024 / 4)))
    data = np.random.default_rng(0).random(n, dtype=np.float32)
    return ArrayRecord({"weights": Array(data)})


def stamp(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
    """Print when round ``server_round`` ended (0: before the first round)."""
    del arrays
    print(f"{MARK} {json.dumps({'round': server_round, 't': time.time()})}", flush=True)
    return None


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
        evaluate_fn=stamp,
    )
