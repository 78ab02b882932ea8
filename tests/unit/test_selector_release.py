"""A selector lets an instruction's content go once every client of it has pulled it all.

While its clients train and their replies are folded, the selector then holds
the running sum and one reply, not the instruction as well (issue 16, part 3);
a client that asks again later gets it fetched again from the coordinator.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from fedota_common.chunkwire import chunk_view
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.selector.v1 import selector_pb2 as spb
from selector.core import OpenAuthenticator, SelectorCore
from selector.servicer import FabSource, SelectorServicer

CONTENT = bytes(range(256)) * 9000  # a little over 2 MiB: several chunks


class _Upstream:
    def __init__(self, content: bytes) -> None:
        self.pulls: list[str] = []
        self.content = content

    def send(self, msg: cpb.SelectorMessage) -> None:
        pass

    def pull_content(self, content_id: str, size: int, sha256: str) -> bytes:
        assert size == len(self.content)
        self.pulls.append(content_id)
        return self.content


class _Context:
    def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")

    def add_callback(self, callback: Any) -> bool:
        return True


def _selector(
    names: str, content: bytes = CONTENT, inline: str = "", carried: bytes | None = None, sha256: str = ""
) -> tuple[SelectorCore, SelectorServicer, _Upstream, dict[str, Any]]:
    """A selector with a session per letter of `names` (those in `inline` take inline tasks) and one task each.

    `carried`: the batch brings these bytes as its content (a small model), else the selector pulls it.
    """
    core = SelectorCore("sel", OpenAuthenticator())
    upstream = _Upstream(content)
    core.upstream = upstream  # type: ignore[assignment]
    core.on_welcome(cpb.Welcome(run_id=1, fab_sha256="f" * 64, fab_size=1))
    sessions = {}
    for name in names:
        sessions[name], _ = core.join(f"fdp_1_{name}", "", name, inline_tasks=name in inline)
        core.subscribe(sessions[name])
    core.on_instructions(
        cpb.Instructions(
            batch_id="b1",
            aggregation=cpb.AGGREGATION_WEIGHTED_MEAN,
            weight_key="num-examples",
            items=[
                cpb.Instruction(
                    message_id=f"t-{n}",
                    node_id=s.node_id,
                    content_id="b1/0",
                    content_size=len(content),
                    content_sha256=sha256,
                )
                for n, s in sessions.items()
            ],
            contents=[cpb.InlineContent(content_id="b1/0", data=carried)] if carried is not None else [],
        )
    )
    deadline = time.monotonic() + 10
    while "b1/0" not in core.contents:  # fetched on its own thread
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return core, SelectorServicer(core, FabSource(core, lambda: b"")), upstream, sessions


def _announced(servicer: SelectorServicer, session: Any) -> spb.SelectorEvent:
    """The first event after the welcome on `session`'s Subscribe stream, as the client parses it."""

    def events() -> Iterator[spb.ClientEvent]:
        yield spb.ClientEvent(session_id=session.session_id)
        threading.Event().wait(60)  # the client stays: its end would end the session

    stream = servicer.Subscribe(events(), _Context())  # type: ignore[arg-type]
    assert next(stream).WhichOneof("event") == "welcome"
    sent = next(stream)
    session.outbox.put(None)  # then the stream ends, as gRPC asks for more once the event is sent
    assert list(stream) == []
    return spb.SelectorEvent.FromString(sent) if isinstance(sent, bytes) else sent


def _pull(servicer: SelectorServicer, session: Any, task_id: str) -> bytes:
    parts = list(servicer.PullTask(spb.PullTaskRequest(session_id=session.session_id, task_id=task_id), _Context()))  # type: ignore[arg-type]
    # The chunks come framed by hand, as the servicer hands them to gRPC.
    return b"".join(bytes(chunk_view(p) or b"") for p in parts[1:])


def test_the_content_goes_when_the_last_client_has_it_and_is_fetched_again_for_a_retry() -> None:
    core, servicer, upstream, sessions = _selector("abc")
    assert _pull(servicer, sessions["a"], "t-a") == CONTENT
    assert _pull(servicer, sessions["b"], "t-b") == CONTENT
    assert "b1/0" in core.contents  # c has not pulled it yet
    assert _pull(servicer, sessions["c"], "t-c") == CONTENT
    assert "b1/0" not in core.contents
    assert upstream.pulls == ["b1/0"]
    # A client that pulls again (its first pull broke off on its side) still gets it.
    assert _pull(servicer, sessions["b"], "t-b") == CONTENT
    assert upstream.pulls == ["b1/0", "b1/0"]
    assert "b1/0" not in core.contents


def test_a_pull_that_breaks_off_keeps_the_content() -> None:
    core, servicer, _, sessions = _selector("ab")
    stream = servicer.PullTask(spb.PullTaskRequest(session_id=sessions["a"].session_id, task_id="t-a"), _Context())  # type: ignore[arg-type]
    next(stream), next(stream)
    stream.close()  # the client went away after the first chunk
    assert _pull(servicer, sessions["b"], "t-b") == CONTENT
    assert "b1/0" in core.contents


SMALL = bytes(range(256)) * 4097  # just over 1 MiB, as a "1 MB" model with its header is


def test_a_small_task_goes_whole_in_its_announcement_to_a_client_that_asked() -> None:
    core, servicer, upstream, sessions = _selector("ab", SMALL, inline="a")
    event = _announced(servicer, sessions["a"])
    assert event.task.task_id == "t-a" and event.task.HasField("header")
    assert event.task.content == SMALL and event.task.content_size == len(SMALL)
    assert event.task.header.content_size == len(SMALL)
    assert "b1/0" in core.contents  # b has not had it yet
    # An older client did not ask: it is told of the task and pulls it, as before.
    plain = _announced(servicer, sessions["b"])
    assert plain.task.task_id == "t-b" and not plain.task.HasField("header") and not plain.task.content
    assert _pull(servicer, sessions["b"], "t-b") == SMALL
    assert "b1/0" not in core.contents and upstream.pulls == ["b1/0"]  # both have it: let go, fetched once


def test_a_task_too_large_for_one_message_is_pulled_even_by_a_client_that_asked() -> None:
    core, servicer, _, sessions = _selector("a", CONTENT, inline="a")
    event = _announced(servicer, sessions["a"])
    assert event.task.task_id == "t-a" and not event.task.HasField("header")
    assert _pull(servicer, sessions["a"], "t-a") == CONTENT


def test_a_content_carried_by_its_batch_is_not_pulled() -> None:
    core, servicer, upstream, sessions = _selector("ab", SMALL, inline="a", carried=SMALL)
    assert upstream.pulls == []
    assert _announced(servicer, sessions["a"]).task.content == SMALL
    assert _pull(servicer, sessions["b"], "t-b") == SMALL
    assert upstream.pulls == [] and "b1/0" not in core.contents


def test_a_carried_content_that_does_not_match_its_hash_is_pulled_instead() -> None:
    sha = hashlib.sha256(SMALL).hexdigest()
    core, servicer, upstream, sessions = _selector("a", SMALL, carried=b"x" + SMALL[1:], sha256=sha)
    assert upstream.pulls == ["b1/0"]
    assert _pull(servicer, sessions["a"], "t-a") == SMALL
