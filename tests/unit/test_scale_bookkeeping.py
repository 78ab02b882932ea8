"""Bookkeeping that must not walk every client per event (issue 16: 1,000 clients in a round).

The hub's batch keeps its counts as replies come; the roster poller does not
parse an unchanged list again; a selector's client stream waits on its outbox
and ends when the session does, with no polling.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, cast

from flwr.app import MessageType, Metadata
from flwr.common.serde_utils import metadata_to_proto

from coordinator.hub import Batch, Hub, Instr
from coordinator.report import Target
from coordinator.roster import RosterPoller
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb
from selector.core import OpenAuthenticator, SelectorCore
from selector.servicer import FabSource, SelectorServicer

# ---- coordinator: batch counts ---------------------------------------------------------------


def _batch(hub: Hub, nodes: list[int]) -> Batch:
    instrs = {f"m{n}": Instr(f"m{n}", n, "s1", True) for n in nodes}
    batch = Batch("b1", "train", "1", cpb.AGGREGATION_INDIVIDUAL, len(nodes), instrs, {})
    hub.attach("s1", [(n, f"site {n}") for n in nodes])
    hub.open_batch(batch, {})
    return batch


def _recount(batch: Batch, state: str) -> int:
    return sum(1 for i in batch.instrs.values() if i.state == state)


def test_a_batch_counts_its_instructions_as_their_states_change() -> None:
    hub = Hub()
    batch = _batch(hub, list(range(1, 11)))
    assert batch.count("pending") == 10
    for n in (1, 2, 3):
        hub.progress("b1", f"m{n}", True, "")
    hub.progress("b1", "m4", False, "boom")
    hub.progress("b1", "m4", True, "")  # already failed: no change
    hub.node_left(5, "gone")
    hub.node_left(5, "gone again")
    for state in ("pending", "ok", "failed"):
        assert batch.count(state) == _recount(batch, state)
    assert (batch.count("pending"), batch.count("ok"), batch.count("failed")) == (5, 3, 2)
    assert batch.instrs["m5"].detail == "node left: gone"
    hub.close(batch, "deadline")
    assert batch.count("pending") == 0 and batch.count("failed") == 7
    assert all(batch.instrs[f"m{n}"].late for n in range(6, 11))


def test_a_leaving_node_fails_only_its_own_instructions() -> None:
    hub = Hub()
    batch = _batch(hub, [7, 8])
    hub.node_left(7, "stream closed")
    assert batch.instrs["m7"].state == "failed" and batch.instrs["m8"].state == "pending"
    assert batch.of_node(8) == [batch.instrs["m8"]] and batch.of_node(99) == []


# ---- coordinator: the participant list -------------------------------------------------------


class _Website(http.server.BaseHTTPRequestHandler):
    doc: Any = {"participants": []}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps(self.doc).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _entry(pid: int) -> dict[str, str]:
    return {"participant": str(pid), "credential_sha256": hashlib.sha256(f"fdp_{pid}_x".encode()).hexdigest()}


def test_an_unchanged_participant_list_is_kept_as_it_was_and_a_changed_one_replaces_it() -> None:
    _Website.doc = {"participants": [_entry(1), _entry(2)]}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Website)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hub = Hub()
        link = hub.attach("s1", [])
        poller = RosterPoller(Target(f"http://127.0.0.1:{server.server_address[1]}/runs/1/", "t"), hub)
        assert poller.poll_once()
        first = hub.participants
        assert first is not None and [a.participant for a in first.allowed] == ["1", "2"]
        assert poller.poll_once()
        # Not parsed again: the very list in force stays, and no selector is sent it again.
        assert hub.participants is first
        sent = link.outbox.get_nowait()
        assert sent is not None and sent.participants == first and link.outbox.empty()
        # A selector that asks gets the unchanged list once more.
        assert poller.poll_once(asked=True)
        again = link.outbox.get_nowait()
        assert again is not None and again.participants == first
        _Website.doc = {"participants": [_entry(1)]}
        assert poller.poll_once()
        assert hub.participants is not None and [a.participant for a in hub.participants.allowed] == ["1"]
    finally:
        server.shutdown()
        server.server_close()


# ---- selector: the client stream -------------------------------------------------------------


class _Context:
    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.callbacks: list[Any] = []

    def add_callback(self, callback: Any) -> bool:
        if not self.active:
            return False
        self.callbacks.append(callback)
        return True

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _servicer() -> tuple[SelectorCore, SelectorServicer, str]:
    core = SelectorCore("sel", OpenAuthenticator())
    core.on_welcome(cpb.Welcome(run_id=1, fab_sha256="f" * 64, fab_size=1))
    session, _ = core.join("fdp_1_a", "", "a")
    return core, SelectorServicer(core, FabSource(core, lambda: b"")), session.session_id


def _heartbeats(session_id: str, stop: threading.Event) -> Iterator[spb.ClientEvent]:
    yield spb.ClientEvent(session_id=session_id, heartbeat=spb.Heartbeat())
    stop.wait()


def test_the_client_stream_ends_when_its_session_leaves() -> None:
    core, servicer, sid = _servicer()
    stop = threading.Event()
    context = _Context()
    stream = servicer.Subscribe(_heartbeats(sid, stop), context)  # type: ignore[arg-type]
    try:
        assert next(stream).WhichOneof("event") == "welcome"
        core.on_run_finished("done")
        assert next(stream).WhichOneof("event") == "shutdown"
        context.callbacks[0]()  # the RPC ended: gRPC calls back
        assert sid not in core.sessions
        assert next(stream, None) is None
    finally:
        stop.set()


def test_a_stream_already_over_leaves_its_session_and_serves_nothing() -> None:
    core, servicer, sid = _servicer()
    stop = threading.Event()
    stream = servicer.Subscribe(_heartbeats(sid, stop), _Context(active=False))  # type: ignore[arg-type]
    try:
        assert next(stream, None) is None
        assert sid not in core.sessions
    finally:
        stop.set()


# ---- selector: each client's tasks -----------------------------------------------------------


class _Upstream:
    def __init__(self) -> None:
        self.sent: list[cpb.SelectorMessage] = []

    def send(self, msg: cpb.SelectorMessage) -> None:
        self.sent.append(msg)

    def failed(self) -> list[str]:
        return [m.progress.message_id for m in self.sent if m.WhichOneof("msg") == "progress" and not m.progress.ok]


def _one_batch(upstream: _Upstream, names: str, aggregation: int) -> tuple[SelectorCore, dict[str, Any]]:
    """A selector with a subscribed session per letter of `names` and batch b1 of one task each (t-<letter>)."""
    core = SelectorCore("sel", OpenAuthenticator())
    core.upstream = upstream  # type: ignore[assignment]
    core.on_welcome(cpb.Welcome(run_id=1, fab_sha256="f" * 64, fab_size=1))
    sessions = {}
    for name in names:
        sessions[name], _ = core.join(f"fdp_1_{name}", "", name)
        core.subscribe(sessions[name])
    core.contents["b1/0"] = b""  # already here: tasks are announced at once
    core.on_instructions(
        cpb.Instructions(
            batch_id="b1",
            aggregation=cast(cpb.Aggregation, aggregation),
            items=[
                cpb.Instruction(message_id=f"t-{n}", node_id=s.node_id, content_id="b1/0") for n, s in sessions.items()
            ],
        )
    )
    return core, sessions


def test_a_leaving_client_fails_its_own_open_tasks_and_no_one_elses() -> None:
    upstream = _Upstream()
    core, sessions = _one_batch(upstream, "abc", cpb.AGGREGATION_WEIGHTED_MEAN)
    assert {t.task_id: t.state for t in core.tasks.values()} == {
        "t-a": "announced",
        "t-b": "announced",
        "t-c": "announced",
    }
    core.leave(sessions["b"], "gone")
    assert upstream.failed() == ["t-b"]
    assert (core.tasks["t-a"].state, core.tasks["t-c"].state) == ("announced", "announced")
    # A cancelled task is no longer the client's: its leaving fails nothing more.
    core.on_cancel(["t-a"], "round closed")
    core.leave(sessions["a"], "gone")
    assert upstream.failed() == ["t-b"]
    core.leave(sessions["c"], "gone")
    assert upstream.failed() == ["t-b", "t-c"]


class _ForwardingUpstream(_Upstream):
    def __init__(self) -> None:
        super().__init__()
        self.forwarded: list[str] = []

    def push_result(self, header: cpb.ResultHeader, content: Any) -> cpb.PushResultResponse:
        for _ in content if not isinstance(content, bytes) else [content]:
            pass
        self.forwarded += list(header.message_ids)
        return cpb.PushResultResponse(accepted=True)


def _reply_header() -> payload_pb2.PayloadHeader:
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=1,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.QUERY,
    )
    return payload_pb2.PayloadHeader(metadata=metadata_to_proto(metadata).SerializeToString())


def _open_recount(core: SelectorCore, batch_id: str) -> int:
    return sum(
        1 for t in core.tasks.values() if t.batch_id == batch_id and t.state in ("pending", "announced", "receiving")
    )


def test_a_batch_of_forwarded_replies_counts_its_open_tasks_and_goes_with_its_last() -> None:
    """Each reply forwarded on its own no longer walks the round's tasks; the batch still goes when it is over."""
    upstream = _ForwardingUpstream()
    core, sessions = _one_batch(upstream, "abcde", cpb.AGGREGATION_INDIVIDUAL)
    batch = core.batches["b1"]
    assert batch.open == _open_recount(core, "b1") == 5

    core.submit(sessions["a"], "t-a", _reply_header(), b"")
    assert batch.open == _open_recount(core, "b1") == 4
    core.leave(sessions["b"], "gone")  # fails its task
    assert batch.open == _open_recount(core, "b1") == 3
    core.on_cancel(["t-c"], "the strategy has enough")
    assert batch.open == _open_recount(core, "b1") == 2
    core.on_cancel(["t-c"], "again")  # a repeated cancel changes nothing
    assert batch.open == 2
    core.submit(sessions["d"], "t-d", _reply_header(), b"")
    assert batch.open == 1 and "b1" in core.batches and "b1/0" in core.contents
    core.submit(sessions["e"], "t-e", _reply_header(), b"")
    # The last open task answered: the batch, its tasks and its content are let go.
    assert batch.open == 0
    assert "b1" not in core.batches and not core.tasks and "b1/0" not in core.contents
    assert upstream.forwarded == ["t-a", "t-d", "t-e"]
