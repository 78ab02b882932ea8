"""Partial aggregation at selectors equals the strategy's own aggregation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitres
from flwr.server.strategy.aggregate import aggregate as legacy_fedavg
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedota_common.aggregate import NotAggregatable, WeightedMean
from fedota_common.payload import WireRecords, encode_content, parse_content

RNG = np.random.default_rng(7)


def _reply(n: int, seed: int) -> RecordDict:
    rng = np.random.default_rng(seed)
    return RecordDict(
        {
            "arrays": ArrayRecord(
                {
                    "fc.weight": Array(rng.normal(size=(16, 8)).astype(np.float32)),
                    "fc.bias": Array(rng.normal(size=(8,)).astype(np.float32)),
                }
            ),
            "metrics": MetricRecord({"num-examples": n, "train_loss": float(rng.random())}),
        }
    )


def _as_message(content: RecordDict, node: int) -> Message:
    md = Metadata(
        run_id=1,
        message_id=f"r{node}",
        src_node_id=node,
        dst_node_id=1,
        reply_to_message_id=f"i{node}",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return make_message(metadata=md, content=content)


def _partials(replies: list[RecordDict], groups: list[list[int]]) -> list[RecordDict]:
    out = []
    for group in groups:
        acc = WeightedMean("num-examples")
        for i in group:
            acc.add(replies[i])
        out.append(acc.result())
    return out


@pytest.mark.parametrize("groups", [[[0, 1, 2], [3, 4, 5]], [[0], [1, 2, 3, 4, 5]], [[0, 5], [1], [2, 3, 4]]])
@pytest.mark.parametrize("strategy_cls", [FedAvg, FedProx, FedAdam])
def test_partial_aggregates_give_the_strategys_result(strategy_cls: type, groups: list[list[int]]) -> None:
    replies = [_reply(n, seed) for seed, n in enumerate([10, 250, 33, 71, 5, 120])]
    full_strategy = strategy_cls()
    part_strategy = strategy_cls()
    if isinstance(full_strategy, FedAdam):
        # FedOpt keeps the arrays it last sent as NumPy arrays (set in configure_train).
        initial = {k: np.zeros_like(v.numpy()) for k, v in replies[0]["arrays"].items()}
        full_strategy.current_arrays = {k: v.copy() for k, v in initial.items()}
        part_strategy.current_arrays = {k: v.copy() for k, v in initial.items()}
    full_arrays, full_metrics = full_strategy.aggregate_train(1, [_as_message(r, i) for i, r in enumerate(replies)])
    part_arrays, part_metrics = part_strategy.aggregate_train(
        1, [_as_message(r, i) for i, r in enumerate(_partials(replies, groups))]
    )
    assert full_arrays is not None and part_arrays is not None
    for key in full_arrays:
        np.testing.assert_allclose(part_arrays[key].numpy(), full_arrays[key].numpy(), rtol=1e-5, atol=1e-6)
    assert full_metrics is not None and part_metrics is not None
    assert part_metrics["train_loss"] == pytest.approx(full_metrics["train_loss"], rel=1e-9)


def test_partial_aggregate_carries_the_total_weight() -> None:
    acc = WeightedMean("num-examples")
    for seed, n in enumerate([3, 4, 5]):
        acc.add(_reply(n, seed))
    result = acc.result()
    assert result["metrics"]["num-examples"] == 12
    assert acc.count == 3 and acc.total_weight == 12.0
    assert result["arrays"]["fc.weight"].numpy().dtype == np.float32


def test_legacy_fitres_partials_match_flowers_fedavg() -> None:
    rng = np.random.default_rng(3)
    results = []
    for n in (20, 7, 300, 41):
        arrays = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]
        results.append((arrays, n))
    contents = [
        fitres_to_recorddict(
            FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(a), n, {"train_loss": float(n) / 10}), True
        )
        for a, n in results
    ]
    expected = legacy_fedavg(results)
    partials = []
    for group in ([0, 1], [2, 3]):
        acc = WeightedMean("num-examples")
        for i in group:
            acc.add(contents[i])
        partials.append(recorddict_to_fitres(acc.result(), keep_input=True))
    assert all(p.status.code == Code.OK for p in partials)
    got = legacy_fedavg([(parameters_to_ndarrays(p.parameters), p.num_examples) for p in partials])
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert sum(p.num_examples for p in partials) == 368


def test_reply_without_weight_is_not_aggregatable() -> None:
    acc = WeightedMean("num-examples")
    bad = _reply(5, 0)
    bad["metrics"] = MetricRecord({"train_loss": 1.0})
    with pytest.raises(NotAggregatable, match="num-examples"):
        acc.add(bad)


def test_mismatched_reply_leaves_the_running_sum_intact() -> None:
    acc = WeightedMean("num-examples")
    acc.add(_reply(5, 0))
    before = acc.result()["arrays"]["fc.bias"].numpy().copy()
    other = _reply(5, 1)
    other["arrays"] = ArrayRecord({"fc.bias": Array(np.zeros(4, dtype=np.float32))})
    with pytest.raises(NotAggregatable):
        acc.add(other)
    differing = _reply(5, 2)
    differing["config"] = ConfigRecord({"status": "x"})
    with pytest.raises(NotAggregatable):
        acc.add(differing)
    np.testing.assert_array_equal(acc.result()["arrays"]["fc.bias"].numpy(), before)
    assert acc.count == 1


def _wire(content: RecordDict) -> WireRecords:
    return parse_content(bytearray(encode_content(content)))


def test_folding_received_bytes_equals_folding_flower_objects() -> None:
    replies = [_reply(n, seed) for seed, n in enumerate([10, 250, 33])]
    for reply in replies:  # an integer step counter promotes to float64 and comes back as int
        reply["arrays"]["steps"] = Array(np.array([3, 5], dtype=np.int64))
    from_objects, from_bytes = WeightedMean("num-examples"), WeightedMean("num-examples")
    for reply in replies:
        from_objects.add(reply)
        from_bytes.add(_wire(reply))
    expected = encode_content(from_objects.result())
    assert from_bytes.encode_result().tobytes() == expected
    # Legacy fitres replies (Parameters without declared shapes) fold from bytes too.
    legacy = [
        fitres_to_recorddict(
            FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters([RNG.normal(size=(4, 2))]), n, {}), True
        )
        for n in (2, 9)
    ]
    a, b = WeightedMean("num-examples"), WeightedMean("num-examples")
    for reply in legacy:
        a.add(reply)
        b.add(_wire(reply))
    assert b.encode_result().tobytes() == encode_content(a.result())


def test_encoding_the_result_consumes_the_running_sum_without_copying_it() -> None:
    acc = WeightedMean("num-examples")
    acc.add(_wire(_reply(4, 0)))
    acc.add(_wire(_reply(12, 1)))
    sums = acc._arrays["arrays"]["fc.weight"]
    seg = acc.encode_result()
    # The streamed bytes are the running sum's own memory, divided in place.
    assert any(isinstance(p, memoryview) and np.shares_memory(np.asarray(p), sums) for p in seg.parts)
    with pytest.raises(NotAggregatable):
        acc.add(_wire(_reply(1, 2)))
    with pytest.raises(NotAggregatable):
        acc.encode_result()


def test_a_received_reply_that_does_not_fit_leaves_the_sum_intact() -> None:
    acc = WeightedMean("num-examples")
    acc.add(_wire(_reply(5, 0)))
    before = acc.result()["arrays"]["fc.bias"].numpy().copy()
    # Same declared structure, different data: refused before anything is added.
    liar = _reply(5, 1)
    liar["arrays"]["fc.bias"] = Array("float32", (8,), "numpy.ndarray", Array(np.zeros(3, dtype=np.float32)).data)
    with pytest.raises(NotAggregatable):
        acc.add(_wire(liar))
    opaque = _reply(5, 2)
    opaque["arrays"]["fc.bias"] = Array("float32", (8,), "torch.raw", b"\x00" * 32)
    with pytest.raises(NotAggregatable):
        acc.add(_wire(opaque))
    np.testing.assert_array_equal(acc.result()["arrays"]["fc.bias"].numpy(), before)
    assert acc.count == 1
