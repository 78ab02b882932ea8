"""Flower Message <-> (header, content bytes) and bounded chunking.

A Flower Message crosses every hop as a `PayloadHeader` (Flower's own serialised
Metadata and Error) and the serialised RecordDict cut into chunks of at most
`CHUNK_SIZE` bytes. Nothing here depends on gRPC message size limits.

Large models are never copied whole on the way: senders stream `Segments` that
reference the arrays' own bytes, and receivers parse the assembled buffer in
place (`parse_content`), copying each array at most once.
"""

from __future__ import annotations

import gc
import hashlib
import io
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.common.serde import (
    config_record_from_proto,
    config_record_to_proto,
    metric_record_from_proto,
    metric_record_to_proto,
)
from flwr.common.serde_utils import (
    error_from_proto,
    error_to_proto,
    metadata_from_proto,
    metadata_to_proto,
)
from flwr.proto.error_pb2 import Error as ProtoError
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.proto.recorddict_pb2 import Array as ProtoArray
from flwr.proto.recorddict_pb2 import ConfigRecord as ProtoConfigRecord
from flwr.proto.recorddict_pb2 import MetricRecord as ProtoMetricRecord
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from protos.payload.v1 import payload_pb2

CHUNK_SIZE = 1 << 20
# gRPC frames carry one chunk plus a small header; keep the channel limit just
# above that so an oversized frame is refused rather than buffered.
MAX_FRAME = CHUNK_SIZE + (64 << 10)
# A content larger than this is refused before any byte is buffered.
MAX_CONTENT_SIZE = 4 << 30
# A train or evaluate reply returns the model it was sent (or less) plus metrics:
# it may exceed its instruction by this much, no more. Without the bound one
# client could make a selector or the coordinator set aside 4 GiB for a 1 MB model.
MAX_REPLY_OVERHEAD = 64 << 20


# Below this, a payload's memory is not worth a garbage-collector pass.
COLLECT_ABOVE = 16 << 20


def release_cycles(nbytes: int) -> None:
    """Run the cyclic garbage collector after handling a payload of `nbytes`.

    Once an app or strategy reads `content.array_records` (they all do), a
    Flower RecordDict and its typed view point at each other: refcounting never
    frees the pair, only the cyclic collector does, and between rounds too few
    allocations happen to trigger it. Without this a process holds the previous
    round's model (and replies) next to the current one.
    """
    if nbytes >= COLLECT_ABOVE:
        gc.collect()


# Content as received: assembled buffers are handed over without a copy (a memoryview of
# the buffer the chunks were gathered in).
Content = bytes | bytearray | memoryview
# A buffer a Segments part may be: bytes, or a view of an array's memory.
Buffer = bytes | bytearray | memoryview

# The npy stype Flower uses for numpy arrays (`flwr.common.constant.SType.NUMPY`).
NUMPY_STYPE = "numpy.ndarray"


class PayloadError(ValueError):
    """A payload was malformed, truncated, too large or failed its checksum."""


