"""Flower Messages survive the trip through our chunked payloads."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Metadata, MetricRecord, RecordDict
from flwr.app.message import make_message

from fedota_common.payload import (
    CHUNK_SIZE,
    Assembler,
    PayloadError,
    Whole,
    assemble,
    content_digest,
    decode_content,
    iter_chunks,
    message_to_payload,
    payload_to_message,
    send_digests,
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


def _odd_arrays() -> RecordDict:
    rng = np.random.default_rng(5)
    return RecordDict(
        {
            "model": ArrayRecord(
                {
                    "w": Array(rng.random((7, 5), dtype=np.float32)),
                    "fortran": Array(np.asfortranarray(rng.random((3, 4)))),
                    "zero-size": Array(np.zeros((2, 0, 3), dtype=np.float16)),
                    "scalar": Array(np.array(2.5)),
                    "ints": Array(np.arange(9, dtype=np.int32)),
                    "": Array(np.ones(3)),
                    "opaque": Array("bfloat16", (2,), "torch.raw", b"\x01\x02\x03\x04"),
                }
            ),
            "empty": ArrayRecord(),
            "": MetricRecord({"num-examples": 3}),
            "config": ConfigRecord({"server-round": 4, "mode": "fit"}),
        }
    )


def test_segments_reference_the_arrays_and_match_flowers_bytes() -> None:
    from flwr.common.serde import recorddict_to_proto

    from fedota_common.payload import Segments, content_sha256, encode_segments

    content = _odd_arrays()
    expected = recorddict_to_proto(content).SerializeToString()
    seg = encode_segments(content)
    assert isinstance(seg, Segments) and len(seg) == len(expected)
    assert seg.tobytes() == expected
    assert content_sha256(seg) == content_sha256(expected)
    # Chunks never exceed the limit and reassemble to the same bytes, wherever segment borders fall.
    for size in (1, 7, 64, CHUNK_SIZE):
        chunks = list(iter_chunks(seg, size))
        assert all(0 < len(c) <= size for c in chunks) and b"".join(chunks) == expected
    # No copy of an array's bytes: the segment is the Array's own `data` object.
    big = content["model"]["w"].data
    assert any(part is big for part in seg.parts)


def test_numpy_arrays_encode_as_flowers_array_would() -> None:
    from flwr.common.serde import recorddict_to_proto

    from fedota_common.payload import encode_segments

    arrays = {
        "c": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "strided": np.arange(20.0)[::3],
        "scalar": np.array(7, dtype=np.int64),
    }
    got = encode_segments([("arrays", arrays), ("metrics", MetricRecord({"n": 1}))]).tobytes()
    want = RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": MetricRecord({"n": 1})}
    )
    assert got == recorddict_to_proto(want).SerializeToString()


def test_parsing_in_place_gives_views_of_the_received_buffer() -> None:
    from flwr.common.serde import recorddict_to_proto

    from fedota_common.payload import encode_content, npy_view, parse_content

    content = _odd_arrays()
    raw = bytearray(encode_content(content))
    wire = parse_content(raw)
    assert wire.order == ["model", "empty", "", "config"]
    assert wire.small[""]["num-examples"] == 3 and wire.small["config"]["mode"] == "fit"
    names = [name for name, _ in wire.arrays["model"]]
    assert names == list(content["model"].keys()) and wire.arrays["empty"] == []
    for name, array in wire.arrays["model"]:
        original = content["model"][name]
        assert (array.dtype, array.shape, array.stype) == (original.dtype, original.shape, original.stype)
        if array.stype == "numpy.ndarray":
            view = npy_view(array)
            np.testing.assert_array_equal(view, original.numpy())
            assert view.base is not None and not view.flags.writeable
    raw_w = dict(wire.arrays["model"])["w"]
    assert raw_w.data.obj is raw  # a view into the buffer, not a copy
    with pytest.raises(PayloadError):
        npy_view(dict(wire.arrays["model"])["opaque"])
    # Decoding to Flower objects round-trips to the same bytes.
    assert recorddict_to_proto(decode_content(raw)).SerializeToString() == bytes(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05\x0a\x01k",  # item runs past its end
        b"\x0a\x03\x0a\x01k",  # record without a value
        b"\x0a\x80",  # truncated length
        b"\x0f",  # unknown wire type
    ],
)
def test_malformed_content_is_a_payload_error(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_content(raw)


def test_release_cycles_frees_a_dropped_recorddict() -> None:
    import gc
    import weakref

    from fedota_common.payload import COLLECT_ABOVE, release_cycles

    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(4))})})
    assert "arrays" in content.array_records  # as every app does; the typed view points back at the RecordDict
    ref = weakref.ref(content)
    gc.disable()  # so the cycle is only freed by release_cycles
    try:
        del content
        assert ref() is not None
        release_cycles(COLLECT_ABOVE)
        assert ref() is None
    finally:
        gc.enable()


@pytest.fixture
def no_digests() -> Iterator[None]:
    send_digests(False)
    yield None
    send_digests(True)


def test_a_content_sent_over_tls_goes_without_its_hash_and_still_arrives_whole(no_digests: object) -> None:
    msg = _message(600_000)
    payload = message_to_payload(msg)  # type: ignore[arg-type]
    assert payload.header.content_sha256 == "" and payload.header.content_size > CHUNK_SIZE
    content = assemble(payload.header.content_size, "", iter_chunks(payload.content))
    back = payload_to_message(payload.header, content)
    np.testing.assert_array_equal(back.content["arrays"]["w"].numpy(), np.arange(600_000, dtype=np.float32))
    # The size is still checked without a hash.
    asm = Assembler(payload.header.content_size, "")
    asm.add(next(iter_chunks(payload.content)))
    with pytest.raises(PayloadError, match="truncated"):
        asm.finish()


def test_a_plaintext_sender_hashes_what_it_sends() -> None:
    payload = message_to_payload(_message(10))  # type: ignore[arg-type]
    assert payload.header.content_sha256 == hashlib.sha256(bytes(payload.content.tobytes())).hexdigest()  # type: ignore[union-attr]
    assert content_digest(b"") == ""


def test_an_assembled_content_is_the_buffer_it_was_gathered_in() -> None:
    data = np.arange(3 * CHUNK_SIZE // 4, dtype=np.float32).tobytes()
    content = assemble(len(data), hashlib.sha256(data).hexdigest(), iter_chunks(data))
    assert isinstance(content, memoryview) and content.readonly is False
    assert bytes(content) == data and len(content) == len(data)


def test_a_content_that_came_whole_is_checked_and_kept_as_it_is_not_copied() -> None:
    data = bytes(range(256)) * 40
    sha = hashlib.sha256(data).hexdigest()
    assert assemble(len(data), sha, Whole(data)) is data
    assert assemble(len(data), "", Whole(data)) is data  # sent without a hash (over TLS)
    with pytest.raises(PayloadError, match="checksum"):
        assemble(len(data), hashlib.sha256(b"other").hexdigest(), Whole(data))
    with pytest.raises(PayloadError, match="announced 10241"):
        assemble(len(data) + 1, "", Whole(data))
    # Nothing may follow it on its stream; passed on as chunks, it is checked the same way.
    with pytest.raises(PayloadError, match="a result sent whole takes no chunks after it"):
        assemble(len(data), sha, Whole(data, rest=iter([b"more"]), what="a result sent whole"))
    assert assemble(len(data), sha, Whole(data, rest=iter([]))) is data
    assert b"".join(Whole(data, rest=iter([]))) == data
    with pytest.raises(PayloadError, match="takes no chunks after it"):
        list(Whole(data, rest=iter([b"more"])))
