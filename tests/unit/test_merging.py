"""The selectors' partial means merged at the coordinator: FedAvg's result, bit for bit.

Each test builds the partial means the selectors send (their own `WeightedMean`
over client replies, serialised as on the wire), then runs Flower's strategy
twice: on the partial means as they come, and on the one merged reply.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import strategy as fl

from coordinator.merging import merge_partial_means
from fedota_common.aggregate import WeightedMean
from fedota_common.payload import assemble, decode_content, encode_content, iter_chunks

pytestmark = pytest.mark.usefixtures("task_identity")

KEY = "num-examples"


def _client(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]], dtype: Any, weight: int) -> RecordDict:
    arrays = {k: Array(rng.normal(size=s).astype(dtype)) for k, s in shapes.items()}
    metrics = MetricRecord({"loss": float(rng.random()), "acc": [float(rng.random()), 1.0], KEY: weight})
    return RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})


def _partials(seed: int, selectors: int, dtype: Any = np.float32, evaluate: bool = False) -> list[bytes]:
    """Each selector's partial mean of 2-4 clients, as the bytes it sends."""
    rng = np.random.default_rng(seed)
    shapes = {"w": (33, 7), "b": (7,), "scalar": ()}
    out = []
    for _ in range(selectors):
        mean = WeightedMean(KEY)
        for _ in range(int(rng.integers(2, 5))):
            reply = _client(rng, shapes, dtype, int(rng.integers(1, 500)))
            if evaluate:
                del reply["arrays"]
            mean.add(reply)
        out.append(mean.encode_result().tobytes())
    return out


def _messages(contents: list[RecordDict]) -> list[Message]:
    return [Message(c, 1, MessageType.TRAIN) for c in contents]


def _same(a: ArrayRecord, b: ArrayRecord) -> None:
    assert list(a) == list(b)
    for key in a:
        x, y = a[key].numpy(), b[key].numpy()
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), key


def _received(wire: list[bytes]) -> list[Any]:
    """The contents as the coordinator holds them: each assembled into a (writable) buffer of its own."""
    return [assemble(len(c), "", iter_chunks(c)) for c in wire]


@pytest.mark.parametrize("strategy", [fl.FedAvg, fl.FedAdam, fl.FedAvgM, fl.FedProx])
@pytest.mark.parametrize("selectors", [2, 3, 5])
@pytest.mark.parametrize("held", ["as bytes", "as received"])
def test_the_strategy_computes_the_same_bits_from_the_merged_reply(strategy: type, selectors: int, held: str) -> None:
    """`as received`: the sum is kept in the first reply's own buffer; `as bytes`: in one of its own."""
    wire = _partials(seed=selectors, selectors=selectors)
    assert len(set(wire)) == selectors
    partials = [decode_content(c) for c in wire]
    merged = merge_partial_means(list(wire) if held == "as bytes" else _received(wire), KEY, train=True)
    assert merged is not None
    results = []
    for replies in (partials, [merged]):
        s = strategy()
        if strategy in (fl.FedAdam,):
            # A server optimiser starts from the current model: give both runs the same one.
            s.current_arrays = {k: np.zeros_like(v.numpy()) for k, v in partials[0]["arrays"].items()}
        results.append(s.aggregate_train(1, _messages(replies)))
    (arrays_a, metrics_a), (arrays_b, metrics_b) = results
    assert arrays_a is not None and arrays_b is not None
    _same(arrays_a, arrays_b)
    assert dict(metrics_a) == dict(metrics_b)
    # The merged reply weighs what every client's reply weighed together.
    assert merged["metrics"][KEY] == sum(p["metrics"][KEY] for p in partials)


def test_integer_arrays_and_evaluate_rounds_merge_exactly() -> None:
    wire = _partials(seed=7, selectors=2, dtype=np.int64)
    partials = [decode_content(c) for c in wire]
    # Integers average into float64: the sum cannot live in the first reply's buffer.
    merged = merge_partial_means(_received(wire), KEY, train=True)
    assert merged is not None
    a, _ = fl.FedAvg().aggregate_train(1, _messages(partials))
    b, _ = fl.FedAvg().aggregate_train(1, _messages([merged]))
    assert a is not None and b is not None
    _same(a, b)
    assert a["w"].numpy().dtype == np.float64

    wire = _partials(seed=8, selectors=3, evaluate=True)
    merged = merge_partial_means(list(wire), KEY, train=False)
    assert merged is not None
    expected = fl.FedAvg().aggregate_evaluate(1, _messages([decode_content(c) for c in wire]))
    assert fl.FedAvg().aggregate_evaluate(1, _messages([merged])) == expected


def test_each_received_buffer_is_let_go_once_added_and_left_alone_when_not_merged() -> None:
    wire = _partials(seed=1, selectors=3)
    buffers: list[Any] = list(wire)
    assert merge_partial_means(buffers, KEY, train=True) is not None
    assert buffers == [b"", b"", b""]
    # Received buffers: the first holds the sum while it is made, and goes with it.
    received = _received(wire)
    first = weakref.ref(received[0].obj)
    merged = merge_partial_means(received, KEY, train=True)
    assert merged is not None and received == [b"", b"", b""]
    gc.collect()
    assert first() is None
    # One reply is no merge; a wrong weight key neither: the list is as it was.
    for contents, key in (([wire[0]], KEY), (list(wire), "examples")):
        kept = list(contents)
        assert merge_partial_means(kept, key, train=True) is None
        assert kept == contents


def _variant(change: str) -> list[bytes]:
    wire = _partials(seed=3, selectors=2)
    second = decode_content(wire[1])
    if change == "keys":
        second["arrays"] = ArrayRecord({"w": second["arrays"]["w"], "other": second["arrays"]["b"]})
    elif change == "two metric records":
        second["more"] = MetricRecord({"x": 1.0})
    elif change == "config record":
        second["cfg"] = ConfigRecord({"x": "y"})
    elif change == "list weight":
        second["metrics"][KEY] = [1, 2]
    elif change == "zero total":
        first = decode_content(wire[0])
        first["metrics"][KEY] = 0
        second["metrics"][KEY] = 0
        return [encode_content(first), encode_content(second)]
    elif change == "dtype":
        second["arrays"]["b"] = Array(second["arrays"]["b"].numpy().astype(np.float64))
    elif change == "fortran":
        w = second["arrays"]["w"].numpy()
        second["arrays"]["w"] = Array(np.asfortranarray(w))
    elif change == "metric list length":
        second["metrics"]["acc"] = [0.5]
    return [wire[0], encode_content(second)]


@pytest.mark.parametrize(
    "change",
    [
        "keys",
        "two metric records",
        "config record",
        "list weight",
        "zero total",
        "dtype",
        "fortran",
        "metric list length",
    ],
)
def test_replies_the_merge_could_not_reproduce_exactly_go_to_the_strategy_as_they_came(change: str) -> None:
    contents = _variant(change)
    kept = list(contents)
    assert merge_partial_means(kept, KEY, train=True) is None
    assert kept == contents