class RejectedReply(PayloadError):
    """A reply that must not reach an aggregate; `reason` names the check it failed, for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def reply_size_limit(instruction_size: int, message_type: str, *, sends_arrays: bool) -> int:
    """The most bytes a reply to an instruction of `instruction_size` bytes may declare.

    Only train and evaluate replies to an instruction that sends arrays are
    bounded by it: other messages (e.g. the legacy workflow asking one client
    for its initial parameters) may legitimately answer a small question with
    a whole model.
    """
    if sends_arrays and message_type in (MessageType.TRAIN, MessageType.EVALUATE):
        return min(MAX_CONTENT_SIZE, instruction_size + MAX_REPLY_OVERHEAD)
    return MAX_CONTENT_SIZE


def check_header(metadata: bytes, error: bytes) -> None:
    """Refuse a reply header whose Flower Metadata or Error does not decode.

    The coordinator decodes both when it hands the reply to the ServerApp, so a
    header that fails there would fail the whole run.
    """
    try:
        metadata_from_proto(ProtoMetadata.FromString(metadata))
    except Exception as exc:  # noqa: BLE001 - DecodeError, bad values: all mean the same to the sender
        raise RejectedReply("malformed", f"the result header's metadata is not a Flower Metadata: {exc}") from exc
    if error:
        try:
            error_from_proto(ProtoError.FromString(error))
        except Exception as exc:  # noqa: BLE001 - as above
            raise RejectedReply("malformed", f"the result header's error is not a Flower Error: {exc}") from exc


def _nbytes(buf: Buffer) -> int:
    return len(buf) if isinstance(buf, (bytes, bytearray)) else buf.nbytes


class Segments:
    """A serialised content held as the list of buffers it is made of.

    Encoding a RecordDict this way references each array's bytes instead of
    copying them into one buffer, so a sender holds the model once (its own
    arrays), not two or three times, and streams it chunk by chunk.
    """

    def __init__(self, parts: Iterable[Buffer]) -> None:
        self.parts: list[bytes | memoryview] = []
        for part in parts:
            if not _nbytes(part):
                continue
            self.parts.append(part if isinstance(part, bytes) else memoryview(part).cast("B"))
        self.size = sum(len(p) for p in self.parts)

    def __len__(self) -> int:
        return self.size

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for part in self.parts:
            digest.update(part)
        return digest.hexdigest()

    def chunks(self, chunk_size: int = CHUNK_SIZE, *, views: bool = False) -> Iterator[bytes | memoryview]:
        """Chunks of at most `chunk_size` bytes; only one chunk is materialised at a time.

        `views`: a chunk that lies whole in one segment is a view of it, not a copy.
        """
        pending = bytearray()
        for part in self.parts:
            view = memoryview(part)
            pos = 0
            while pos < len(view):
                take = min(chunk_size - len(pending), len(view) - pos)
                if not pending and take == chunk_size:
                    yield view[pos : pos + take] if views else bytes(view[pos : pos + take])
                else:
                    pending += view[pos : pos + take]
                    if len(pending) == chunk_size:
                        yield bytes(pending)
                        pending = bytearray()
                pos += take
        if pending:
            yield bytes(pending)

    def tobytes(self) -> bytes:
        return b"".join(self.parts)


# What a sender streams: one buffer, or segments referencing the arrays.
WireContent = bytes | bytearray | memoryview | Segments


@dataclass(frozen=True)
class Payload:
    """A Flower Message split into its wire parts."""

    header: payload_pb2.PayloadHeader
    content: WireContent


# ---- protobuf wire format, by hand where arrays are involved ---------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def len_field(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(length)


def _str_field(number: int, text: str) -> bytes:
    # proto3 leaves out empty strings.
    raw = text.encode()
    return len_field(number, len(raw)) + raw if raw else b""


def npy_header(array: np.ndarray[Any, Any]) -> bytes:
    """The .npy header `np.save` writes before a C-contiguous array's bytes."""
    fields = np.lib.format.header_data_from_array_1_0(array)
    out = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(out, fields)
    except ValueError:  # header longer than 64 KiB: np.save moves to version 2.0
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, fields)
    return out.getvalue()


def _npy_parts(array: np.ndarray[Any, Any]) -> list[Buffer]:
    """What `np.save` writes for `array`: its header, then its memory in storage order."""
    if array.flags.c_contiguous:
        flat = array.reshape(-1)
    elif array.flags.f_contiguous:
        flat = array.T.reshape(-1)
    else:
        array = np.array(array, order="C")
        flat = array.reshape(-1)
    return [npy_header(array), flat.view(np.uint8).data]


def _array_parts(name: str, dtype: str, shape: Iterable[int], stype: str, data: list[Buffer]) -> list[Buffer]:
    """An `ArrayRecord.Item` (name, Array) as buffers; `data` is referenced, not copied."""
    head = ProtoArray(dtype=dtype, shape=list(shape), stype=stype).SerializeToString()
    size = sum(_nbytes(d) for d in data)
    # `data` is field 4, the last one, so appending it after the other fields
    # gives the bytes protobuf itself would write.
    data_head = len_field(4, size) if size else b""
    value_len = len(head) + len(data_head) + size
    prefix = _str_field(1, name) + len_field(2, value_len)
    return [len_field(1, len(prefix) + value_len), prefix, head, data_head, *data]


ArraySource = Array | np.ndarray
RecordSource = ArrayRecord | MetricRecord | ConfigRecord | Mapping[str, ArraySource]


