"""ClientApp: a fixed update per data holder, with the Flower DP mod the run's `dp-mode` asks for.

Training adds `UPDATES[partition-id]` to the model it is sent and reports
`10 * (partition-id + 1)` examples, so a test can work out what each round's
aggregate must be.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

# L2 norms 5, 10 and 1: a clipping norm of 4 clips the first two and leaves the third alone.
UPDATES = (
    np.array([3.0, 4.0, 0.0, 0.0]),
    np.array([0.0, 0.0, 6.0, 8.0]),
    np.array([1.0, 0.0, 0.0, 0.0]),
)

app = ClientApp()


def dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Apply the Flower mod that matches the ServerApp's DP wrapper.

    A FAB holds one ClientApp and mods are fixed when it is built, so the run
    config chooses among them here, per message; the mods themselves are
    Flower's, called as Flower calls them.
    """
    cfg = context.run_config
    mode = cfg["dp-mode"]
    if mode == "client-fixed":
        return fixedclipping_mod(msg, context, call_next)
    if mode == "client-adaptive":
        return adaptiveclipping_mod(msg, context, call_next)
    if mode == "local-dp":
        local_dp = LocalDpMod(
            clipping_norm=float(cfg["local-clipping-norm"]),
            sensitivity=float(cfg["local-sensitivity"]),
            epsilon=float(cfg["local-epsilon"]),
            delta=float(cfg["local-delta"]),
        )
        return local_dp(msg, context, call_next)
    return call_next(msg, context)


# Only on train: the clipping mods expect an ArrayRecord in the reply, which evaluate does not send.
@app.train(mods=[dp_mod])
def train(msg: Message, context: Context) -> Message:
    model = next(iter(msg.content.array_records.values()))["w"].numpy()
    partition = int(context.node_config["partition-id"])
    new = model + UPDATES[partition % len(UPDATES)]
    metrics = MetricRecord({"num-examples": 10 * (partition + 1)})
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(new)}), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = next(iter(msg.content.array_records.values()))["w"].numpy()
    partition = int(context.node_config["partition-id"])
    metrics = MetricRecord({"num-examples": 10 * (partition + 1), "model-norm": float(np.linalg.norm(model))})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
