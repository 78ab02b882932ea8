"""The selectors' partial means as one reply, to the bit what Flower's FedAvg makes of them.

With replies folded at the selectors, a Message-API weighted-mean strategy
(FedAvg and the strategies that start from its mean) receives one partial mean
per selector and averages them: `sum(p_k * (W_k / W))` over the replies, in
order, in each array's own dtype (`aggregate_arrayrecords`). Handing it those
replies means holding every selector's partial mean at once, decoded, while
FedAvg adds its own temporaries: (selectors + 3) models at the coordinator's
peak.

`merge_partial_means` computes that same sum itself, reply by reply, as the
results are turned into replies, freeing each received buffer once it is added.
The sum is kept in the first reply's own buffer where its dtype allows (a float
model), so merging holds the partial means it was given and nothing more: a
buffer of its own for the sum made two selectors cost one model more at the
coordinator's peak than one selector.
The strategy then gets one reply weighing `W`: its weight factor is `W / W`,
exactly 1.0, and `m * 1.0` is `m`, so the arrays and metrics it computes are
the same bits as from the partial means themselves. Anything that would not
give the same bits, or that FedAvg itself would refuse (a second ArrayRecord or
MetricRecord, keys that differ, a list as weight, a zero total weight), is left
alone: the strategy gets the replies as they came and does what it does with
them.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedota_common.aggregate import fold, is_number
from fedota_common.payload import (
    NUMPY_STYPE,
    PayloadError,
    WireContent,
    WireRecords,
    npy_header,
    npy_view,
    parse_content,
)


def _plan(wires: list[WireRecords], weight_key: str, train: bool) -> tuple[str, str, list[float]] | None:
    """(array record name, metric record name, weight factors), or None when merging is not exact."""
    first = wires[0]
    if any(w.small.config_records for w in wires):
        return None
    metric_names = {tuple(w.small.metric_records) for w in wires}
    if len(metric_names) != 1 or len(next(iter(metric_names))) != 1:
        return None
    metric_name = next(iter(first.small.metric_records))
    keys = list(first.small.metric_records[metric_name])
    if weight_key not in keys:
        return None
    weights: list[float] = []
    for wire in wires:
        record = wire.small.metric_records[metric_name]
        if list(record) != keys:
            return None
        for key, value in record.items():
            head = first.small.metric_records[metric_name][key]
            if isinstance(value, list) or isinstance(head, list):
                if not (isinstance(value, list) and isinstance(head, list) and len(value) == len(head)):
                    return None
        weight = record[weight_key]
        if not is_number(weight):
            return None
        weights.append(cast(float, weight))
    # As FedAvg: the total is `sum` of the weights, each factor one division.
    total = sum(weights)
    if not total or not math.isfinite(total):
        return None
    array_name = ""
    if train:
        names = {tuple(w.arrays) for w in wires}
        if len(names) != 1 or len(next(iter(names))) != 1:
            return None
        array_name = next(iter(first.arrays))
        layout = [(k, a.stype, a.dtype, tuple(a.shape)) for k, a in first.arrays[array_name]]
        if len({k for k, *_ in layout}) != len(layout) or any(stype != NUMPY_STYPE for _, stype, *_ in layout):
            return None
        if any([(k, a.stype, a.dtype, tuple(a.shape)) for k, a in w.arrays[array_name]] != layout for w in wires):
            return None
    elif any(w.arrays for w in wires):
        return None
    return array_name, metric_name, [w / total for w in weights]


def merge_partial_means(contents: list[WireContent], weight_key: str, *, train: bool) -> RecordDict | None:
    """One reply whose FedAvg mean equals FedAvg's mean of `contents`, bit for bit; or None.

    `contents` are the received replies in the order the strategy would get
    them, read in place. Once merging starts, each item of the list is
    replaced by b"" as soon as it is added, so that its buffer is freed if the
    list held the last reference; on None the list is untouched.
    """
    if len(contents) < 2:
        return None
    try:
        wires: list[WireRecords | None] = [parse_content(c) for c in contents]
        plan = _plan([w for w in wires if w is not None], weight_key, train)
        if plan is None:
            return None
        array_name, metric_name, factors = plan
        views = [[(k, npy_view(a)) for k, a in w.arrays[array_name]] if w is not None and train else [] for w in wires]
    except PayloadError:
        return None
    # The partial means are C-ordered; a client's Fortran-ordered array would come back C-ordered.
    if not all(nd.flags.c_contiguous for arrays in views for _, nd in arrays):
        return None
    order = wires[0].order if wires[0] is not None else []
    metrics = _merge_metrics([w.small.metric_records[metric_name] for w in wires if w is not None], weight_key, factors)
    sums = [_Sum(key, nd, factors[0]) for key, nd in views[0]]  # in the first reply's buffer where it can
    for k, factor in enumerate(factors):
        for acc, (_, nd) in zip(sums, views[k], strict=True):
            fold(acc.array, nd, factor, first=k == 0)
            del nd  # the loop variable would keep the last array's buffer alive
        # This reply is in the sums: nothing here reads its buffer any more.
        views[k], wires[k], contents[k] = [], None, b""
    out = RecordDict()
    for name in order:
        if name == array_name and train:
            out[name] = ArrayRecord({acc.key: acc.take() for acc in sums})
        elif name == metric_name:
            out[name] = metrics
    return out


class _Sum:
    """One array's running sum, kept in the .npy bytes Flower's `Array` will hold.

    Where the sum's dtype is the first reply's own and its received buffer can be
    written to, the sum is kept in that array itself (`fold` multiplies it in place
    first, the same arithmetic as into a buffer of its own); the buffer is then
    the sum's, and freed with it.
    """

    def __init__(self, key: str, like: np.ndarray[Any, Any], factor: float) -> None:
        self.key = key
        # The dtype FedAvg's `value.numpy() * weight` takes (integers become float64).
        self.dtype = (np.empty(0, dtype=like.dtype) * factor).dtype
        self.shape = like.shape
        self._buf: np.ndarray[Any, Any] | None = None
        if self.dtype == like.dtype and _writable(like):
            self.array = like
            return
        header = npy_header(np.empty(like.shape, dtype=self.dtype))
        self._buf = np.empty(len(header) + like.size * self.dtype.itemsize, np.uint8)
        self._buf[: len(header)] = np.frombuffer(header, np.uint8)
        self.array = self._buf[len(header) :].view(self.dtype).reshape(like.shape)

    def take(self) -> Array:
        """The sum as Flower's Array (one copy into `bytes`); the buffer is freed."""
        if self._buf is not None:
            data = self._buf.tobytes()
            self._buf = None
        else:
            data = b"".join((npy_header(self.array), self.array.data.cast("B")))
        del self.array
        return Array(str(self.dtype), tuple(self.shape), NUMPY_STYPE, data)


def _writable(nd: np.ndarray[Any, Any]) -> bool:
    """Make a received array writable in place, if its buffer allows it (an assembled reply's does)."""
    if not nd.flags.c_contiguous:
        return False
    try:
        nd.flags.writeable = True
    except ValueError:  # a view of immutable bytes
        return False
    return True


def _merge_metrics(records: list[MetricRecord], weight_key: str, factors: list[float]) -> MetricRecord:
    """`aggregate_metricrecords`' arithmetic, keeping the weight key as the total weight."""
    merged: dict[str, Any] = {}
    for record, factor in zip(records, factors, strict=True):
        for key, value in record.items():
            if key == weight_key:
                merged[key] = merged.get(key, 0) + value
            elif key not in merged:
                merged[key] = [v * factor for v in value] if isinstance(value, list) else value * factor
            elif isinstance(value, list):
                merged[key] = [c + v * factor for c, v in zip(merged[key], value, strict=True)]
            else:
                merged[key] = merged[key] + value * factor
    return MetricRecord(merged)