def encode_segments(content: RecordDict | Iterable[tuple[str, RecordSource]]) -> Segments:
    """Serialise a RecordDict as `encode_content` does, referencing array bytes.

    Array records may also be plain mappings of name to numpy array: those
    are written as Flower's `Array(ndarray)` would be (npy bytes), straight
    from the array's memory.
    """
    items = content.items() if isinstance(content, RecordDict) else content
    parts: list[Buffer] = []
    for key, record in items:
        if isinstance(record, (MetricRecord, ConfigRecord)):
            item = ProtoRecordDict.Item(key=key)
            if isinstance(record, MetricRecord):
                item.metric_record.CopyFrom(metric_record_to_proto(record))
            else:
                item.config_record.CopyFrom(config_record_to_proto(record))
            raw = item.SerializeToString()
            parts += [len_field(1, len(raw)), raw]
            continue
        if not isinstance(record, Mapping):
            raise ValueError(f"Unsupported record type: {type(record)}")
        rec_parts: list[Buffer] = []
        for name, array in record.items():
            if isinstance(array, np.ndarray):
                rec_parts += _array_parts(name, str(array.dtype), array.shape, NUMPY_STYPE, _npy_parts(array))
            elif isinstance(array, Array):
                rec_parts += _array_parts(name, array.dtype, array.shape, array.stype, [array.data])
            else:
                raise ValueError(f"Unsupported array type: {type(array)}")
        rec_len = sum(_nbytes(p) for p in rec_parts)
        prefix = _str_field(1, key) + len_field(2, rec_len)
        parts += [len_field(1, len(prefix) + rec_len), prefix, *rec_parts]
    return Segments(parts)


def encode_content(content: RecordDict) -> bytes:
    """Serialise a RecordDict to Flower's `RecordDict` proto bytes, as one buffer.

    Produces exactly what `recorddict_to_proto(content).SerializeToString()`
    does (a test checks byte equality). Senders should prefer
    `encode_segments`, which does not copy the arrays at all.
    """
    return encode_segments(content).tobytes()


def message_to_payload(message: Message) -> Payload:
    """Split a Flower Message into header and content (array bytes referenced, not copied)."""
    content: WireContent = encode_segments(message.content) if message.has_content() else b""
    header = payload_pb2.PayloadHeader(
        metadata=metadata_to_proto(message.metadata).SerializeToString(),
        error=(error_to_proto(message.error).SerializeToString() if message.has_error() else b""),
        content_size=len(content),
        content_sha256=content_digest(content),
    )
    return Payload(header=header, content=content)


def content_sha256(content: WireContent) -> str:
    if isinstance(content, Segments):
        return content.sha256()
    return hashlib.sha256(content).hexdigest()


# Whether the contents this process sends carry their SHA-256 (`send_digests`).
_SEND_DIGESTS = [True]


def send_digests(enabled: bool) -> None:
    """Say whether this process's senders hash what they send; a service calls it once at start.

    A header's `content_sha256` guards a content against corruption on its way, and every
    receiver checks it when it is there. Over TLS it adds nothing: every TLS record carries
    its own authentication tag (AES-GCM or ChaCha20-Poly1305), so a byte changed on the way
    fails the record and the stream, and the hash was never a proof of origin (whoever sends
    a content computes its hash). It cost one SHA-256 pass per sender and per receiver of
    every content, 37 passes over the model per round with 10 clients and 2 selectors: a
    quarter of a 100 MB round's CPU. So a service whose links all use TLS sends no hash;
    one with a plaintext link (`--insecure`, development) hashes everything it sends.
    """
    _SEND_DIGESTS[0] = enabled


def content_digest(content: WireContent) -> str:
    """The `content_sha256` to send with `content`: its SHA-256, or "" (not hashed) as `send_digests` says."""
    return content_sha256(content) if _SEND_DIGESTS[0] and len(content) else ""


def payload_to_message(
    header: payload_pb2.PayloadHeader,
    content: WireContent,
    *,
    metadata: ProtoMetadata | None = None,
) -> Message:
    """Rebuild a Flower Message; `metadata` overrides the header's metadata."""
    md_proto = metadata if metadata is not None else ProtoMetadata.FromString(header.metadata)
    md = metadata_from_proto(md_proto)
    if header.error:
        return make_message(metadata=md, error=error_from_proto(ProtoError.FromString(header.error)))
    return make_message(metadata=md, content=decode_content(content))


@dataclass(frozen=True)
class WireArray:
    """An Array as it lies in a received buffer: `data` is a view, not a copy."""

    dtype: str
    shape: tuple[int, ...]
    stype: str
    data: memoryview


