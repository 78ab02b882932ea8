"""ServerApp: federated training of the tabular MLP with a chosen strategy."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from . import task
from .strategy import make_strategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    torch.manual_seed(task.cfg_int(cfg, "seed"))
    model = task.model_from_run_config(cfg)
    statistics = [name for name, _ in model.named_buffers()]
    strategy = make_strategy(cfg, statistics_keys=statistics)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=task.cfg_int(cfg, "num-server-rounds"),
        timeout=task.cfg_float(cfg, "round-timeout"),
    )
    save_outputs(result, context)


def save_outputs(result: Result, context: Context) -> None:
    """Write the final model / per-round metrics where the run config says.

    ``model-out``: ``.npz`` of the final global arrays (state_dict keys), as read
    by `task.heldout_accuracy`. ``metrics-out``: JSON of the aggregated
    ClientApp metrics per round. Empty (the default) writes nothing.
    """
    model_out = task.cfg_str(context.run_config, "model-out")
    if model_out and len(result.arrays) > 0:
        arrays = {k: v.numpy() for k, v in result.arrays.items()}
        task.save_npz(Path(model_out), arrays)
    metrics_out = task.cfg_str(context.run_config, "metrics-out")
    if metrics_out:
        history = {
            "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
            "evaluate": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
        }
        path = Path(metrics_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(history, indent=2) + "\n")
