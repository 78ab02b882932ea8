"""A small instruction content travels in the selector's Instructions message; a large one is pulled."""

from __future__ import annotations

from coordinator.grid import inline_contents
from fedota_common.payload import MAX_FRAME, Segments
from protos.coordinator.v1 import coordinator_pb2 as cpb


def _group(*content_ids: str) -> cpb.Instructions:
    return cpb.Instructions(
        batch_id="b1",
        items=[
            cpb.Instruction(message_id=f"t-{i}", node_id=i + 1, metadata=b"m" * 200, content_id=cid)
            for i, cid in enumerate(content_ids)
        ],
    )


def test_a_small_content_travels_once_per_selector_that_needs_it() -> None:
    small = Segments([b"ab" * 1000, memoryview(b"cd" * 1000)])
    first, second, other = _group("b1/0", "b1/0"), _group("b1/0"), _group("b1/1")
    inline_contents([first, second, other], {"b1/0": small, "b1/1": b""})
    assert [(c.content_id, c.data) for c in first.contents] == [("b1/0", small.tobytes())]
    assert [(c.content_id, c.data) for c in second.contents] == [("b1/0", small.tobytes())]
    assert list(other.contents) == []  # nothing to carry: an empty content


def test_what_would_not_fit_one_message_is_left_to_be_pulled() -> None:
    big, fits = bytes(MAX_FRAME), bytes(MAX_FRAME - 4096)
    group = _group("b1/0", "b1/1", "b1/2")
    inline_contents([group], {"b1/0": big, "b1/1": fits, "b1/2": fits})
    # One fits beside the items; the second would take the message past what a selector reads.
    assert [c.content_id for c in group.contents] == ["b1/1"]
    assert cpb.CoordinatorMessage(instructions=group).ByteSize() <= MAX_FRAME
