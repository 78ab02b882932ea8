"""A client whose selector is past its concurrent-call limit pulls the task again, not gives it up.

The selector's gRPC server refuses calls beyond its limit with RESOURCE_EXHAUSTED before it
sends anything; the client used to log "task transfer failed" and lose the round's task.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from client_image.runner import PULL_RETRY_WAITS, pull_task
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb

CONTENT = b"the model, in chunks"


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "Concurrent RPC limit exceeded"


class Selector:
    """PullTask refused `refusals` times (as gRPC does: when the stream is read), then served."""

    def __init__(self, refusals: int, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED) -> None:
        self.refusals, self.code, self.calls = refusals, code, 0

    def PullTask(self, request: spb.PullTaskRequest, timeout: float) -> Iterator[Any]:
        self.calls += 1
        refuse = self.calls <= self.refusals

        def parts() -> Iterator[Any]:
            if refuse:
                raise Refused(self.code)
            header = payload_pb2.PayloadHeader(
                content_size=len(CONTENT), content_sha256=hashlib.sha256(CONTENT).hexdigest()
            )
            yield spb.TaskPart(header=header)
            yield memoryview(CONTENT[:7])
            yield memoryview(CONTENT[7:])

        return parts()


def test_a_refused_pull_is_tried_again_after_a_growing_wait() -> None:
    selector, waited = Selector(refusals=2), []
    header, content = pull_task(selector, "session", "task-1", sleep=waited.append)
    assert bytes(content) == CONTENT and header.content_size == len(CONTENT)
    assert selector.calls == 3
    assert [PULL_RETRY_WAITS[i] <= w <= 1.5 * PULL_RETRY_WAITS[i] for i, w in enumerate(waited)] == [True, True]


def test_a_selector_that_stays_busy_fails_the_task_after_the_last_try() -> None:
    selector, waited = Selector(refusals=100), []
    with pytest.raises(grpc.RpcError) as refused:
        pull_task(selector, "session", "task-1", sleep=waited.append)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert selector.calls == len(PULL_RETRY_WAITS) + 1 and len(waited) == len(PULL_RETRY_WAITS)


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED]
)
def test_other_refusals_are_not_retried(code: grpc.StatusCode) -> None:
    selector, waited = Selector(refusals=1, code=code), []
    with pytest.raises(grpc.RpcError):
        pull_task(selector, "session", "task-1", sleep=waited.append)
    assert selector.calls == 1 and waited == []
