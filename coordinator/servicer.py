"""gRPC adapter for selectors: proto in, Hub calls, proto out."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Iterator

import grpc

from coordinator.hub import Hub, Result
from fedota_common.fab import App
from fedota_common.grpcutil import abort
from fedota_common.metrics import CoordinatorMetrics
from fedota_common.payload import Assembler, PayloadError, iter_chunks
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.coordinator.v1 import coordinator_pb2_grpc
from protos.payload.v1 import payload_pb2

log = logging.getLogger(__name__)


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(
        self,
        hub: Hub,
        app: App,
        run_id: int,
        run_config_json: str,
        token: str,
        *,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self.hub = hub
        self.metrics = metrics
        self.app = app
        self.welcome = cpb.Welcome(
            run_id=run_id,
            fab_sha256=app.sha256,
            fab_size=len(app.content),
            run_config_json=run_config_json,
        )
        self.token = token

    def _check_token(self, token: str, context: grpc.ServicerContext) -> None:
        # An empty token only with --insecure (main() refuses it otherwise): no check then.
        if self.token and not hmac.compare_digest(token.encode(), self.token.encode()):
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "invalid selector token")

    def Attach(
        self, request_iterator: Iterator[cpb.SelectorMessage], context: grpc.ServicerContext
    ) -> Iterator[cpb.CoordinatorMessage]:
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        if first.WhichOneof("msg") != "hello":
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        self._check_token(first.hello.token, context)
        selector_id = first.hello.selector_id
        link = self.hub.attach(selector_id, [(n.node_id, n.display_name, n.participant) for n in first.hello.nodes])
        log.info("selector attached", extra={"selector": selector_id, "nodes": len(first.hello.nodes)})

        def read() -> None:
            try:
                for msg in request_iterator:
                    kind = msg.WhichOneof("msg")
                    if kind == "node_joined":
                        nj = msg.node_joined
                        self.hub.node_joined(selector_id, nj.node_id, nj.display_name, nj.participant)
                    elif kind == "node_left":
                        self.hub.node_left(msg.node_left.node_id, msg.node_left.reason)
                    elif kind == "progress":
                        p = msg.progress
                        self.hub.progress(p.batch_id, p.message_id, p.ok, p.detail)
                    elif kind == "roster_request" and self.hub.on_roster_request is not None:
                        self.hub.on_roster_request()
                    elif kind == "site_privacy" and self.hub.on_privacy is not None:
                        self.hub.on_privacy(msg.site_privacy)
            except grpc.RpcError:
                pass
            finally:
                link.outbox.put(None)

        reader = threading.Thread(target=read, name=f"attach-{selector_id}", daemon=True)
        reader.start()
        try:
            yield cpb.CoordinatorMessage(welcome=self.welcome)
            ended = self.hub.ended
            if ended is not None:
                yield ended
            while context.is_active():
                item = link.outbox.get()
                if item is None:
                    break
                yield item
        finally:
            self.hub.detach(link)
            log.info("selector detached", extra={"selector": selector_id})

    def PullContent(
        self, request: cpb.PullContentRequest, context: grpc.ServicerContext
    ) -> Iterator[payload_pb2.Chunk]:
        self._check_token(request.token, context)
        data = self.hub.content(request.content_id)
        if data is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"content {request.content_id} is gone (round closed)")
        for chunk in iter_chunks(data):
            if self.metrics is not None:
                self.metrics.sent.inc(len(chunk))
            yield payload_pb2.Chunk(data=chunk)

    def PushResult(
        self, request_iterator: Iterator[cpb.ResultPart], context: grpc.ServicerContext
    ) -> cpb.PushResultResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the first part must be the header")
        header = first.header
        self._check_token(header.token, context)
        try:
            asm = Assembler(
                header.payload.content_size, header.payload.content_sha256, limit=self.hub.reply_limit(header.batch_id)
            )
            for part in request_iterator:
                data = part.chunk.data  # read once: each read of a bytes field is a copy of it
                asm.add(data)
                if self.metrics is not None:
                    self.metrics.received.inc(len(data))
            content = asm.finish()
        except PayloadError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except grpc.RpcError:
            # The selector gave up on the upload (its client's stream broke off): nothing is stored.
            abort(context, grpc.StatusCode.CANCELLED, "the upload ended before the content was complete")
        result = Result(
            selector_id=header.selector_id,
            header=header.payload,
            content=content,
            message_ids=list(header.message_ids),
            node_ids=list(header.node_ids),
            weight=header.total_weight,
            aggregate=header.aggregation == cpb.AGGREGATION_WEIGHTED_MEAN,
        )
        problem = self.hub.check_result(result, header.batch_id)
        if problem:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        refused = self.hub.add_result(result, header.batch_id)
        if refused:
            log.info("result refused", extra={"selector": header.selector_id, "reason": refused})
        return cpb.PushResultResponse(accepted=not refused, detail=refused)

    def GetFab(self, request: cpb.GetFabRequest, context: grpc.ServicerContext) -> Iterator[payload_pb2.Chunk]:
        self._check_token(request.token, context)
        for chunk in iter_chunks(self.app.content):
            yield payload_pb2.Chunk(data=chunk)
