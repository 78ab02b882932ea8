"""ClientApp: train / evaluate the MLP on the data holder's local CSV files."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import task

app = ClientApp()


def _local_data(context: Context):
    """Load this holder's rows and split off the seeded local evaluation rows."""
    data_path = context.node_config.get("data-path")
    if not data_path:
        raise ValueError("node config has no 'data-path'")
    x, y = task.load_table(Path(str(data_path)), context.run_config)
    expected = task.num_features(context.run_config)
    if x.shape[1] != expected:
        raise ValueError(
            f"local data has {x.shape[1]} feature columns but the model expects "
            f"{expected}: set 'feature-columns' or 'num-features' in the run config"
        )
    train_idx, eval_idx = task.split_local(
        len(y),
        task.cfg_float(context.run_config, "eval-fraction"),
        task.cfg_int(context.run_config, "seed"),
    )
    return (x[train_idx], y[train_idx]), (x[eval_idx], y[eval_idx])


def _model_from(msg: Message, context: Context) -> torch.nn.Module:
    records = list(msg.content.array_records.values())
    if len(records) != 1:
        raise ValueError(f"expected one ArrayRecord, got {len(records)}")
    model = task.model_from_run_config(context.run_config)
    task.load_arrays(model, records[0].to_torch_state_dict())
    return model


def _config(msg: Message) -> ConfigRecord:
    records = list(msg.content.config_records.values())
    return records[0] if records else ConfigRecord()


@app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    cfg = context.run_config
    config = _config(msg)
    (x, y), _ = _local_data(context)
    model = _model_from(msg, context)
    server_round = int(config.get("server-round", 0))
    partition = int(context.node_config.get("partition-id", 0))
    loss = task.train(
        model,
        x,
        y,
        epochs=task.cfg_int(cfg, "local-epochs"),
        batch_size=task.cfg_int(cfg, "batch-size"),
        lr=task.cfg_float(cfg, "learning-rate"),
        weight_decay=task.cfg_float(cfg, "weight-decay"),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        seed=task.cfg_int(cfg, "seed") + 1000 * server_round + partition,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    _, (x, y) = _local_data(context)
    model = _model_from(msg, context)
    loss, acc = task.evaluate(model, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
