"""ClientApp: reply with the arrays received, unchanged."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = next(iter(msg.content.array_records.values()))
    metrics = MetricRecord({"num-examples": 1, "train_loss": 0.0})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"num-examples": 1, "eval_loss": 0.0, "eval_acc": 0.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
