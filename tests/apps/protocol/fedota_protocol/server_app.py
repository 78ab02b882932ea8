"""ServerApp without a strategy: drives the Grid directly, writes down what it is given (observed.json).

Node ids differ between runtimes, so every observation is keyed by the data
partition of the node a message was sent to; metadata is recorded as checks
against the message sent (`src_is_destination`, ...), not as raw ids.
"""

import hashlib
import json
import time
import traceback
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

OUT = "observed.json"

# Every ConfigRecord value type, scalars and lists, sent to the clients and echoed back.
CONFIG = {
    "int": 3,
    "neg-int": -(2**62),
    "float": 0.1,
    "str": "héllo, wörld",
    "empty-str": "",
    "bytes": b"\x00\xffbinary",
    "true": True,
    "false": False,
    "ints": [1, 2, 3],
    "floats": [0.5, -1.5],
    "strs": ["a", ""],
    "bytes-list": [b"\x01", b""],
    "bools": [True, False, True],
}


def _value(v: Any) -> Any:
    """A record value as JSON, its Python type kept (True is not 1, b"x" is not "x")."""
    if isinstance(v, list):
        return ["list", [_value(x) for x in v]]
    if isinstance(v, bytes):
        return ["bytes", v.hex()]
    return [type(v).__name__, v]


def _array(a: Array) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "dtype": a.dtype,
        "shape": list(a.shape),
        "stype": a.stype,
        "sha256": hashlib.sha256(a.data).hexdigest(),
    }
    if a.stype == "numpy.ndarray":
        nd = a.numpy()
        doc["values"] = [_value(x) for x in np.ravel(nd).tolist()] if nd.dtype.kind != "c" else str(nd.tolist())
        doc["numpy_shape"] = list(nd.shape)
    return doc


def _content(rd: RecordDict) -> list[Any]:
    """Every record in order: its kind, then its items in order."""
    out: list[Any] = []
    for key, record in rd.items():
        if isinstance(record, ArrayRecord):
            out.append([key, "arrays", [[name, _array(arr)] for name, arr in record.items()]])
        elif isinstance(record, MetricRecord):
            out.append([key, "metrics", [[k, _value(v)] for k, v in record.items()]])
        else:
            out.append([key, "config", [[k, _value(v)] for k, v in record.items()]])
    return out


