"""ClientApp: every data holder returns its own arrays and metrics (a function of its partition id).

Train and evaluate answer both Flower APIs: Message API replies, and, for the
compatibility API's messages (`fitins.*`, `evaluateins.*`), a NumPyClient.
"""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp


def _partition(context: Context) -> int:
    return int(context.node_config.get("partition-id", 0))


def _step(p: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """This site's update: distinct per site, not a multiple of any other's."""
    rng = np.random.default_rng(100 + p)
    return [(a + rng.normal(0.0, 0.1 * (p + 1), a.shape)).astype(a.dtype) for a in arrays]


def _examples(p: int) -> int:
    return 7 + 13 * p


class LegacyClient(NumPyClient):
    def __init__(self, partition: int) -> None:
        self.p = partition

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        return _step(self.p, parameters), _examples(self.p), {}

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        return 0.25 + self.p, _examples(self.p) + 1, {}


legacy = ClientApp(client_fn=lambda context: LegacyClient(_partition(context)).to_client())
app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    if "fitins.config" in msg.content.config_records:
        return legacy(msg, context)
    p = _partition(context)
    arrays = msg.content.array_records["arrays"]
    names = list(arrays.keys())
    new = _step(p, [arrays[k].numpy() for k in names])
    metrics = MetricRecord({"num-examples": _examples(p), "loss": 1.5 / (p + 1), "per-class": [p * 0.1, 1.0 - p * 0.1]})
    return Message(
        RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in zip(names, new, strict=True)}), "metrics": metrics}),
        reply_to=msg,
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    if "evaluateins.config" in msg.content.config_records:
        return legacy(msg, context)
    p = _partition(context)
    metrics = MetricRecord({"num-examples": _examples(p) + 1, "eval-loss": 0.25 + p, "accuracy": 1.0 / (p + 2)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
