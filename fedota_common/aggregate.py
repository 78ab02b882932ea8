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


class WeightedMean:
    """Running weighted mean of structurally identical RecordDicts."""

    def __init__(self, weight_key: str) -> None:
        self.weight_key = weight_key
        self.total_weight = 0.0
        self.count = 0
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._dtypes: dict[str, dict[str, np.dtype[Any]]] = {}
        self._metrics: dict[str, dict[str, Any]] = {}
        self._configs: dict[str, dict[str, list[Any]]] = {}
        self._signature: tuple[Any, ...] | None = None

    def add(self, content: RecordDict) -> None:
        """Fold one reply in; raise NotAggregatable (state unchanged) if it does not fit."""
        weight = reply_weight(content, self.weight_key)
        signature = _signature(content)
        if self._signature is not None and signature != self._signature:
            raise NotAggregatable("reply structure differs from earlier replies")
        # Validate every value before mutating, so a bad reply leaves the sum intact.
        for name, crec in content.config_records.items():
            for key, value in crec.items():
                if not _numeric(value) and self._signature is not None:
                    if self._configs[name][key][0] != value:
                        raise NotAggregatable(f"config value {name}.{key} differs between replies")
        for name, mrec in content.metric_records.items():
            for key, mvalue in mrec.items():
                if isinstance(mvalue, list) and self._signature is not None:
                    prev = self._metrics[name][key]
                    if len(prev) != len(mvalue):
                        raise NotAggregatable(f"metric list {name}.{key} differs in length")

        first = self._signature is None
        self._signature = signature
        for name, arec in content.array_records.items():
            acc = self._arrays.setdefault(name, {})
            dts = self._dtypes.setdefault(name, {})
            for key, arr in arec.items():
                nd = arr.numpy()
                # Accumulate in the array's own float type, as Flower's FedAvg does;
                # integer arrays (e.g. step counters) promote to float64.
                if first:
                    dts[key] = nd.dtype
                    acc[key] = nd * weight
                else:
                    acc[key] += nd * weight
        for name, mrec in content.metric_records.items():
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
        for name, crec in content.config_records.items():
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

    def result(self) -> RecordDict:
        """The weighted mean as a RecordDict shaped like the replies."""
        if self.count == 0:
            raise NotAggregatable("no replies to aggregate")
        w = self.total_weight
        out = RecordDict()
        for name, acc in self._arrays.items():
            out[name] = ArrayRecord({k: Array(np.asarray(v / w).astype(self._dtypes[name][k])) for k, v in acc.items()})
        for name, acc_m in self._metrics.items():
            values: dict[str, Any] = {}
            for key, value in acc_m.items():
                if _is_weight(key, self.weight_key):
                    values[key] = value
                elif isinstance(value, np.ndarray):
                    values[key] = [float(x) for x in value / w]
                else:
                    values[key] = value / w
            out[name] = MetricRecord(values)
        for name, acc_c in self._configs.items():
            out[name] = ConfigRecord({k: (first if same else wsum / w) for k, (first, same, wsum) in acc_c.items()})
        return out


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _signature(content: RecordDict) -> tuple[Any, ...]:
    arrays = tuple(
        (name, tuple((k, tuple(a.shape), a.dtype) for k, a in rec.items()))
        for name, rec in content.array_records.items()
    )
    metrics = tuple((name, tuple(sorted(rec.keys()))) for name, rec in content.metric_records.items())
    configs = tuple(
        (name, tuple(sorted((k, _numeric(v)) for k, v in rec.items()))) for name, rec in content.config_records.items()
    )
    return (arrays, metrics, configs)