@dataclass
class WireRecords:
    """A serialised RecordDict parsed in place: arrays stay views of the buffer.

    `small` holds the metric and config records as Flower objects; `arrays`
    maps each ArrayRecord's key to its (name, WireArray) pairs, in wire order.
    """

    arrays: dict[str, list[tuple[str, WireArray]]]
    small: RecordDict
    order: list[str]


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise PayloadError("content is not a valid Flower RecordDict: truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message; length-delimited values are views."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise PayloadError("content is not a valid Flower RecordDict: field runs past its end")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise PayloadError("content is not a valid Flower RecordDict: truncated field")
            yield number, wire, buf[pos : pos + width]
            pos += width
        else:
            raise PayloadError(f"content is not a valid Flower RecordDict: wire type {wire}")


def _int32(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_array(buf: memoryview) -> WireArray:
    dtype = stype = ""
    shape: list[int] = []
    data = memoryview(b"")
    for number, wire, value in _fields(buf):
        if number == 1 and isinstance(value, memoryview):
            dtype = bytes(value).decode()
        elif number == 2 and wire == 0 and isinstance(value, int):
            shape.append(_int32(value))
        elif number == 2 and isinstance(value, memoryview):  # packed
            pos = 0
            while pos < len(value):
                dim, pos = _read_varint(value, pos)
                shape.append(_int32(dim))
        elif number == 3 and isinstance(value, memoryview):
            stype = bytes(value).decode()
        elif number == 4 and isinstance(value, memoryview):
            data = value
    return WireArray(dtype, tuple(shape), stype, data)


def parse_content(content: WireContent) -> WireRecords:
    """Parse a serialised RecordDict without copying array data (views of `content`)."""
    if isinstance(content, Segments):
        content = content.tobytes()  # an in-process hand-over (tests), not a wire path
    out = WireRecords({}, RecordDict(), [])
    try:
        for number, _wire, item in _fields(memoryview(content).cast("B")):
            if number != 1 or not isinstance(item, memoryview):
                continue  # unknown field: skipped, as protobuf does
            key, kind, body = "", 0, memoryview(b"")
            for inner, _wire, value in _fields(item):
                if inner == 1 and isinstance(value, memoryview):
                    key = bytes(value).decode()
                elif inner in (2, 3, 4) and isinstance(value, memoryview):
                    kind, body = inner, value
            if kind == 2:
                entries: list[tuple[str, WireArray]] = []
                for _n, _w, entry in _fields(body):
                    name, array = "", WireArray("", (), "", memoryview(b""))
                    if not isinstance(entry, memoryview):
                        continue
                    for field, _w2, value in _fields(entry):
                        if field == 1 and isinstance(value, memoryview):
                            name = bytes(value).decode()
                        elif field == 2 and isinstance(value, memoryview):
                            array = _parse_array(value)
                    entries.append((name, array))
                out.arrays[key] = entries
            elif kind == 3:
                out.small[key] = metric_record_from_proto(ProtoMetricRecord.FromString(bytes(body)))
            elif kind == 4:
                out.small[key] = config_record_from_proto(ProtoConfigRecord.FromString(bytes(body)))
            else:
                raise PayloadError(f"content is not a valid Flower RecordDict: record {key!r} has no value")
            out.order.append(key)
    except PayloadError:
        raise
    except Exception as exc:  # protobuf DecodeError, bad UTF-8, bad values
        raise PayloadError(f"content is not a valid Flower RecordDict: {exc}") from exc
    return out


def decode_content(content: WireContent) -> RecordDict:
    """Parse a serialised RecordDict into Flower objects.

    Each array's bytes are copied once out of `content` (Flower's Array holds
    `bytes`); protobuf's own parser would hold a second copy in its message.
    """
    wire = parse_content(content)
    out = RecordDict()
    for key in wire.order:
        if key in wire.arrays:
            out[key] = ArrayRecord(
                {name: Array(a.dtype, a.shape, a.stype, bytes(a.data)) for name, a in wire.arrays[key]},
                keep_input=False,
            )
        else:
            out[key] = wire.small[key]
    return out


def npy_view(array: WireArray) -> np.ndarray[Any, Any]:
    """A read-only numpy view of a received numpy Array's data (no copy)."""
    if array.stype != NUMPY_STYPE:
        raise PayloadError(f"array of stype {array.stype!r} is not a numpy array")
    data = array.data
    head = io.BytesIO(bytes(data[: min(len(data), 12)]))
    try:
        version = np.lib.format.read_magic(head)
        head_len = int.from_bytes(bytes(data[8:10] if version == (1, 0) else data[8:12]), "little")
        start = (10 if version == (1, 0) else 12) + head_len
        header = io.BytesIO(bytes(data[:start]))
        np.lib.format.read_magic(header)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
    except (ValueError, OSError, EOFError) as exc:
        raise PayloadError(f"array data is not a valid .npy buffer: {exc}") from exc
    if dtype.hasobject:
        raise RejectedReply(
            "not-numeric", f"array data holds Python objects (dtype {dtype}); only plain numeric arrays are accepted"
        )
    count = math.prod(shape)
    if len(data) - start != count * dtype.itemsize:
        raise PayloadError(
            f"array data does not match its .npy header: {len(data) - start} bytes for shape {shape} of {dtype}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    flat.flags.writeable = False
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def iter_chunks(data: WireContent, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield chunks of `data` of at most `chunk_size` bytes (no copy of the whole)."""
    for chunk in iter_views(data, chunk_size):
        yield chunk if isinstance(chunk, bytes) else bytes(chunk)


def iter_views(data: WireContent, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes | memoryview]:
    """Chunks of `data` of at most `chunk_size` bytes, as views where they lie whole in one buffer.

    For a sender that copies each chunk anyway (`chunkwire.frame_chunk`); a view is valid as
    long as `data` is.
    """
    if isinstance(data, Segments):
        yield from data.chunks(chunk_size, views=True)
        return
    view = memoryview(data).cast("B")
    for start in range(0, len(view), chunk_size):
        yield view[start : start + chunk_size]


class Assembler:
    """Collect chunks of a content of announced size, checking bounds and hash."""

    def __init__(self, size: int, sha256: str, *, limit: int = MAX_CONTENT_SIZE) -> None:
        if size < 0 or size > limit:
            raise PayloadError(f"content of {size} bytes exceeds the limit of {limit} bytes")
        # numpy's allocation is neither zeroed nor faulted in 4 KiB pages one by one: it asks
        # the kernel for huge pages. A 100 MB bytearray cost 0.11 s to zero and fault in before
        # the first chunk arrived (np.empty + filling it: 0.02 s), on every hop of every round.
        self._buf = np.empty(size, dtype=np.uint8)
        self._view = self._buf.data.cast("B")
        self._pos = 0
        # A content sent without its hash (over TLS, see `send_digests`) is not hashed here either.
        self._sha = hashlib.sha256() if sha256 else None
        self._expected_sha = sha256

    def add(self, data: bytes | memoryview) -> None:
        """Append one chunk."""
        if len(data) > CHUNK_SIZE:
            raise PayloadError(f"chunk of {len(data)} bytes exceeds the limit of {CHUNK_SIZE} bytes per chunk")
        end = self._pos + len(data)
        if end > len(self._buf):
            raise PayloadError(f"received more than the announced {len(self._buf)} bytes of content")
        self._view[self._pos : end] = data
        if self._sha is not None:
            self._sha.update(data)
        self._pos = end

    def finish(self) -> Content:
        """Return the content once complete and verified."""
        if self._pos != len(self._buf):
            raise PayloadError(f"content truncated: got {self._pos} of {len(self._buf)} bytes")
        if self._sha is not None and self._sha.hexdigest() != self._expected_sha:
            raise PayloadError("content checksum mismatch")
        # Hand the buffer over instead of copying it: a 1 GB model is then held once here,
        # not twice. The view keeps the buffer alive.
        data, self._view = self._view, memoryview(b"")
        self._buf = np.empty(0, dtype=np.uint8)
        return data


class Whole:
    """A content that came whole in one message (at most `MAX_FRAME`): a task in its announcement,
    a result in its header part, an instruction's content in its batch.

    It iterates as chunks (for a hop that passes it on), and `assemble` checks it and takes it
    as it is, without copying it into a buffer of its own.
    """

    def __init__(self, data: bytes, rest: Iterator[Any] | None = None, what: str = "a content sent whole") -> None:
        self.data = data
        # What followed it on its stream, which must be nothing (`check_end`).
        self.rest = rest
        self.what = what

    def __iter__(self) -> Iterator[bytes | memoryview]:
        yield from iter_views(self.data)
        self.check_end()

    def check_end(self) -> None:
        if self.rest is not None and next(self.rest, None) is not None:
            raise PayloadError(f"{self.what} takes no chunks after it")


def assemble(header_size: int, sha256: str, chunks: Iterable[bytes | memoryview]) -> Content:
    """Assemble an iterable of chunks (or a `Whole` content) into content."""
    if isinstance(chunks, Whole):
        data = chunks.data
        if len(data) != header_size:
            raise PayloadError(f"content of {len(data)} bytes where its header announced {header_size}")
        if sha256 and content_sha256(data) != sha256:
            raise PayloadError("content checksum mismatch")
        chunks.check_end()
        return data
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
