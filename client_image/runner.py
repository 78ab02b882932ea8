"""The client's session with a selector: join, fetch the app, serve tasks.

One process holds one Flower node: the ClientApp is loaded once and called for
every instruction with a Context that persists for the run (as a SuperNode
does), so stateful ClientApps work unchanged.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from client_image.reach import Attempts
from fedota_common.fab import App, FabError, extract, parse_fab
from fedota_common.grpcutil import TRANSFER_DEADLINE, UNARY_DEADLINE, channel
from fedota_common.payload import (
    Assembler,
    Payload,
    iter_chunks,
    message_to_payload,
    payload_to_message,
    release_cycles,
    round_of,
)
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb
from protos.selector.v1 import selector_pb2_grpc

log = logging.getLogger(__name__)


_FINAL_AT_JOIN = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)


# How a selector's shutdown reason begins when it withdrew this site's access (revoked).
ACCESS_WITHDRAWN = "access withdrawn"


class ClientError(Exception):
    """A problem the data holder must fix; the message says what and how."""


@dataclass(frozen=True)
class NodeSetup:
    selectors: list[str]
    credential: str
    fab_sha256: str
    data_path: Path
    partition_id: int
    num_partitions: int
    cache_dir: Path
    display_name: str
    max_join_wait: float
    # The problem's CA certificate (PEM): selectors are reached over TLS and must
    # present a certificate it signed. None: plaintext (--insecure).
    root_certificates: bytes | None = None
    # The join bundle says the selectors are announced for the server's own machine only.
    selectors_local_only: bool = False
    # Further `context.node_config` entries (`--node-config`, as a Flower SuperNode takes them).
    extra_node_config: dict[str, Any] = field(default_factory=dict)


class Node:
    """A Flower node served over our selector protocol."""

    def __init__(self, setup: NodeSetup) -> None:
        self.setup = setup
        self.app: App | None = None
        self.client_app: Any = None
        self.context: Any = None
        self.run_id: int | None = None
        self.tasks_done = 0

    def serve(self) -> str:
        """Serve until the run finishes; returns why it stopped. Reconnects on failures.

        Every selector address is tried in turn (from a random start, to spread
        clients) until one answers; the first failure of each kind at an address is
        printed at once, and when none answers within `max_join_wait` the error lists
        every address tried, what failed there and what to check.
        """
        deadline = time.monotonic() + self.setup.max_join_wait
        backoff = 0.5
        attempts = Attempts(list(self.setup.selectors), local_only=self.setup.selectors_local_only)
        order = list(self.setup.selectors)
        start = random.randrange(len(order))
        order = order[start:] + order[:start]
        turn = 0
        while True:
            target = order[turn % len(order)]
            turn += 1
            try:
                return self._session(target)
            except grpc.RpcError as exc:
                # Only a refusal at Join is final; anything later (a restarted
                # selector forgetting the session, a cut link) means join again.
                code = exc.code()
                kind, new = attempts.record(target, code, exc.details() or "")
                if self.run_id is None and new:
                    print(
                        f"warning: cannot reach the selector at {target}: {kind}; retrying for up to "
                        f"{self.setup.max_join_wait:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                if time.monotonic() > deadline and self.run_id is None:
                    raise ClientError(attempts.report(self.setup.max_join_wait)) from exc
                log.info(
                    "selector unavailable; retrying",
                    extra={"target": target, "code": str(code), "kind": kind, "detail": exc.details()},
                )
            if turn % len(order) == 0:
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _session(self, target: str) -> str:
        with channel(target, self.setup.root_certificates) as ch:
            stub = selector_pb2_grpc.SelectorStub(ch)
            try:
                joined: spb.JoinResponse = stub.Join(
                    spb.JoinRequest(
                        credential=self.setup.credential,
                        fab_sha256=self.setup.fab_sha256,
                        client_version="fedota-client/0.1",
                        display_name=self.setup.display_name,
                    ),
                    timeout=UNARY_DEADLINE,
                )
            except grpc.RpcError as exc:
                if exc.code() in _FINAL_AT_JOIN:
                    raise ClientError(f"selector {target} refused this client: {exc.details()}") from exc
                raise
            session = joined.session_id
            log.info("joined", extra={"selector": target, "node_id": joined.node_id, "run_id": joined.run.run_id})
            self._prepare(stub, session, joined)
            return self._work(stub, session, joined)

    def _prepare(self, stub: selector_pb2_grpc.SelectorStub, session: str, joined: spb.JoinResponse) -> None:
        """Fetch and verify the app, load the ClientApp, set up the Context."""
        from flwr.app import Context, RecordDict
        from flwr.clientapp.client_app import ClientApp, LoadClientAppError
        from flwr.supercore.object_ref import load_app as load_object

        run = joined.run
        if self.app is None or self.app.sha256 != run.fab_sha256:
            chunks = stub.GetFab(spb.GetFabRequest(session_id=session), timeout=TRANSFER_DEADLINE)
            asm = Assembler(run.fab_size, "")
            for chunk in chunks:
                asm.add(chunk.data)
            content = asm.finish()
            try:
                app = parse_fab(bytes(content), origin="the app served by the selector")
            except FabError as exc:
                raise ClientError(f"the app served by the selector is unusable: {exc}") from exc
            expected = self.setup.fab_sha256 or run.fab_sha256
            if app.sha256 != expected:
                raise ClientError(
                    f"the app served by the selector has SHA-256 {app.sha256}, but {expected} was "
                    "expected; refusing to run code you did not review"
                )
            if not self.setup.fab_sha256:
                log.warning("no FAB hash pinned: running the app the selector serves", extra={"fab_sha256": app.sha256})
            try:
                app_dir = extract(app, self.setup.cache_dir / "apps")
            except FabError as exc:
                raise ClientError(f"the app cannot be unpacked: {exc}") from exc
            client_app = load_object(app.clientapp, LoadClientAppError, str(app_dir))
            if not isinstance(client_app, ClientApp):
                raise ClientError(f"{app.clientapp} in the app is not a flwr ClientApp")
            self.app, self.client_app = app, client_app
        overrides = json.loads(run.run_config_json or "{}")
        if self.context is None or self.run_id != run.run_id:
            try:
                run_config = self.app.fused_config(overrides)
            except FabError as exc:
                raise ClientError(str(exc)) from exc
            self.context = Context(
                run_id=run.run_id,
                node_id=joined.node_id,
                node_config={
                    "data-path": str(self.setup.data_path),
                    "partition-id": self.setup.partition_id,
                    "num-partitions": self.setup.num_partitions,
                    **self.setup.extra_node_config,
                },
                state=RecordDict(),
                run_config=run_config,
            )
            self.run_id = run.run_id

    def _work(self, stub: selector_pb2_grpc.SelectorStub, session: str, joined: spb.JoinResponse) -> str:
        stop = threading.Event()
        interval = joined.heartbeat_interval or 5.0

        def heartbeats() -> Iterator[spb.ClientEvent]:
            yield spb.ClientEvent(session_id=session, heartbeat=spb.Heartbeat())
            while not stop.wait(interval):
                yield spb.ClientEvent(session_id=session, heartbeat=spb.Heartbeat())

        tasks: queue.Queue[str | None] = queue.Queue()
        cancelled: set[str] = set()
        events = stub.Subscribe(heartbeats())
        worker_error: list[BaseException] = []

        def work() -> None:
            while (task_id := tasks.get()) is not None:
                if task_id in cancelled:
                    continue
                try:
                    self._run_task(stub, session, joined.node_id, task_id)
                except grpc.RpcError as exc:
                    log.warning(
                        "task transfer failed",
                        extra={"task": task_id, "code": str(exc.code()), "detail": exc.details()},
                    )
                except Exception as exc:  # noqa: BLE001 - re-raised by _work() in the main thread
                    worker_error.append(exc)
                    events.cancel()
                    return

        worker = threading.Thread(target=work, name="task-worker", daemon=True)
        worker.start()
        reason = "stream ended"
        try:
            for event in events:
                kind = event.WhichOneof("event")
                if kind == "task":
                    tasks.put(event.task.task_id)
                elif kind == "cancelled":
                    cancelled.add(event.cancelled.task_id)
                    log.info(
                        "task cancelled by the selector",
                        extra={"task": event.cancelled.task_id, "reason": event.cancelled.reason},
                    )
                elif kind == "shutdown":
                    reason = event.shutdown.reason or "shutdown"
                    break
                elif kind == "welcome":
                    log.info("checked in; waiting for work", extra={"node_id": event.welcome.node_id})
        except grpc.RpcError:
            if worker_error:
                raise worker_error[0] from None
            stop.set()
            tasks.put(None)
            raise
        finally:
            stop.set()
        tasks.put(None)
        worker.join()
        if worker_error:
            raise worker_error[0]
        try:
            stub.Leave(spb.LeaveRequest(session_id=session, reason=reason), timeout=5.0)
        except grpc.RpcError:
            pass
        return reason

    def _run_task(self, stub: selector_pb2_grpc.SelectorStub, session: str, node_id: int, task_id: str) -> None:
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode
        from flwr.supercore.task_identity import TaskIdentity

        parts = stub.PullTask(spb.PullTaskRequest(session_id=session, task_id=task_id), timeout=TRANSFER_DEADLINE)
        header: payload_pb2.PayloadHeader | None = None
        asm: Assembler | None = None
        for part in parts:
            if part.WhichOneof("part") == "header":
                header = part.header
                asm = Assembler(header.content_size, header.content_sha256)
            elif asm is not None:
                asm.add(part.chunk.data)
        if header is None or asm is None:
            raise ClientError("the selector sent a task without a header")
        message = payload_to_message(header, asm.finish())
        received = time.monotonic()
        TaskIdentity.run_id = message.metadata.run_id
        TaskIdentity.node_id = node_id
        TaskIdentity.task_id = (TaskIdentity._task_id or 0) + 1
        try:
            reply = self.client_app(message=message, context=self.context)
        except Exception as exc:
            # Report the failure to the server as Flower's deployment runtime does, in its
            # words ("<class 'ZeroDivisionError'>:<'division by zero'>"); keep serving.
            log.exception("ClientApp raised", extra={"task": task_id})
            reason = str(type(exc)) + ":<'" + str(exc) + "'>"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        app_seconds = time.monotonic() - received
        message_type, round_id = message.metadata.message_type, round_of(message)
        # The reply's segments reference its arrays, so the upload needs no copy;
        # the instruction's model is dropped first unless the reply shares it.
        payload = message_to_payload(reply)
        del reply, message

        def upload(result: Payload) -> Iterator[spb.ResultPart]:
            yield spb.ResultPart(header=spb.ResultHeader(session_id=session, task_id=task_id, payload=result.header))
            for chunk in iter_chunks(result.content):
                yield spb.ResultPart(chunk=payload_pb2.Chunk(data=chunk))

        res: spb.PushResultResponse = stub.PushResult(upload(payload), timeout=TRANSFER_DEADLINE)
        uploaded = time.monotonic() - received - app_seconds
        size = max(header.content_size, len(payload.content))
        del payload
        # The instruction and reply are freed here, after the upload, off the round's critical path.
        release_cycles(size)
        self.tasks_done += 1
        log.info(
            "task done",
            extra={
                "task": task_id,
                "type": message_type,
                "round": round_id,
                "app_seconds": round(app_seconds, 3),
                "upload_seconds": round(uploaded, 3),
                "accepted": res.accepted,
            },
        )