class Recorder:
    """What the ServerApp was given, step by step, written to OUT at the end."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.steps: dict[str, Any] = {}
        self.partition_of: dict[int, int] = {}  # node id -> partition id

    def replies(
        self, step: str, sent: list[Message], replies: Iterable[Message], *, before: float = 0.0
    ) -> list[dict[str, Any]]:
        by_id = {m.metadata.message_id: m for m in sent}
        out = []
        for reply in replies:
            md = reply.metadata
            original = by_id.get(md.reply_to_message_id)
            doc: dict[str, Any] = {
                "partition": self.partition_of.get(original.metadata.dst_node_id) if original else None,
                "answers_a_sent_message": original is not None,
                "src_is_destination": original is not None and md.src_node_id == original.metadata.dst_node_id,
                "dst_is_sender": original is not None and md.dst_node_id == original.metadata.src_node_id,
                "dst_is_superlink": md.dst_node_id == SUPERLINK_NODE_ID,
                "run_id_is_grid_run": md.run_id == self.grid.run.run_id,
                "group_id": md.group_id,
                "message_type": md.message_type,
                "own_message_id": bool(md.message_id) and md.message_id not in by_id,
                "ttl_positive": md.ttl > 0,
                "created_after_sent": before == 0.0 or md.created_at >= before,
                "has_error": reply.has_error(),
                "has_content": reply.has_content(),
            }
            if reply.has_content() and "node" in reply.content.config_records:
                # Which node's ClientApp wrote this reply, by its own account.
                doc["from_partition"] = reply.content["node"]["partition-id"]
            if reply.has_error():
                doc["error"] = {"code": int(reply.error.code), "reason": reply.error.reason}
            else:
                doc["content"] = _content(reply.content)
            out.append(doc)
        out.sort(key=lambda d: (d["partition"] is None, d["partition"] or 0, d["has_error"]))
        self.steps[step] = {"sent": len(sent), "replies": out}
        return out

    def write(self) -> None:
        with open(OUT, "w") as fh:
            json.dump(self.steps, fh, indent=1, sort_keys=True)


def _ask(step: str) -> RecordDict:
    return RecordDict({"ask": ConfigRecord({"step": step})})


def _sent_ids_are_fresh(msgs: list[Message]) -> bool:
    ids = [m.metadata.message_id for m in msgs]
    return all(ids) and len(set(ids)) == len(ids)


def _poll(grid: Grid, ids: list[str], timeout: float) -> list[Message]:
    """Pull until every id is answered, asking only for those still open (as Flower's send_and_receive)."""
    got: list[Message] = []
    pending = set(ids)
    end = time.monotonic() + timeout
    while pending and time.monotonic() < end:
        replies = list(grid.pull_messages(sorted(pending)))
        got.extend(replies)
        pending -= {r.metadata.reply_to_message_id for r in replies}
        if pending:
            time.sleep(0.1)
    return got


@app.main()
def main(grid: Grid, context: Context) -> None:
    rec = Recorder(grid)
    cfg = context.run_config
    try:
        _scenario(grid, cfg, rec)
    except Exception:
        rec.steps["crashed"] = traceback.format_exc()
        raise
    finally:
        rec.write()


def _scenario(grid: Grid, cfg: Any, rec: Recorder) -> None:
    # As a strategy's min_available_nodes: nodes may still be joining when the ServerApp starts.
    end = time.monotonic() + 60
    while len(list(grid.get_node_ids())) < int(cfg["min-nodes"]) and time.monotonic() < end:
        time.sleep(0.1)
    nodes = sorted(grid.get_node_ids())
    rec.steps["nodes"] = {
        "count": len(nodes),
        "distinct": len(set(nodes)) == len(nodes),
        "ints": all(isinstance(n, int) and not isinstance(n, bool) for n in nodes),
        "superlink_not_a_node": SUPERLINK_NODE_ID not in nodes,
    }

    # 1. query (default action): which partition each node holds, and that the run config reached it.
    hello = [Message(_ask("hello"), n, "query", group_id="hello") for n in nodes]
    start = time.time()
    replies = list(grid.send_and_receive(hello, timeout=60))
    rec.steps["hello_ids_fresh"] = _sent_ids_are_fresh(hello)
    by_id = {m.metadata.message_id: m for m in hello}
    for r in replies:
        if r.has_content() and r.metadata.reply_to_message_id in by_id:
            rec.partition_of[by_id[r.metadata.reply_to_message_id].metadata.dst_node_id] = int(
                r.content["node"]["partition-id"]
            )
    rec.replies("hello", hello, replies, before=start)
    by_partition = {p: n for n, p in rec.partition_of.items()}

    # 2. train, built with grid.create_message; one content object for every node, as a strategy sends it.
    content = RecordDict(
        {
            "model": ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))}),
            "config": ConfigRecord(dict(CONFIG)),
        }
    )
    train = [grid.create_message(content, "train", n, "1") for n in nodes]
    explicit = grid.create_message(RecordDict(), "evaluate", nodes[0], "g", ttl=123.0)
    rec.steps["create_message"] = [
        {
            "dst_is_node": m.metadata.dst_node_id == n,
            "message_type": m.metadata.message_type,
            "group_id": m.metadata.group_id,
            "ttl": m.metadata.ttl,
            "no_id_yet": m.metadata.message_id == "",
            "not_a_reply": m.metadata.reply_to_message_id == "",
            "src_is_superlink": m.metadata.src_node_id == SUPERLINK_NODE_ID,
        }
        for m, n in [(train[0], nodes[0]), (explicit, nodes[0])]
    ]
    start = time.time()
    rec.replies("train", train, grid.send_and_receive(train, timeout=60), before=start)
    rec.steps["train_ids_fresh"] = _sent_ids_are_fresh(train)

    # 3. evaluate, one content object per node; one node answers with empty content.
    evaluate = [
        Message(RecordDict({"model": ArrayRecord({"w": Array(np.ones(3, dtype=np.float64) * p)})}), n, "evaluate")
        for p, n in sorted(by_partition.items())
    ]
    rec.replies("evaluate", evaluate, grid.send_and_receive(evaluate, timeout=60))

    # 4. a named action ("train.finetune"), routed to its own handler.
    finetune = [Message(_ask("finetune"), n, "train.finetune", group_id="custom") for n in nodes]
    rec.replies("finetune", finetune, grid.send_and_receive(finetune, timeout=60))

    # 5. errors: two nodes' handler raises; a message type nobody registered.
    fail = [Message(_ask("fail"), n, "query.fail", group_id="errors") for n in nodes]
    rec.replies("fail", fail, grid.send_and_receive(fail, timeout=60))
    missing = [Message(_ask("missing"), by_partition[0], "query.missing", group_id="errors")]
    rec.replies("missing", missing, grid.send_and_receive(missing, timeout=60))

    # 6. push_messages, then pull_messages polled: first one reply alone, then the rest, then all ids again.
    pushed = [Message(_ask("poll"), by_partition[p], "query", group_id="poll") for p in sorted(by_partition)]
    ids = list(grid.push_messages(pushed))
    rec.steps["push"] = {
        "ids": len(ids),
        "distinct": len(set(ids)) == len(ids),
        "ids_are_the_messages_ids": ids == [m.metadata.message_id for m in pushed],
    }
    timeout = float(cfg["poll-timeout"])
    first = _poll(grid, ids[:1], timeout)
    rest = _poll(grid, ids[1:], timeout)
    again = list(grid.pull_messages(ids))
    rec.steps["pull"] = {
        "first_only_its_own": [r.metadata.reply_to_message_id for r in first] == ids[:1],
        "rest": len(rest),
        "pulled_again": len(again),
    }
    rec.replies("poll", pushed, first + rest)
    rec.replies("poll-again", pushed, again)

    # 7. context.state: each node's counter after everything above.
    state = [Message(_ask("state"), n, "query", group_id="state") for n in nodes]
    rec.replies("state", state, grid.send_and_receive(state, timeout=60))

    # Pushing nothing is allowed, as sending nothing is.
    try:
        rec.steps["push_nothing"] = {
            "ids": len(list(grid.push_messages([]))),
            "sent": len(list(grid.send_and_receive([]))),
        }
    except Exception as exc:
        rec.steps["push_nothing"] = {"raised": f"{type(exc).__name__}: {exc}"}

    # 8. one push of two message types (Flower's Grid takes any mix).
    mixed = [
        Message(_ask("mixed"), by_partition[0], "query", group_id="mixed"),
        Message(_ask("mixed"), by_partition[1], "train.finetune", group_id="mixed"),
    ]
    try:
        mixed_ids = list(grid.push_messages(mixed))
        rec.replies("mixed", mixed, _poll(grid, mixed_ids, timeout))
    except Exception as exc:
        rec.steps["mixed"] = {"raised": f"{type(exc).__name__}: {exc}"}

    # 9. train to two of the three nodes, one content object (a strategy's sample); the second is slow.
    # Flower waits for both; a reply from the node not asked would be one Flower never delivers.
    sample = RecordDict(
        {
            "model": ArrayRecord({"w": Array(np.zeros((2, 3), dtype=np.float32))}),
            "config": ConfigRecord({"delay-partition": 1, "delay": 1.0}),
        }
    )
    subset = [Message(sample, by_partition[p], "train", group_id="2") for p in (0, 1)]
    rec.replies("subset", subset, grid.send_and_receive(subset, timeout=60))

    # 10. send_and_receive with a timeout one node cannot meet (last: that node is still busy after it).
    slow = [Message(_ask("slow"), n, "query.slow", group_id="slow") for n in nodes]
    start = time.monotonic()
    rec.replies("slow", slow, grid.send_and_receive(slow, timeout=float(cfg["slow-timeout"])))
    rec.steps["slow_returned_within"] = time.monotonic() - start < float(cfg["slow-seconds"])
