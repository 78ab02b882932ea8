"""Flower Message <-> (header, content bytes) and bounded chunking.

A Flower Message crosses every hop as a `PayloadHeader` (Flower's own serialised
Metadata and Error) and the serialised RecordDict cut into chunks of at most
`CHUNK_SIZE` bytes. Nothing here depends on gRPC message size limits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.common.serde import config_record_to_proto, metric_record_to_proto, recorddict_from_proto
from flwr.common.serde_utils import (
    error_from_proto,
    error_to_proto,
    metadata_from_proto,
    metadata_to_proto,
)
from flwr.proto.error_pb2 import Error as ProtoError
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from protos.payload.v1 import payload_pb2

CHUNK_SIZE = 1 << 20
# gRPC frames carry one chunk plus a small header; keep the channel limit just
# above that so an oversized frame is refused rather than buffered.
MAX_FRAME = CHUNK_SIZE + (64 << 10)
# A content larger than this is refused before any byte is buffered.
MAX_CONTENT_SIZE = 4 << 30


# Content as received: assembled buffers are handed over without a copy.
Content = bytes | bytearray


class PayloadError(ValueError):
    """A payload was malformed, truncated, too large or failed its checksum."""


@dataclass(frozen=True)
class Payload:
    """A Flower Message split into its wire parts."""

    header: payload_pb2.PayloadHeader
    content: bytes


def encode_content(content: RecordDict) -> bytes:
    """Serialise a RecordDict to Flower's `RecordDict` proto bytes.

    Produces exactly what `recorddict_to_proto(content).SerializeToString()`
    does (a test checks byte equality), but fills array data in place: Flower's
    serde builds nested messages from sub-messages, which copies every array
    once per nesting level (five copies of a 100 MB model, ~0.8 s).
    """
    proto = ProtoRecordDict()
    for key, record in content.items():
        item = proto.items.add()
        item.key = key
        if isinstance(record, ArrayRecord):
            target = item.array_record  # marks the oneof even when empty
            target.SetInParent()
            for name, array in record.items():
                entry = target.items.add()
                entry.key = name
                entry.value.dtype = array.dtype
                entry.value.shape.extend(array.shape)
                entry.value.stype = array.stype
                entry.value.data = array.data
        elif isinstance(record, MetricRecord):
            item.metric_record.CopyFrom(metric_record_to_proto(record))
        elif isinstance(record, ConfigRecord):
            item.config_record.CopyFrom(config_record_to_proto(record))
        else:
            raise ValueError(f"Unsupported record type: {type(record)}")
    return proto.SerializeToString()


def message_to_payload(message: Message) -> Payload:
    """Split a Flower Message into header and content bytes."""
    content = encode_content(message.content) if message.has_content() else b""
    header = payload_pb2.PayloadHeader(
        metadata=metadata_to_proto(message.metadata).SerializeToString(),
        error=(error_to_proto(message.error).SerializeToString() if message.has_error() else b""),
        content_size=len(content),
        content_sha256=hashlib.sha256(content).hexdigest() if content else "",
    )
    return Payload(header=header, content=content)


def payload_to_message(
    header: payload_pb2.PayloadHeader,
    content: Content,
    *,
    metadata: ProtoMetadata | None = None,
) -> Message:
    """Rebuild a Flower Message; `metadata` overrides the header's metadata."""
    md_proto = metadata if metadata is not None else ProtoMetadata.FromString(header.metadata)
    md = metadata_from_proto(md_proto)
    if header.error:
        return make_message(metadata=md, error=error_from_proto(ProtoError.FromString(header.error)))
    return make_message(metadata=md, content=decode_content(content))


def decode_content(content: Content) -> RecordDict:
    """Parse a serialised RecordDict."""
    try:
        proto = ProtoRecordDict.FromString(content)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise PayloadError(f"content is not a valid Flower RecordDict: {exc}") from exc
    return recorddict_from_proto(proto)


def iter_chunks(data: Content, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield views of `data` of at most `chunk_size` bytes (no copy of the whole)."""
    view = memoryview(data)
    for start in range(0, len(view), chunk_size):
        yield bytes(view[start : start + chunk_size])


class Assembler:
    """Collect chunks of a content of announced size, checking bounds and hash."""

    def __init__(self, size: int, sha256: str, *, limit: int = MAX_CONTENT_SIZE) -> None:
        if size < 0 or size > limit:
            raise PayloadError(f"content of {size} bytes exceeds the limit of {limit} bytes")
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._pos = 0
        self._sha = hashlib.sha256()
        self._expected_sha = sha256

    def add(self, data: bytes) -> None:
        """Append one chunk."""
        if len(data) > CHUNK_SIZE:
            raise PayloadError(f"chunk of {len(data)} bytes exceeds {CHUNK_SIZE} bytes")
        end = self._pos + len(data)
        if end > len(self._buf):
            raise PayloadError(f"received more than the announced {len(self._buf)} bytes of content")
        self._view[self._pos : end] = data
        self._sha.update(data)
        self._pos = end

    def finish(self) -> Content:
        """Return the content once complete and verified."""
        if self._pos != len(self._buf):
            raise PayloadError(f"content truncated: got {self._pos} of {len(self._buf)} bytes")
        if self._expected_sha and self._sha.hexdigest() != self._expected_sha:
            raise PayloadError("content checksum mismatch")
        self._view.release()
        # Hand the buffer over instead of copying it (protobuf parses a
        # bytearray): a 1 GB model is then held once here, not twice.
        data, self._buf = self._buf, bytearray()
        return data


def assemble(header_size: int, sha256: str, chunks: Iterable[bytes]) -> Content:
    """Assemble an iterable of chunks into content."""
    asm = Assembler(header_size, sha256)
    for data in chunks:
        asm.add(data)
    return asm.finish()


def round_of(message: Message) -> str:
    """The server round a message belongs to.

    The compatibility workflow sets `group_id`; Message-API strategies leave it
    empty and put `server-round` in the ConfigRecord they send.
    """
    if message.metadata.group_id:
        return message.metadata.group_id
    if message.has_content():
        for rec in message.content.config_records.values():
            value = rec.get("server-round")
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
    return ""
