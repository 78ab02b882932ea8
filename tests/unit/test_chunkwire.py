"""Chunk parts framed by hand are protobuf's own bytes, and read back from either."""

from __future__ import annotations

import os

import grpc
import pytest

from fedota_common.chunkwire import (
    add_selector_servicer,
    chunk_data,
    chunk_view,
    frame_chunk,
    inline_task_event,
    part_reader,
    result_parts,
    serialize_part,
    whole_result,
)
from fedota_common.payload import CHUNK_SIZE, MAX_FRAME, Segments, iter_chunks, iter_views
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb
from selector.core import SelectorCore
from selector.servicer import FabSource, SelectorServicer

SIZES = [0, 1, 127, 128, 300, 16_383, 16_384, CHUNK_SIZE - 1, CHUNK_SIZE]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cls", [spb.TaskPart, spb.ResultPart, cpb.ResultPart])
def test_a_framed_chunk_is_what_protobuf_serialises(size: int, cls: type) -> None:
    data = os.urandom(size)
    expected = cls(chunk=payload_pb2.Chunk(data=data)).SerializeToString()
    assert frame_chunk(data) == expected
    assert frame_chunk(memoryview(data)) == expected
    assert cls.FromString(frame_chunk(data)).chunk.data == data
    view = chunk_view(expected)
    assert isinstance(view, memoryview) and bytes(view) == data


def test_a_header_or_an_odd_part_is_parsed_whole() -> None:
    header = spb.TaskPart(header=payload_pb2.PayloadHeader(metadata=b"m", content_size=3)).SerializeToString()
    assert chunk_view(header) is None
    read = part_reader(spb.TaskPart)(header)
    assert isinstance(read, spb.TaskPart) and read.header.content_size == 3 and chunk_data(read) is None
    # A chunk with a field this code does not know falls back to protobuf's parser.
    odd = frame_chunk(b"abc")[:-3] + b"abc" + b"\x18\x05"
    assert chunk_view(odd) is None
    parsed = part_reader(spb.TaskPart)(odd)
    assert isinstance(parsed, spb.TaskPart) and chunk_data(parsed) == b"abc"
    # Truncated or overlong lengths are never read as a chunk.
    assert chunk_view(frame_chunk(b"abcdef")[:-1]) is None
    assert chunk_view(frame_chunk(b"abc") + b"x") is None
    assert chunk_view(b"") is None


def test_parts_are_serialised_as_given() -> None:
    framed = frame_chunk(b"xyz")
    assert serialize_part(framed) is framed
    header = spb.ResultPart(header=spb.ResultHeader(session_id="s"))
    assert serialize_part(header) == header.SerializeToString()


def test_views_cover_the_content_as_chunks_do() -> None:
    parts = [os.urandom(CHUNK_SIZE + 5), os.urandom(3), os.urandom(2 * CHUNK_SIZE)]
    segments = Segments(parts)
    assert [bytes(v) for v in iter_views(segments)] == list(iter_chunks(segments))
    whole = b"".join(parts)
    assert [bytes(v) for v in iter_views(whole)] == list(iter_chunks(whole))
    assert any(isinstance(v, memoryview) for v in iter_views(segments))


def test_the_selector_registers_framed_pull_and_push() -> None:
    core = SelectorCore("sel", None)  # type: ignore[arg-type]
    captured: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    class Server:
        def add_generic_rpc_handlers(self, _handlers: object) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            captured[service] = handlers

    add_selector_servicer(SelectorServicer(core, FabSource(core, bytes)), Server())  # type: ignore[arg-type]
    handlers = captured["protos.selector.v1.Selector"]
    assert handlers["PullTask"].response_serializer is serialize_part
    raw = frame_chunk(b"data")
    assert bytes(handlers["PushResult"].request_deserializer(raw)) == b"data"
    # The others are the generated ones.
    assert handlers["Join"].request_deserializer == spb.JoinRequest.FromString


@pytest.mark.parametrize("size", [0, 1, 300, CHUNK_SIZE, CHUNK_SIZE + 4096])
def test_an_inline_task_is_what_protobuf_serialises(size: int) -> None:
    content = os.urandom(size)
    header = payload_pb2.PayloadHeader(metadata=b"m" * 200, content_size=size, content_sha256="ab" * 32)
    wire = inline_task_event("t-1", header, content)
    built = spb.SelectorEvent(task=spb.TaskAvailable(task_id="t-1", content_size=size, header=header, content=content))
    assert wire == built.SerializeToString()
    assert spb.SelectorEvent.FromString(wire) == built


def test_an_inline_task_that_would_not_fit_one_message_is_not_made() -> None:
    header = payload_pb2.PayloadHeader(content_size=MAX_FRAME)
    assert inline_task_event("t-1", header, bytes(MAX_FRAME)) is None
    # The header counts as well: what every client reads is at most MAX_FRAME bytes.
    fits = MAX_FRAME - 64
    assert inline_task_event("t-1", payload_pb2.PayloadHeader(), bytes(fits)) is not None
    assert inline_task_event("t-1", payload_pb2.PayloadHeader(metadata=b"m" * 200), bytes(fits)) is None


@pytest.mark.parametrize("size", [0, 1, 300, CHUNK_SIZE + 4096])
def test_a_whole_result_is_what_protobuf_serialises_from_bytes_or_segments(size: int) -> None:
    content = os.urandom(size)
    header = payload_pb2.PayloadHeader(metadata=b"m" * 200, content_size=size)
    built = spb.ResultPart(header=spb.ResultHeader(session_id="s", task_id="t-1", payload=header, content=content))
    for given in (content, Segments([content[:7], memoryview(content)[7:]])):
        assert whole_result("s", "t-1", header, given) == built.SerializeToString()
    assert whole_result("s", "t-1", header, bytes(MAX_FRAME)) is None


@pytest.mark.parametrize(("size", "whole"), [(300, True), (300, False), (MAX_FRAME, True)])
def test_a_result_goes_whole_only_where_the_selector_reads_it_so_and_it_fits(size: int, whole: bool) -> None:
    content = os.urandom(size)
    header = payload_pb2.PayloadHeader(content_size=size)
    parts = list(result_parts("s", "t-1", header, content, whole=whole))
    if whole and size < MAX_FRAME:
        assert parts == [whole_result("s", "t-1", header, content)]
        return
    # The header part, then the content in chunks of at most CHUNK_SIZE, as protobuf frames them.
    assert parts[0] == spb.ResultPart(header=spb.ResultHeader(session_id="s", task_id="t-1", payload=header))
    assert parts[1:] == [frame_chunk(view) for view in iter_views(content)]
    assert b"".join(bytes(chunk_view(p) or b"") for p in parts[1:]) == content
