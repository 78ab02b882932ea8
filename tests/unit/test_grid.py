"""The Grid over the selector tier: over-selection, deadlines, minimum results.

A fake selector answers the Hub in memory, so rounds are driven exactly as the
gRPC servicer would drive them, without a network.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from coordinator.grid import GridPolicy, SelectorTierGrid
from coordinator.hub import Hub, Result
from fedota_common.payload import decode_content, message_to_payload, payload_to_message
from protos.payload.v1 import payload_pb2

pytestmark = pytest.mark.usefixtures("task_identity")


class Observer:
    def __init__(self) -> None:
        self.closed: list[tuple[str, list[int]]] = []
        self.replies: list[list[Message]] = []

    def on_push(self, message_type: str, group_id: str, messages: list[Message]) -> None:
        pass

    def on_close(self, message_type: str, group_id: str, replies: list[Message], participants: list[int]) -> None:
        self.closed.append((group_id, participants))
        self.replies.append(replies)


class FakeSelector:
    """Answers every instruction after `delay[node]` seconds; silent nodes never answer."""

    def __init__(self, hub: Hub, nodes: list[int], delay: dict[int, float], silent: set[int]) -> None:
        self.hub = hub
        self.link = hub.attach("s1", [(n, f"site-{n}") for n in nodes])
        self.delay = delay
        self.silent = silent
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (msg := self.link.outbox.get()) is not None:
            if msg.WhichOneof("msg") == "flush":
                # Owes a partial aggregate (a folded round) but answers one by one: an empty one.
                empty = Result("s1", payload_pb2.PayloadHeader(), b"", [], [], 0.0, True)
                self.hub.add_result(empty, msg.flush.batch_id)
            if msg.WhichOneof("msg") != "instructions":
                continue
            ins = msg.instructions
            for item in ins.items:
                if item.node_id in self.silent:
                    continue
                content = self.hub.content(item.content_id)
                assert content is not None
                threading.Timer(
                    self.delay.get(item.node_id, 0.0), self._answer, args=(ins.batch_id, item, content)
                ).start()

    def _answer(self, batch_id: str, item: object, content: bytes) -> None:
        instruction = payload_to_message(payload_pb2.PayloadHeader(metadata=item.metadata), content)  # type: ignore[attr-defined]
        arrays = decode_content(content)["arrays"]
        reply = Message(
            RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10})}), reply_to=instruction
        )
        payload = message_to_payload(reply)
        self.hub.add_result(
            Result("s1", payload.header, payload.content, [item.message_id], [item.node_id], 10.0, False),  # type: ignore[attr-defined]
            batch_id,
        )


def _grid(
    hub: Hub,
    *,
    timeout: float = 30.0,
    overselect: float = 1.0,
    min_fraction: float = 0.0,
    aggregation: str = "individual",
) -> tuple[SelectorTierGrid, Observer]:
    obs = Observer()
    policy = GridPolicy(
        round_timeout=timeout,
        overselect=overselect,
        min_result_fraction=min_fraction,
        aggregation=aggregation,
        weight_key="num-examples",
    )
    return SelectorTierGrid(hub, policy, obs), obs


def _train(nodes: list[int]) -> list[Message]:
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(np.ones(4, dtype=np.float32))}), "config": ConfigRecord({"server-round": 1})}
    )
    return [Message(content, n, MessageType.TRAIN) for n in nodes]


def test_overselection_fills_a_stragglers_slot_without_waiting_for_it() -> None:
    hub = Hub()
    FakeSelector(hub, [11, 12, 13, 14], delay={11: 0.0, 12: 0.0, 14: 0.1}, silent={13})
    # Over-selection is for folded rounds only, where a substitute's reply joins a weighted mean.
    grid, obs = _grid(hub, timeout=60.0, overselect=1.34, aggregation="weighted-mean")
    sent = _train([11, 12, 13])
    started = time.monotonic()
    replies = list(grid.send_and_receive(sent))
    assert time.monotonic() - started < 30, "the round waited for the straggler"
    assert len(replies) == 3 and all(r.has_content() for r in replies)
    # Every reply answers a distinct message the strategy sent; node 14 stood in for 13.
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(m.metadata.message_id for m in sent)
    assert sorted(r.metadata.src_node_id for r in replies) == [11, 12, 13]
    assert obs.closed == [("1", [11, 12, 14])]


def test_rounds_that_are_not_folded_are_never_overselected() -> None:
    """A reply labelled with a node that did not send it is something Flower's runtime never delivers."""
    hub = Hub()
    FakeSelector(hub, [11, 12, 13, 14], delay={}, silent=set())
    for aggregation in ("individual", "auto"):  # auto: this test is no Flower strategy
        grid, obs = _grid(hub, timeout=60.0, overselect=2.0, aggregation=aggregation)
        replies = list(grid.send_and_receive(_train([11, 12])))
        assert sorted(r.metadata.src_node_id for r in replies) == [11, 12]
        assert obs.closed[-1][1] == [11, 12]


