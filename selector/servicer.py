"""gRPC adapter for data-holder clients."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn

import grpc

from fedota_common.chunkwire import chunk_data, frame_chunk
from fedota_common.grpcutil import abort
from fedota_common.metrics import SelectorMetrics
from fedota_common.payload import MAX_FRAME, PayloadError, Whole, iter_chunks, iter_views
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb
from protos.selector.v1 import selector_pb2_grpc
from selector.core import InlineTask, SelectorCore, SelectorError

log = logging.getLogger(__name__)


# Trailing metadata of a Join refused because the run is over: how it ended, and why
# (UTF-8 bytes: a ServerApp's error may be any text).
RUN_STATUS_METADATA = "fedota-run-status"
RUN_REASON_METADATA = "fedota-run-reason-bin"


def _abort(context: grpc.ServicerContext, err: SelectorError) -> NoReturn:
    if err.run_status:
        context.set_trailing_metadata(
            ((RUN_STATUS_METADATA, err.run_status), (RUN_REASON_METADATA, err.run_reason.encode()))
        )
    abort(context, getattr(grpc.StatusCode, err.code), str(err))


def _source(context: grpc.ServicerContext) -> str:
    """The client's address without its port (`ipv4:10.0.0.5:41234` → `ipv4:10.0.0.5`)."""
    return context.peer().rsplit(":", 1)[0]


def _status_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """Status code and details of a failed call (a bare RpcError, e.g. a cancelled stream, has neither)."""
    if isinstance(exc, grpc.Call):
        return exc.code(), exc.details() or ""
    return None, str(exc) or type(exc).__name__


