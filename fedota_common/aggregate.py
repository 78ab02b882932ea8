"""Partial weighted-mean aggregation at a selector.

For weighted-mean strategies (FedAvg and its server-optimiser relatives) a
selector folds its clients' replies into one reply whose arrays and metrics are
the weighted mean and whose weight is the sum of weights. The coordinator's
strategy then averages one reply per selector and gets, to float tolerance,
what it would have computed from every client's reply.

Replies are folded one at a time, so a selector holds one running sum and the
reply being added, never all replies. Both Flower reply shapes are understood:
the Message API (one MetricRecord carrying the weight key, e.g. `num-examples`)
and the compatibility layer (`fitres.*` / `evaluateres.*` records with
`num_examples`). Anything whose structure differs between replies cannot be
folded: `NotAggregatable` tells the caller to forward replies individually.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedota_common.payload import PayloadError, Segments, WireArray, WireRecords, encode_segments, npy_view

LEGACY_WEIGHT_KEY = "num_examples"


class NotAggregatable(ValueError):
    """The replies cannot be folded into one weighted mean."""


def reply_weight(content: RecordDict, weight_key: str) -> float:
    """Return the example count a reply is weighted by."""
    found: list[float] = []
    for record in content.metric_records.values():
        for key in (weight_key, LEGACY_WEIGHT_KEY):
            if key in record:
                value = record[key]
                if isinstance(value, (int, float)):
                    found.append(float(value))
                break
    if len(found) != 1:
        raise NotAggregatable(f"reply must carry exactly one weight '{weight_key}' in its MetricRecord")
    if not found[0] > 0:
        raise NotAggregatable(f"reply weight must be positive, got {found[0]}")
    return found[0]


def _is_weight(key: str, weight_key: str) -> bool:
    return key in (weight_key, LEGACY_WEIGHT_KEY)


# Folding works block by block so that adding a reply needs no temporary
# array of the model's size (4 MiB of float64 at most).
_BLOCK = 1 << 19


def _flat(nd: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return nd.reshape(-1) if nd.flags.c_contiguous else np.ravel(nd)


class WeightedMean:
    """Running weighted mean of structurally identical RecordDicts.

    Replies come either as Flower RecordDicts or, at a selector, as
    `WireRecords`: arrays that are views of the received buffer, folded in
    place without being decoded into Flower objects first.
    """

    def __init__(self, weight_key: str) -> None:
        self.weight_key = weight_key
        self.total_weight = 0.0
        self.count = 0
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._dtypes: dict[str, dict[str, np.dtype[Any]]] = {}
        self._metrics: dict[str, dict[str, Any]] = {}
        self._configs: dict[str, dict[str, list[Any]]] = {}
        self._signature: tuple[Any, ...] | None = None
        self._consumed = False

    def add(self, content: RecordDict | WireRecords) -> None:
        """Fold one reply in; raise NotAggregatable (state unchanged) if it does not fit."""
        if self._consumed:
            raise NotAggregatable("the partial aggregate was already sent")
        small = content.small if isinstance(content, WireRecords) else content
        weight = reply_weight(small, self.weight_key)
        signature = _signature(content)
        if self._signature is not None and signature != self._signature:
            raise NotAggregatable("reply structure differs from earlier replies")
        # Validate every value before mutating, so a bad reply leaves the sum intact.
        for name, crec in small.config_records.items():
            for key, value in crec.items():
                if not _numeric(value) and self._signature is not None:
                    if self._configs[name][key][0] != value:
                        raise NotAggregatable(f"config value {name}.{key} differs between replies")
        for name, mrec in small.metric_records.items():
            for key, mvalue in mrec.items():
                if isinstance(mvalue, list) and self._signature is not None:
                    prev = self._metrics[name][key]
                    if len(prev) != len(mvalue):
                        raise NotAggregatable(f"metric list {name}.{key} differs in length")
        arrays = _arrays_of(content)
        if self._signature is not None:
            # Declared shapes can be empty (Flower's legacy Parameters); the data must fit the sums.
            for name, items in arrays:
                for key, nd in items:
                    if nd.shape != self._arrays[name][key].shape or nd.dtype != self._dtypes[name][key]:
                        raise NotAggregatable(f"array {name}.{key} differs in shape or dtype from earlier replies")

        first = self._signature is None
        self._signature = signature
        for name, items in arrays:
            acc = self._arrays.setdefault(name, {})
            dts = self._dtypes.setdefault(name, {})
            for key, nd in items:
                # Accumulate in the array's own float type, as Flower's FedAvg does;
                # integer arrays (e.g. step counters) promote to float64.
                if first:
                    dts[key] = nd.dtype
                    acc[key] = np.empty(nd.shape, dtype=np.result_type(nd.dtype, weight))
                _fold(acc[key], nd, weight, first)
        for name, mrec in small.metric_records.items():
            acc_m = self._metrics.setdefault(name, {})
            for key, mvalue in mrec.items():
                if _is_weight(key, self.weight_key):
                    acc_m[key] = acc_m.get(key, 0) + mvalue
                elif isinstance(mvalue, list):
                    scaled = np.asarray(mvalue, dtype=np.float64) * weight
                    acc_m[key] = scaled if first else acc_m[key] + scaled
                else:
                    acc_m[key] = acc_m.get(key, 0.0) + float(mvalue) * weight
        # Config entries keep their value (and type) while every reply agrees,
        # e.g. a status code; numbers that differ (legacy metrics) are averaged.
        for name, crec in small.config_records.items():
            acc_c = self._configs.setdefault(name, {})
            for key, value in crec.items():
                wsum = float(cast(float, value)) * weight if _numeric(value) else 0.0
                if key not in acc_c:
                    acc_c[key] = [value, True, wsum]
                else:
                    entry = acc_c[key]
                    entry[1] = entry[1] and entry[0] == value
                    entry[2] += wsum
        self.total_weight += weight
        self.count += 1

    def _small_records(self) -> list[tuple[str, MetricRecord | ConfigRecord]]:
        w = self.total_weight
        out: list[tuple[str, MetricRecord | ConfigRecord]] = []
        for name, acc_m in self._metrics.items():
            values: dict[str, Any] = {}
            for key, value in acc_m.items():
                if _is_weight(key, self.weight_key):
                    values[key] = value
                elif isinstance(value, np.ndarray):
                    values[key] = [float(x) for x in value / w]
                else:
                    values[key] = value / w
            out.append((name, MetricRecord(values)))
        for name, acc_c in self._configs.items():
            out.append(
                (name, ConfigRecord({k: (first if same else wsum / w) for k, (first, same, wsum) in acc_c.items()}))
            )
        return out

    def result(self) -> RecordDict:
        """The weighted mean as a RecordDict shaped like the replies."""
        if self.count == 0 or self._consumed:
            raise NotAggregatable("no replies to aggregate")
        w = self.total_weight
        out = RecordDict()
        for name, acc in self._arrays.items():
            out[name] = ArrayRecord({k: Array(np.asarray(v / w).astype(self._dtypes[name][k])) for k, v in acc.items()})
        for name, record in self._small_records():
            out[name] = record
        return out

    def encode_result(self) -> Segments:
        """The weighted mean, serialised as `encode_content(self.result())` would be.

        Divides the running sums in place and streams them as they are, so
        sending the aggregate costs no copy of the model. Consumes the
        accumulator: it cannot be added to or read again.
        """
        if self.count == 0 or self._consumed:
            raise NotAggregatable("no replies to aggregate")
        self._consumed = True
        w = self.total_weight
        records: list[tuple[str, Any]] = []
        for name, acc in self._arrays.items():
            arrays: dict[str, np.ndarray] = {}
            for key, v in acc.items():
                v /= w
                dtype = self._dtypes[name][key]
                arrays[key] = v if v.dtype == dtype else v.astype(dtype)
            records.append((name, arrays))
        records += self._small_records()
        return encode_segments(records)


def _fold(acc: np.ndarray[Any, Any], nd: np.ndarray[Any, Any], weight: float, first: bool) -> None:
    """acc = nd * weight (first) or acc += nd * weight, one block at a time."""
    target, source = _flat(acc), _flat(nd)
    if first:
        np.multiply(source, weight, out=target)
        return
    tmp = np.empty(min(_BLOCK, target.size), dtype=target.dtype)
    for start in range(0, target.size, _BLOCK):
        end = min(start + _BLOCK, target.size)
        part = tmp[: end - start]
        np.multiply(source[start:end], weight, out=part)
        target[start:end] += part


def _arrays_of(content: RecordDict | WireRecords) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Each array record's arrays as numpy arrays (views of the buffer for wire replies)."""
    out: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    records = content.arrays.items() if isinstance(content, WireRecords) else content.array_records.items()
    for name, items in records:
        arrays: list[tuple[str, np.ndarray]] = []
        for key, array in items if isinstance(items, list) else items.items():
            try:
                nd = npy_view(array) if isinstance(array, WireArray) else array.numpy()
            except (PayloadError, TypeError, ValueError) as exc:
                raise NotAggregatable(f"array {name}.{key} cannot be averaged: {exc}") from exc
            arrays.append((key, nd))
        out.append((name, arrays))
    return out


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _signature(content: RecordDict | WireRecords) -> tuple[Any, ...]:
    if isinstance(content, WireRecords):
        arrays = tuple(
            (name, tuple((k, tuple(a.shape), a.dtype) for k, a in items)) for name, items in content.arrays.items()
        )
        small = content.small
    else:
        arrays = tuple(
            (name, tuple((k, tuple(a.shape), a.dtype) for k, a in rec.items()))
            for name, rec in content.array_records.items()
        )
        small = content
    metrics = tuple((name, tuple(sorted(rec.keys()))) for name, rec in small.metric_records.items())
    configs = tuple(
        (name, tuple(sorted((k, _numeric(v)) for k, v in rec.items()))) for name, rec in small.config_records.items()
    )
    return (arrays, metrics, configs)
