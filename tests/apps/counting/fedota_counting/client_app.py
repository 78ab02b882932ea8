"""ClientApp: reply with every array received plus 1, after `client-delay` seconds.

The delay paces a long run whatever the machine's speed; a file `.no-delay` in the
client's data folder (`data-path`, which the data contract never reads: hidden) lifts it,
so a test ends the run quickly once it has done what it needed the time for.
"""

import time
from pathlib import Path

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    if not (Path(str(context.node_config.get("data-path", "."))) / ".no-delay").exists():
        time.sleep(float(context.run_config["client-delay"]))
    received = next(iter(msg.content.array_records.values()))
    arrays = ArrayRecord({name: Array(array.numpy() + 1) for name, array in received.items()})
    metrics = MetricRecord({"num-examples": 1, "train_loss": 0.0})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
