"""The selector's link to its coordinator: one Attach stream, reconnecting.

Over TLS the coordinator must show a certificate signed by the problem's CA for
the name dialled, and every call carries the run's selector token as well.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

import grpc

from fedota_common.grpcutil import TRANSFER_DEADLINE, channel
from fedota_common.payload import Content, Segments, WireContent, assemble, iter_chunks
from fedota_common.runstatus import from_proto
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.coordinator.v1 import coordinator_pb2_grpc
from protos.payload.v1 import payload_pb2
from selector.core import SelectorCore

log = logging.getLogger(__name__)


def tls_problem(details: str) -> str | None:
    """What went wrong in the TLS handshake with the coordinator, from gRPC's error text; None if not TLS."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return "its certificate is not signed by the CA this selector trusts (FEDOTA_COORDINATOR_CA)"
    if "Hostname Verification" in details:
        return "its certificate is not issued for the name this selector dials"
    if "WRONG_VERSION_NUMBER" in details:
        return "it does not speak TLS (started with --insecure?)"
    if "handshake failed" in details.lower():
        return "the TLS handshake failed"
    return None


class CoordinatorLink:
    """Implements `Upstream` over gRPC and feeds coordinator messages to the core."""

    def __init__(self, core: SelectorCore, target: str, token: str, root_certificates: bytes | None = None) -> None:
        """`root_certificates`: the CA (PEM) the coordinator's certificate must chain to; None dials plaintext."""
        self.core = core
        self.target = target
        self.token = token
        self.tls = root_certificates is not None
        # Long-lived: reconnects within seconds when a restarted coordinator is back.
        self.channel = channel(target, root_certificates, internal=True)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self._outbox: queue.Queue[cpb.SelectorMessage | None] | None = None
        self._stop = threading.Event()
        self.connected = threading.Event()

    # ---- Upstream ---------------------------------------------------------------------

    def send(self, msg: cpb.SelectorMessage) -> None:
        box = self._outbox
        if box is not None:
            box.put(msg)

    def pull_content(self, content_id: str, size: int, sha256: str) -> Content:
        chunks = self.stub.PullContent(
            cpb.PullContentRequest(selector_id=self.core.selector_id, token=self.token, content_id=content_id),
            timeout=TRANSFER_DEADLINE,
        )
        return assemble(size, sha256, (c.data for c in chunks))

    def fetch_fab(self) -> bytes:
        run = self.core.run
        chunks = self.stub.GetFab(
            cpb.GetFabRequest(selector_id=self.core.selector_id, token=self.token), timeout=TRANSFER_DEADLINE
        )
        return bytes(assemble(run.fab_size if run else 0, run.fab_sha256 if run else "", (c.data for c in chunks)))

    def push_result(self, header: cpb.ResultHeader, content: WireContent | Iterator[bytes]) -> cpb.PushResultResponse:
        header.selector_id = self.core.selector_id
        header.token = self.token
        chunks = iter_chunks(content) if isinstance(content, (bytes, bytearray, memoryview, Segments)) else content

        def parts() -> Iterator[cpb.ResultPart]:
            yield cpb.ResultPart(header=header)
            for chunk in chunks:
                # A client's chunk arrives as a view of its part (`chunkwire`); protobuf takes bytes.
                yield cpb.ResultPart(chunk=payload_pb2.Chunk(data=chunk if isinstance(chunk, bytes) else bytes(chunk)))

        response: cpb.PushResultResponse = self.stub.PushResult(parts(), timeout=TRANSFER_DEADLINE)
        return response

    # ---- the Attach loop ------------------------------------------------------------------

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name="coordinator-link", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        box = self._outbox
        if box is not None:
            box.put(None)

    def _loop(self) -> None:
        backoff = 0.2
        # A refusal that will not go away by itself is logged as an error once, then once a
        # minute while it lasts, not at every retry.
        said, said_at, repeats = "", 0.0, 0
        while not self._stop.is_set():
            try:
                self._attach_once()
                backoff = 0.2
                said = ""
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                details = (exc.details() if hasattr(exc, "details") else None) or ""
                problem = tls_problem(details) if self.tls else None
                refusal = (
                    "coordinator refused this selector's token"
                    if code == grpc.StatusCode.UNAUTHENTICATED
                    else "TLS to the coordinator failed; retrying"
                    if problem is not None
                    else ""
                )
                if refusal:
                    now = time.monotonic()
                    repeats = repeats + 1 if refusal == said else 0
                    if refusal != said or now - said_at >= 60:
                        extra = {"target": self.target, "detail": details, "retries": repeats}
                        log.error(refusal, extra={**extra, "reason": problem} if problem else extra)
                        said, said_at = refusal, now
                else:
                    log.info(
                        "coordinator unreachable; retrying",
                        extra={"target": self.target, "code": str(code), "detail": details},
                    )
            self.connected.clear()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _attach_once(self) -> None:
        box: queue.Queue[cpb.SelectorMessage | None] = queue.Queue()
        box.put(
            cpb.SelectorMessage(
                hello=cpb.Hello(selector_id=self.core.selector_id, token=self.token, nodes=self.core.hello_nodes())
            )
        )
        self._outbox = box

        def requests() -> Iterator[cpb.SelectorMessage]:
            while True:
                try:
                    item = box.get(timeout=15.0)
                except queue.Empty:
                    item = cpb.SelectorMessage(heartbeat=cpb.Heartbeat())
                if item is None:
                    return
                yield item

        call = self.stub.Attach(requests())
        try:
            for msg in call:
                kind = msg.WhichOneof("msg")
                if kind == "welcome":
                    self.core.on_welcome(msg.welcome)
                    self.connected.set()
                elif kind == "instructions":
                    self.core.on_instructions(msg.instructions)
                elif kind == "flush":
                    self.core.on_flush(msg.flush.batch_id)
                elif kind == "cancel":
                    self.core.on_cancel(msg.cancel.message_ids, msg.cancel.reason)
                elif kind == "finished":
                    status = (
                        from_proto(cpb.RunStatus, msg.finished.status) or "finished"
                    )  # older coordinators: no status
                    self.core.on_run_finished(msg.finished.reason or f"run {status}", status)
                elif kind == "participants":
                    self.core.on_participants(msg.participants)
        finally:
            self._outbox = None
            box.put(None)
            call.cancel()
