"""ClientApp: answers with every record and value type Flower carries, keeps a counter in `context.state`."""

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

# Bytes no numpy reader could parse: an Array of a serialisation Flower does not know.
RAW = Array(dtype="float32", shape=(2,), stype="custom.bytes", data=b"\x00\x01\x02\x03\xff\xfe\xfd\xfc")


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _count(context: Context, message: Message) -> ConfigRecord:
    """Add one to this node's counter and remember what it handled; kept between messages."""
    state = context.state
    n = int(state["counter"]["n"]) + 1 if "counter" in state else 1
    seen = list(state["history"]["types"]) if "history" in state else []
    state["counter"] = MetricRecord({"n": n})
    state["history"] = ConfigRecord({"types": [*seen, message.metadata.message_type]})
    return ConfigRecord({"counter": n, "history": state["history"]["types"]})


def _arrays(partition: int) -> ArrayRecord:
    """Arrays of many dtypes and shapes, some empty, one Fortran-ordered, one not numpy at all."""
    p = partition
    return ArrayRecord(
        {
            "f16": Array(np.array([0.5 + p, -1.0, 65504.0], dtype=np.float16)),
            "f64-scalar": Array(np.array(np.pi + p, dtype=np.float64)),
            "i8": Array(np.array([[-128, -1], [0, 127]], dtype=np.int8)),
            "u8": Array(np.arange(4, dtype=np.uint8) + p),
            "i32-empty": Array(np.zeros((0,), dtype=np.int32)),
            "i64-3d": Array(np.full((1, 1, 1), 2**62 + p, dtype=np.int64)),
            "bool": Array(np.array([[True, False], [False, p % 2 == 0]])),
            "f32-fortran": Array(np.asfortranarray(np.arange(6, dtype=np.float32).reshape(3, 2))),
            "c64": Array(np.array([1 + 2j, -0.5j], dtype=np.complex64)),
            "empty-2d": Array(np.zeros((2, 0), dtype=np.float32)),
            "raw": RAW,
        }
    )


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg = ConfigRecord(
        {
            "partition-id": _partition(context),
            "num-partitions": int(context.node_config["num-partitions"]),
            "marker": str(context.run_config["marker"]),
            "asked": str(msg.content["ask"]["step"]),
        }
    )
    return Message(RecordDict({"node": cfg, "state": _count(context, msg)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    w = msg.content["model"]["w"].numpy()
    sent = msg.content["config"]
    p = _partition(context)
    if sent.get("delay-partition") == p:
        time.sleep(float(sent["delay"]))
    metrics = MetricRecord(
        {
            "num-examples": 10 * (p + 1),
            "loss": 0.25 + p,
            "neg": -7,
            "big": 2**62,
            "tiny": 1e-300,
            "int-list": [1, -2, 3],
            "float-list": [0.5, -2.5, 1e300],
            "empty-list": [],
        }
    )
    content = RecordDict(
        {
            "node": ConfigRecord({"partition-id": p}),
            "model": ArrayRecord({"w": Array(w + 1)}),
            "arrays": _arrays(p),
            "metrics": metrics,
            "echo": ConfigRecord(dict(sent.items())),
            "state": _count(context, msg),
            "no-arrays": ArrayRecord(),
            "no-metrics": MetricRecord(),
            "no-config": ConfigRecord(),
        }
    )
    return Message(content, reply_to=msg)


@app.train("finetune")
def finetune(msg: Message, context: Context) -> Message:
    content = RecordDict({"done": ConfigRecord({"action": "finetune"}), "state": _count(context, msg)})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    p = _partition(context)
    _count(context, msg)
    if p == 1:
        return Message(RecordDict(), reply_to=msg)  # nothing to report: empty content, not an error
    w = msg.content["model"]["w"].numpy()
    return Message(
        RecordDict({"metrics": MetricRecord({"num-examples": 5 * (p + 1), "sum": float(w.sum())})}), reply_to=msg
    )


@app.query("fail")
def fail(msg: Message, context: Context) -> Message:
    p = _partition(context)
    if p != 0:
        raise RuntimeError(f"deliberate failure on partition {p}")
    return Message(RecordDict({"state": _count(context, msg)}), reply_to=msg)


@app.query("slow")
def slow(msg: Message, context: Context) -> Message:
    if _partition(context) == 0:
        time.sleep(float(context.run_config["slow-seconds"]))
    return Message(RecordDict({"state": _count(context, msg)}), reply_to=msg)
