"""ClientApp: answer the int64 model with float64 arrays, or a longer array and zero examples."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = next(iter(msg.content.array_records.values()))["w"].numpy()
    partition = int(context.node_config.get("partition-id", 0))
    examples = 10 * (partition + 1)
    if context.run_config["reply-mode"] == "zero-weight-reshape":
        new = np.append(model, model[-1:] + 1)  # one element longer, same dtype
        if partition == 0:
            examples = 0
    else:
        new = model.astype(np.float64) + 0.5
    metrics = MetricRecord({"num-examples": examples, "train_loss": float(partition)})
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(new)}), "metrics": metrics}), reply_to=msg)