class SelectorServicer(selector_pb2_grpc.SelectorServicer):
    def __init__(self, core: SelectorCore, fab_source: FabSource, *, metrics: SelectorMetrics | None = None) -> None:
        self.core = core
        self.fab_source = fab_source
        self.metrics = metrics

    def Join(self, request: spb.JoinRequest, context: grpc.ServicerContext) -> spb.JoinResponse:
        try:
            session, run = self.core.join(
                request.credential,
                request.fab_sha256,
                request.display_name,
                source=_source(context),
                inline_tasks=request.inline_tasks,
            )
        except SelectorError as err:
            _abort(context, err)
        return spb.JoinResponse(
            session_id=session.session_id,
            node_id=session.node_id,
            run=spb.RunInfo(
                run_id=run.run_id,
                fab_sha256=run.fab_sha256,
                run_config_json=run.run_config_json,
                fab_size=run.fab_size,
            ),
            heartbeat_interval=self.core.heartbeat_interval,
            inline_results=True,
        )

    def Subscribe(
        self, request_iterator: Iterator[spb.ClientEvent], context: grpc.ServicerContext
    ) -> Iterator[spb.SelectorEvent | bytes]:
        first = next(request_iterator, None)
        if first is None:
            return
        try:
            session = self.core.session(first.session_id)
        except SelectorError as err:
            _abort(context, err)
            return
        # A killed client's stream ends here, which fails its tasks at once; the leave also
        # ends the wait on the outbox below. A stream already over gets no callback.
        if not context.add_callback(lambda: self.core.leave(session, "stream closed")):
            self.core.leave(session, "stream closed")
            return

        def read() -> None:
            try:
                for event in request_iterator:
                    session.last_seen = time.monotonic()
                    if event.WhichOneof("event") == "privacy":
                        self.core.privacy_report(session, event.privacy)
            except grpc.RpcError:
                pass
            finally:
                self.core.leave(session, "stream closed")

        threading.Thread(target=read, name=f"hb-{session.node_id}", daemon=True).start()
        self.core.subscribe(session)
        yield spb.SelectorEvent(welcome=spb.Welcome(node_id=session.node_id))
        # Blocks until an event or the session's end (leave() queues None, and the stream's end
        # calls leave): an idle session costs no wake-ups, where a 1 s poll woke every
        # session's thread each second (2,500 wake-ups a second at a selector of 2,500 clients).
        while (event := session.outbox.get()) is not None:
            if not isinstance(event, InlineTask):
                yield event
                continue
            # The task with its content (framed by hand): the client needs no PullTask for it.
            yield event.wire
            self.core.pulled(event.task)
            if self.metrics is not None:
                self.metrics.sent.inc(event.task.content_size)
                self.metrics.tasks.inc()

    def PullTask(self, request: spb.PullTaskRequest, context: grpc.ServicerContext) -> Iterator[spb.TaskPart | bytes]:
        """The task's header, then its content as chunk parts framed by hand (`chunkwire`)."""
        try:
            session = self.core.session(request.session_id)
            task, content = self.core.task_for(session, request.task_id)
        except SelectorError as err:
            _abort(context, err)
            return
        yield spb.TaskPart(
            header=payload_pb2.PayloadHeader(
                metadata=task.metadata,
                content_size=task.content_size,
                content_sha256=task.content_sha256,
            )
        )
        for view in iter_views(content):
            if self.metrics is not None:
                self.metrics.sent.inc(len(view))
            yield frame_chunk(view)
        view = content = b""  # the last references to the content here
        self.core.pulled(task)
        if self.metrics is not None:
            self.metrics.tasks.inc()

    def PushResult(
        self, request_iterator: Iterator[spb.ResultPart | memoryview], context: grpc.ServicerContext
    ) -> spb.PushResultResponse:
        """A result's header, then its chunks, read as views of the received parts (`chunkwire`)."""
        first = next(request_iterator, None)
        if not isinstance(first, spb.ResultPart) or first.WhichOneof("part") != "header":
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the first part must be the result header")
        header = first.header

        def chunks() -> Iterator[bytes | memoryview]:
            got = 0
            try:
                for part in request_iterator:
                    data = chunk_data(part)
                    if data is None:
                        raise PayloadError("only chunks may follow the header")
                    got += len(data)
                    if self.metrics is not None:
                        self.metrics.received.inc(len(data))
                    yield data
            except grpc.RpcError as exc:
                # gRPC ends the stream without saying why; its status already went to the client.
                raise PayloadError(
                    f"the upload broke off after {got} of {header.payload.content_size} bytes (cancelled, "
                    f"disconnected, or a message above the {MAX_FRAME}-byte limit)"
                ) from exc

        source: Iterable[bytes | memoryview]
        whole = header.content  # read once: each read of a bytes field is a copy of it
        if whole:  # the result came whole in its header (ResultHeader.content): folded as it is
            header.ClearField("content")  # the parsed message's copy goes; `whole` is the one kept
            source = Whole(whole, rest=request_iterator, what="a result sent whole in its header")
            if self.metrics is not None:
                self.metrics.received.inc(len(whole))
        else:
            source = chunks()
        try:
            session = self.core.session(header.session_id)
            # Chunks are read as the core consumes them: folded or passed on, never queued here.
            self.core.receive_result(session, header.task_id, header.payload, source, cancel=context.cancel)
            if self.metrics is not None:
                self.metrics.results.inc()
        except SelectorError as err:
            _abort(context, err)
        except PayloadError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except grpc.RpcError as exc:
            # The coordinator's answer to a reply passed on to it (or a broken link to it).
            code, details = _status_of(exc)
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                abort(context, code, f"the coordinator rejected this result: {details}")
            abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"the selector could not pass this result on to its coordinator ({details}); the task has failed",
            )
        return spb.PushResultResponse(accepted=True)

    def GetFab(self, request: spb.GetFabRequest, context: grpc.ServicerContext) -> Iterator[payload_pb2.Chunk]:
        try:
            self.core.session(request.session_id)
            fab = self.fab_source.get()
        except SelectorError as err:
            _abort(context, err)
            return
        for chunk in iter_chunks(fab):
            yield payload_pb2.Chunk(data=chunk)

    def Leave(self, request: spb.LeaveRequest, context: grpc.ServicerContext) -> spb.LeaveResponse:
        try:
            session = self.core.session(request.session_id)
        except SelectorError:
            return spb.LeaveResponse()
        if request.HasField("privacy"):
            self.core.privacy_report(session, request.privacy)
        self.core.leave(session, request.reason or "client left")
        return spb.LeaveResponse()


class FabSource:
    """Fetches the FAB from the coordinator once per app and caches it."""

    def __init__(self, core: SelectorCore, fetch: Callable[[], bytes]) -> None:
        self.core = core
        self._fetch = fetch
        self._lock = threading.Lock()

    def get(self) -> bytes:
        with self._lock:
            if self.core.fab is None:
                if self.core.run is None:
                    raise SelectorError("UNAVAILABLE", "no run yet")
                try:
                    self.core.fab = self._fetch()
                except grpc.RpcError as exc:
                    raise SelectorError(
                        "UNAVAILABLE", f"could not fetch the app from the coordinator: {exc.details()}"
                    ) from exc
            return self.core.fab
