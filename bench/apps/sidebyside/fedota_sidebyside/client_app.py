"""ClientApp: each client returns its own arrays and weight, as a trained model would be.

The "update" is the received array plus a small constant of the client's
partition (``partition-id`` in the node config), added in place: as cheap as
possible, but every reply differs, so no runtime can share one buffer between
replies, and the weights (``num-examples``) differ.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _partition(context: Context) -> int:
    return int(context.node_config.get("partition-id", 0))


@app.train()
def train(msg: Message, context: Context) -> Message:
    p = _partition(context)
    received = next(iter(msg.content.array_records.values()))
    updated = {}
    for name in list(received.keys()):
        nd = received[name].numpy()  # a writable copy, as a framework's tensor would be
        nd += np.asarray(0.001 * (p + 1), dtype=nd.dtype)
        updated[name] = Array(nd)
        del nd
    metrics = MetricRecord({"num-examples": 10 * (p + 1), "train_loss": 1.0 / (p + 1)})
    return Message(RecordDict({"arrays": ArrayRecord(updated), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    p = _partition(context)
    metrics = MetricRecord({"num-examples": 10 * (p + 1), "eval_loss": 0.0, "eval_acc": 0.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
