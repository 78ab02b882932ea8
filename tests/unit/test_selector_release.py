"""A selector lets an instruction's content go once every client of it has pulled it all.

While its clients train and their replies are folded, the selector then holds
the running sum and one reply, not the instruction as well (issue 16, part 3);
a client that asks again later gets it fetched again from the coordinator.
"""

from __future__ import annotations

import time
from typing import Any

from fedota_common.chunkwire import chunk_view
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.selector.v1 import selector_pb2 as spb
from selector.core import OpenAuthenticator, SelectorCore
from selector.servicer import FabSource, SelectorServicer

CONTENT = bytes(range(256)) * 9000  # a little over 2 MiB: several chunks


class _Upstream:
    def __init__(self) -> None:
        self.pulls: list[str] = []

    def send(self, msg: cpb.SelectorMessage) -> None:
        pass

    def pull_content(self, content_id: str, size: int, sha256: str) -> bytes:
        assert size == len(CONTENT)
        self.pulls.append(content_id)
        return CONTENT


class _Context:
    def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def _selector(names: str) -> tuple[SelectorCore, SelectorServicer, _Upstream, dict[str, Any]]:
    core = SelectorCore("sel", OpenAuthenticator())
    upstream = _Upstream()
    core.upstream = upstream  # type: ignore[assignment]
    core.on_welcome(cpb.Welcome(run_id=1, fab_sha256="f" * 64, fab_size=1))
    sessions = {}
    for name in names:
        sessions[name], _ = core.join(f"fdp_1_{name}", "", name)
        core.subscribe(sessions[name])
    core.on_instructions(
        cpb.Instructions(
            batch_id="b1",
            aggregation=cpb.AGGREGATION_WEIGHTED_MEAN,
            weight_key="num-examples",
            items=[
                cpb.Instruction(message_id=f"t-{n}", node_id=s.node_id, content_id="b1/0", content_size=len(CONTENT))
                for n, s in sessions.items()
            ],
        )
    )
    deadline = time.monotonic() + 10
    while "b1/0" not in core.contents:  # fetched on its own thread
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return core, SelectorServicer(core, FabSource(core, lambda: b"")), upstream, sessions


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
