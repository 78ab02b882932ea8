"""Flower Messages survive the trip through our chunked payloads."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Metadata, MetricRecord, RecordDict
from flwr.app.message import make_message

from fedota_common.payload import (
    CHUNK_SIZE,
    Assembler,
    PayloadError,
    assemble,
    decode_content,
    iter_chunks,
    message_to_payload,
    payload_to_message,
)


def _message(size_floats: int) -> object:
    md = Metadata(
        run_id=3,
        message_id="m1",
        src_node_id=1,
        dst_node_id=42,
        reply_to_message_id="",
        group_id="2",
        created_at=time.time(),
        ttl=30.0,
        message_type="train",
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.arange(size_floats, dtype=np.float32))}),
            "config": ConfigRecord({"lr": 0.1, "name": "x", "blob": b"\x00\x01"}),
            "metrics": MetricRecord({"num-examples": 12}),
        }
    )
    return make_message(metadata=md, content=content)


def test_message_round_trip_across_many_chunks() -> None:
    msg = _message(900_000)  # 3.6 MB: four chunks
    payload = message_to_payload(msg)  # type: ignore[arg-type]
    chunks = list(iter_chunks(payload.content))
    assert len(chunks) == 4 and all(len(c) <= CHUNK_SIZE for c in chunks)
    content = assemble(payload.header.content_size, payload.header.content_sha256, chunks)
    back = payload_to_message(payload.header, content)
    assert back.metadata.dst_node_id == 42 and back.metadata.group_id == "2"
    np.testing.assert_array_equal(back.content["arrays"]["w"].numpy(), np.arange(900_000, dtype=np.float32))
    assert back.content["config"]["blob"] == b"\x00\x01"


def test_truncated_content_is_refused() -> None:
    asm = Assembler(10, "")
    asm.add(b"12345")
    with pytest.raises(PayloadError, match="truncated: got 5 of 10"):
        asm.finish()


def test_more_bytes_than_announced_are_refused() -> None:
    asm = Assembler(4, "")
    with pytest.raises(PayloadError, match="more than the announced 4 bytes"):
        asm.add(b"12345")


def test_oversized_chunk_is_refused() -> None:
    asm = Assembler(CHUNK_SIZE * 2, "")
    with pytest.raises(PayloadError, match="exceeds"):
        asm.add(b"x" * (CHUNK_SIZE + 1))


def test_announced_size_over_the_limit_is_refused_before_buffering() -> None:
    with pytest.raises(PayloadError, match="exceeds the limit"):
        Assembler(1 << 40, "")


def test_checksum_mismatch_is_refused() -> None:
    asm = Assembler(3, "0" * 64)
    asm.add(b"abc")
    with pytest.raises(PayloadError, match="checksum"):
        asm.finish()


def test_garbage_content_gives_a_clear_error() -> None:
    with pytest.raises(PayloadError, match="not a valid Flower RecordDict"):
        decode_content(b"\xff\xff\xff\xff")


def test_content_encoding_is_byte_identical_to_flowers_serde() -> None:
    from flwr.common.serde import recorddict_to_proto

    from fedota_common.payload import encode_content

    content = RecordDict(
        {
            "model": ArrayRecord(
                {
                    "a": Array(np.arange(12, dtype=np.float32).reshape(3, 4)),
                    "b": Array(np.array([1, 2], dtype=np.int64)),
                    "scalar": Array(np.array(3.5, dtype=np.float64)),
                }
            ),
            "empty": ArrayRecord(),
            "metrics": MetricRecord({"num-examples": 7, "loss": 0.25, "hist": [1.0, 2.0], "counts": [1, 2]}),
            "config": ConfigRecord({"lr": 0.1, "name": "x", "flag": True, "blob": b"\x00", "ids": [1, 2]}),
        }
    )
    assert encode_content(content) == recorddict_to_proto(content).SerializeToString()
    assert (
        decode_content(encode_content(content))["model"]["a"].numpy().tolist() == content["model"]["a"].numpy().tolist()
    )
