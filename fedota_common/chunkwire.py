"""Chunk parts framed and read by hand between clients and selectors: the model's bytes copied once a side.

A task travels to a client as `TaskPart` messages and a reply back as `ResultPart`s, each
after its header a `Chunk` of up to 1 MiB. Through protobuf a chunk's bytes were copied
four times by the sender (sliced out of the model, into the `Chunk`, into the part, into
the serialised message) and three times by the receiver (parsed, `.data`, assembled), and
those copies were a quarter of a hop's CPU (`bench/transport.py` under `perf`). Here a
chunk part is framed straight from a view of the model (one copy) and read as a view of
the received message (no copy until the assembler's own). The bytes on the wire are
exactly protobuf's (a test checks them both ways), so a peer that uses the generated
classes, an older client or the load generator, is served and read the same.

A task that fits one message goes whole in its announcement on the Subscribe stream
(`inline_task_event`) to a client that asked for that when it joined: no PullTask call.
A result that fits one message goes whole in its header part (`whole_result`) to a
selector that said it reads those. At 1 MB that is about half the messages and a third of
the calls per client and round, which were most of a round's cost (gRPC's thread
hand-offs per message; bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message as ProtoMessage

from fedota_common.payload import MAX_FRAME, Segments, WireContent, iter_views, len_field
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb
from protos.selector.v1 import selector_pb2_grpc

# `TaskPart.chunk` and `ResultPart.chunk` (selector.proto); `Chunk.data` is field 1.
CHUNK_FIELD = 2
_LEN = 2  # protobuf's wire type for length-delimited fields
_DATA_TAG = bytes([(1 << 3) | _LEN])
_SELECTOR = "protos.selector.v1.Selector"
# `SelectorEvent.task` and `TaskAvailable.content`; `ResultPart.header` and `ResultHeader.content`.
_EVENT_TASK_FIELD = 2
_INLINE_CONTENT_FIELD = 4
_RESULT_HEADER_FIELD = 1
_RESULT_CONTENT_FIELD = 4

P = TypeVar("P", bound=ProtoMessage)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return -1, pos


def frame_chunk(data: bytes | memoryview, field: int = CHUNK_FIELD) -> bytes:
    """A part whose field `field` is `Chunk(data=data)`, serialised as protobuf does, in one copy of `data`."""
    n = len(data)
    inner = len_field(1, n) if n else b""
    return b"".join((len_field(field, len(inner) + n) + inner, data))


def _frame_whole(outer: int, head: bytes, field: int, content: WireContent) -> bytes | None:
    """A message whose field `outer` is `head` plus bytes field `field` = `content`, in one copy of it.

    `head` is the inner message serialised without `field`, whose number must be above all of
    head's fields (protobuf writes fields in order). None above `MAX_FRAME`, which every peer reads.
    """
    n = len(content)
    data = len_field(field, n) if n else b""
    size = len(head) + len(data) + n
    prefix = len_field(outer, size)
    if len(prefix) + size > MAX_FRAME:
        return None
    parts = content.parts if isinstance(content, Segments) else [content]
    return b"".join((prefix, head, data, *parts))


def inline_task_event(task_id: str, header: payload_pb2.PayloadHeader, content: WireContent) -> bytes | None:
    """`SelectorEvent(task=TaskAvailable(...))` with the task's header and content, in one copy of it.

    None when the event would not fit one message: such a task is announced without its
    content and pulled.
    """
    head = spb.TaskAvailable(task_id=task_id, content_size=len(content), header=header).SerializeToString()
    return _frame_whole(_EVENT_TASK_FIELD, head, _INLINE_CONTENT_FIELD, content)


def whole_result(
    session_id: str, task_id: str, header: payload_pb2.PayloadHeader, content: WireContent
) -> bytes | None:
    """`ResultPart(header=ResultHeader(..., content=content))`: a result in one message, one copy of it.

    None when it would not fit one message: such a result is sent as chunks after its header.
    """
    head = spb.ResultHeader(session_id=session_id, task_id=task_id, payload=header).SerializeToString()
    return _frame_whole(_RESULT_HEADER_FIELD, head, _RESULT_CONTENT_FIELD, content)


def result_parts(
    session_id: str, task_id: str, header: payload_pb2.PayloadHeader, content: WireContent, *, whole: bool
) -> Iterator[spb.ResultPart | bytes]:
    """A client's PushResult stream for one result.

    Whole in its header part (`whole_result`) where the selector said it reads those
    (`whole`: `JoinResponse.inline_results`) and it fits one message; otherwise the header
    part, then the chunks, each framed from a view of the content (`frame_chunk`).
    """
    part = whole_result(session_id, task_id, header, content) if whole else None
    if part is not None:
        yield part
        return
    yield spb.ResultPart(header=spb.ResultHeader(session_id=session_id, task_id=task_id, payload=header))
    for view in iter_views(content):
        yield frame_chunk(view)


def chunk_view(raw: bytes, field: int = CHUNK_FIELD) -> memoryview | None:
    """The data of a part that is one chunk and nothing else, as a view of `raw`; None for any other part."""
    buf = memoryview(raw)
    if not len(buf) or buf[0] != (field << 3) | _LEN:
        return None
    size, pos = _read_varint(buf, 1)
    if size < 0 or pos + size != len(buf):
        return None
    if size == 0:
        return buf[pos:pos]
    if buf[pos] != _DATA_TAG[0]:
        return None
    n, start = _read_varint(buf, pos + 1)
    if n < 0 or start + n != len(buf):
        return None
    return buf[start:]


def part_reader(cls: type[P]) -> Callable[[bytes], memoryview | P]:
    """A gRPC deserializer: chunk parts as views, anything else parsed as `cls` (the header)."""

    def read(raw: bytes) -> memoryview | P:
        view = chunk_view(raw)
        return view if view is not None else cls.FromString(raw)

    return read


def serialize_part(part: bytes | ProtoMessage) -> bytes:
    """A gRPC serializer for a stream of framed chunks (bytes) and parts built as messages."""
    return part if isinstance(part, bytes) else part.SerializeToString()


def chunk_data(part: memoryview | ProtoMessage) -> memoryview | bytes | None:
    """A part's chunk bytes, or None when it is not a chunk (a header).

    Part readers give a chunk as a view of the received message, any other part parsed.
    """
    if isinstance(part, memoryview):
        return part
    if part.WhichOneof("part") == "chunk":  # a chunk protobuf serialised otherwise (e.g. with unknown fields)
        data: bytes = part.chunk.data
        return data
    return None


def selector_stub(channel: grpc.Channel) -> selector_pb2_grpc.SelectorStub:
    """The generated stub, with PullTask read and PushResult sent through the chunk framing."""
    stub = selector_pb2_grpc.SelectorStub(channel)
    stub.PullTask = channel.unary_stream(  # type: ignore[method-assign]
        f"/{_SELECTOR}/PullTask",
        request_serializer=spb.PullTaskRequest.SerializeToString,
        response_deserializer=part_reader(spb.TaskPart),
    )
    stub.PushResult = channel.stream_unary(  # type: ignore[method-assign]
        f"/{_SELECTOR}/PushResult",
        request_serializer=serialize_part,
        response_deserializer=spb.PushResultResponse.FromString,
    )
    return stub


class _Handlers:
    """Stands in for a server to catch the handlers the generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, _service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def add_selector_servicer(servicer: selector_pb2_grpc.SelectorServicer, server: grpc.Server) -> None:
    """Register the selector's servicer as the generated code does; PullTask, PushResult and inline
    tasks in Subscribe framed by hand."""
    caught = _Handlers()
    selector_pb2_grpc.add_SelectorServicer_to_server(servicer, caught)
    handlers = caught.handlers
    handlers["PullTask"] = handlers["PullTask"]._replace(response_serializer=serialize_part)
    handlers["Subscribe"] = handlers["Subscribe"]._replace(response_serializer=serialize_part)
    handlers["PushResult"] = handlers["PushResult"]._replace(request_deserializer=part_reader(spb.ResultPart))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SELECTOR, handlers),))
    server.add_registered_method_handlers(_SELECTOR, handlers)