def test_a_silent_node_gets_no_reply_at_the_round_deadline_and_the_round_record_counts_it() -> None:
    """Flower's Grid: with a timeout, "the method may not return replies for all sent messages"."""
    hub = Hub()
    FakeSelector(hub, [21, 22], delay={}, silent={22})
    grid, obs = _grid(hub, timeout=1.5)
    started = time.monotonic()
    replies = list(grid.send_and_receive(_train([21, 22])))
    assert time.monotonic() - started >= 1.4
    assert [r.metadata.src_node_id for r in replies] == [21] and replies[0].has_content()
    assert all(len(r.metadata.message_id) == 64 for r in replies)
    # The round's record still hears of it, with the reason.
    [late] = [r for r in obs.replies[-1] if r.has_error()]
    assert late.metadata.src_node_id == 22 and "deadline" in late.error.reason


def test_a_node_that_leaves_fails_at_once() -> None:
    hub = Hub()
    FakeSelector(hub, [31, 32], delay={}, silent={32})
    grid, _ = _grid(hub, timeout=60.0)
    threading.Timer(0.3, hub.node_left, args=(32, "stream closed")).start()
    started = time.monotonic()
    replies = list(grid.send_and_receive(_train([31, 32])))
    assert time.monotonic() - started < 30
    errors = [r for r in replies if r.has_error()]
    assert len(errors) == 1 and "node left: stream closed" in errors[0].error.reason


def test_too_few_results_abandon_the_round() -> None:
    hub = Hub()
    FakeSelector(hub, [41, 42, 43, 44], delay={}, silent={42, 43, 44})
    grid, obs = _grid(hub, timeout=1.0, min_fraction=0.5)
    replies = list(grid.send_and_receive(_train([41, 42, 43, 44])))
    assert replies and all(r.has_error() for r in replies)
    assert obs.closed == [("1", [])]


def test_messages_to_unknown_nodes_fail_without_waiting() -> None:
    hub = Hub()
    FakeSelector(hub, [51], delay={}, silent=set())
    grid, _ = _grid(hub, timeout=60.0)
    started = time.monotonic()
    replies = list(grid.send_and_receive(_train([51, 999])))
    assert time.monotonic() - started < 30
    assert [r.has_content() for r in sorted(replies, key=lambda r: r.metadata.src_node_id)] == [True, False]


def test_push_and_pull_as_a_superlink() -> None:
    """Mixed message types in one push; each reply pulled once; then "message unavailable"."""
    hub = Hub()
    FakeSelector(hub, [41, 42, 43], delay={}, silent={43})
    grid, _ = _grid(hub)
    assert list(grid.push_messages([])) == []
    train = _train([41])[0]
    evaluate = Message(train.content, 42, MessageType.EVALUATE)
    silent = _train([43])[0]
    ids = list(grid.push_messages([train, evaluate, silent]))
    assert ids == [train.metadata.message_id, evaluate.metadata.message_id, silent.metadata.message_id]
    got: dict[str, Message] = {}
    deadline = time.monotonic() + 20
    while len(got) < 2 and time.monotonic() < deadline:
        # As a ServerApp polls: only what it has not got yet (a reply pulled twice is "unavailable").
        got.update(
            {m.metadata.reply_to_message_id: m for m in grid.pull_messages([i for i in ids[:2] if i not in got])}
        )
        time.sleep(0.05)
    assert set(got) == set(ids[:2]) and all(m.has_content() for m in got.values())
    assert {m.metadata.message_type for m in got.values()} == {MessageType.TRAIN, MessageType.EVALUATE}
    hub.node_left(43, "stream closed")
    again = {m.metadata.reply_to_message_id: m for m in grid.pull_messages(ids + ["never-sent"])}
    assert again[ids[2]].error.code == ErrorCode.NODE_UNAVAILABLE and "stream closed" in again[ids[2]].error.reason
    assert again[ids[2]].metadata.src_node_id == 43
    for mid in ids[:2] + ["never-sent"]:
        assert again[mid].error.code == ErrorCode.MESSAGE_UNAVAILABLE
    # Every instruction handed out: the pushed batches are forgotten.
    assert hub.batches == {}


def test_a_strategy_waiting_for_clients_is_told_live_and_fails_after_the_limit() -> None:
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    from coordinator.grid import NotEnoughClients

    hub = Hub()
    FakeSelector(hub, [51, 52], delay={}, silent=set())
    said: list[str] = []
    policy = GridPolicy(
        round_timeout=60.0,
        overselect=1.0,
        min_result_fraction=0.0,
        aggregation="individual",
        weight_key="num-examples",
        node_wait=2.5,
    )
    grid = SelectorTierGrid(hub, policy, Observer(), say=said.append)
    started = time.monotonic()
    with pytest.raises(NotEnoughClients, match=r"waited 3 s for clients: 2 of 3 connected"):
        sample_nodes(grid, 3, 3)  # Flower's own wait loop
    assert 2.5 <= time.monotonic() - started < 10
    assert said[0].startswith("waiting: 2 of 3 clients connected (0 s so far; the run fails if they are not there")
    # Enough clients: no wait, nothing said.
    said.clear()
    assert sorted(sample_nodes(grid, 2, 2)[0]) == [51, 52] and said == []
