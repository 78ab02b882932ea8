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

Checking a reply is two layers. `inspect_reply` is protection: it parses
every array's header and always runs. `judge_reply` is the `strict` reply
policy (see `fedota_common.replies`): it refuses, with `RejectedReply` saying
what was wrong and what was expected, arrays whose names, shapes or dtypes
differ from the model that was sent, pickled or non-numeric arrays, NaN or Inf
anywhere, and a weight that is not a positive number of examples up to
`MAX_WEIGHT`. Zero is refused too: such a reply adds nothing to the mean, and
replies that all weigh zero would divide by zero. The cap cannot stop a client
from overstating its examples within it; only the problem setter knows how
many a site can really have. Under the `flower` policy none of this refuses a
reply; it only decides which replies a selector may fold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

from fedota_common.payload import (
    NUMPY_STYPE,
    PayloadError,
    RejectedReply,
    Segments,
    WireArray,
    WireRecords,
    encode_segments,
    npy_view,
)

LEGACY_WEIGHT_KEY = "num_examples"
# A weight is a count of examples. No site has a trillion; a larger claim is a
# bug or an attempt to outweigh every other site (and costs float precision).
MAX_WEIGHT = 1e12
# How the reason of a task failed by a rejected reply begins (counted per round).
REJECTED = "reply rejected"


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


# ---- what a reply must be before it may reach an aggregate -------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """One array of the model as a reply must return it."""

    dtype: str
    shape: tuple[int, ...]
    stype: str


# The model's ArrayRecords in wire order, each mapping array name to spec.
ModelSpec = tuple[dict[str, ArraySpec], ...]


def _array_spec(array: WireArray) -> ArraySpec:
    """Shape and dtype from the .npy header for numpy arrays (legacy Parameters declare none)."""
    if array.stype == NUMPY_STYPE:
        try:
            nd = npy_view(array)
        except PayloadError:
            pass  # compared as declared
        else:
            return ArraySpec(str(nd.dtype), tuple(nd.shape), array.stype)
    return ArraySpec(array.dtype, tuple(array.shape), array.stype)


def model_spec(content: RecordDict | WireRecords) -> ModelSpec:
    """The arrays an instruction sends, which replies to it are checked against."""
    records: Iterable[Iterable[tuple[str, WireArray]]]
    if isinstance(content, WireRecords):
        records = content.arrays.values()
    else:
        records = (
            [(name, WireArray(a.dtype, tuple(a.shape), a.stype, memoryview(a.data))) for name, a in rec.items()]
            for rec in content.array_records.values()
        )
    return tuple({name: _array_spec(array) for name, array in items} for items in records)


def _label(record: str, name: str, model: ModelSpec | None) -> str:
    return f"'{name}'" if model is not None and len(model) == 1 else f"'{record}/{name}'"


def _match_model(reply: list[tuple[str, list[tuple[str, ArraySpec]]]], model: ModelSpec, exact: bool) -> None:
    if len(reply) != len(model):
        raise RejectedReply(
            "missing-array" if len(reply) < len(model) else "extra-array",
            f"the reply has {len(reply)} ArrayRecords; the model it answers has {len(model)}",
        )
    for (record, items), expected in zip(reply, model, strict=True):
        got = dict(items)
        for name in expected:
            if name not in got:
                raise RejectedReply(
                    "missing-array", f"array {_label(record, name, model)} of the model is missing from the reply"
                )
        for name, spec in items:
            want = expected.get(name)
            label = _label(record, name, model)
            if want is None:
                known = ", ".join(f"'{n}'" for n in expected) or "none"
                raise RejectedReply(
                    "extra-array", f"the reply has an array {label} the model does not have (the model's: {known})"
                )
            if spec.stype != want.stype:
                raise RejectedReply("dtype", f"array {label} is of type {spec.stype!r}; the model's is {want.stype!r}")
            if spec.dtype != want.dtype:
                raise RejectedReply("dtype", f"array {label} has dtype {spec.dtype}; the model's is {want.dtype}")
            # A 1-D byte array is a serialised model (XGBoost's strategies send one);
            # its length changes from round to round unless replies are averaged.
            resizable = not exact and want.dtype == "uint8" and len(want.shape) == 1 == len(spec.shape)
            if spec.shape != want.shape and not resizable:
                raise RejectedReply("shape", f"array {label} has shape {spec.shape}; the model's is {want.shape}")


def _check_number(what: str, value: Any) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise RejectedReply("not-finite", f"{what} is {v}; a reply's numbers must be finite")


def _check_weight(small: RecordDict, weight_key: str, max_weight: float) -> None:
    for name, mrec in small.metric_records.items():
        for key, value in mrec.items():
            if _is_weight(key, weight_key):
                ok = isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= max_weight
                if not ok:
                    shown = f"{value:g}" if isinstance(value, (int, float)) else repr(value)
                    raise RejectedReply(
                        "weight",
                        f"weight '{key}' is {shown}; it must be a positive number of examples"
                        + (f", at most {max_weight:g}" if math.isfinite(max_weight) else ""),
                    )
            else:
                _check_number(f"metric '{name}.{key}'", value)
    for name, crec in small.config_records.items():
        for key, cvalue in crec.items():
            _check_number(f"config value '{name}.{key}'", cvalue)


def _first_non_finite(nd: np.ndarray[Any, Any]) -> int | None:
    """Index (in storage order) of the first NaN or Inf, scanning in blocks with no copy of the array."""
    flat = nd.T.reshape(-1) if nd.flags.f_contiguous and not nd.flags.c_contiguous else _flat(nd)
    buf = np.empty(min(_BLOCK, flat.size), dtype=bool)
    for start in range(0, flat.size, _BLOCK):
        part = buf[: min(_BLOCK, flat.size - start)]
        np.isfinite(flat[start : start + part.size], out=part)
        if not part.all():
            return start + int(np.argmin(part))
    return None


@dataclass
class ReplyView:
    """A reply whose arrays were parsed (protection) and are ready to be judged (policy).

    `arrays` has every array's spec per ArrayRecord in wire order; `views` the
    numpy arrays as read-only views of the received buffer; `objects` the
    numpy arrays that hold pickled Python objects (never unpickled, never viewed),
    with why they are not plain numbers.
    """

    arrays: list[tuple[str, list[tuple[str, ArraySpec]]]]
    views: list[tuple[str, str, np.ndarray[Any, Any]]]
    objects: list[tuple[str, str, str]]
    small: RecordDict


def inspect_reply(content: WireRecords, model: ModelSpec | None = None) -> ReplyView:
    """Parse every numpy array's header of a reply; `RejectedReply` ("malformed") if one does not parse.

    This is protection, not policy: it runs for every reply whatever the
    problem's reply policy, costs no copy, and judges no value. `model` only
    names arrays in messages the way the model names them.
    """
    arrays: list[tuple[str, list[tuple[str, ArraySpec]]]] = []
    views: list[tuple[str, str, np.ndarray[Any, Any]]] = []
    objects: list[tuple[str, str, str]] = []
    for record, items in content.arrays.items():
        specs: list[tuple[str, ArraySpec]] = []
        for name, array in items:
            if array.stype == NUMPY_STYPE:
                try:
                    nd = npy_view(array)
                except RejectedReply as exc:
                    # Objects: a pickle, which nobody here unpickles; judged by the policy.
                    objects.append((record, name, f"array {_label(record, name, model)}: {exc}"))
                    specs.append((name, ArraySpec("object", tuple(array.shape), array.stype)))
                    continue
                except PayloadError as exc:
                    raise RejectedReply("malformed", f"array {_label(record, name, model)}: {exc}") from exc
                specs.append((name, ArraySpec(str(nd.dtype), tuple(nd.shape), array.stype)))
                views.append((record, name, nd))
            else:
                specs.append((name, ArraySpec(array.dtype, tuple(array.shape), array.stype)))
        arrays.append((record, specs))
    return ReplyView(arrays, views, objects, content.small)


def judge_reply(
    view: ReplyView,
    model: ModelSpec | None,
    *,
    message_type: str,
    weight_key: str,
    exact: bool,
    max_weight: float = MAX_WEIGHT,
) -> None:
    """The `strict` reply policy's judgement of a parsed reply; `RejectedReply` says what was wrong.

    Cheapest checks first: numpy arrays are plain numeric arrays (never pickled
    objects); a train reply (and, when `exact`, any reply with arrays) returns
    the model's arrays with their names, shapes and dtypes; the weight, if the
    reply carries one, is a positive number of examples up to `max_weight`;
    metrics are finite; then one pass over the data, in blocks and without
    copying it, finds NaN or Inf in floating-point arrays.

    `exact` is for weighted-mean aggregation, where replies are averaged. Left
    to the strategy, a 1-D uint8 array (a serialised model) may change length.
    """
    for _record, _name, problem in view.objects:
        raise RejectedReply("not-numeric", problem)
    # An instruction without arrays leaves nothing to compare with.
    if model and (message_type == MessageType.TRAIN or (exact and view.arrays)):
        _match_model(view.arrays, model, exact)
    _check_weight(view.small, weight_key, max_weight)
    for record, name, nd in view.views:
        if nd.dtype.kind in "fc":
            at = _first_non_finite(nd)
            if at is not None:
                raise RejectedReply(
                    "not-finite",
                    f"array {_label(record, name, model)} holds NaN or Inf (first at flat index {at}); "
                    "updates must be finite",
                )


def check_reply(
    content: WireRecords,
    model: ModelSpec | None,
    *,
    message_type: str,
    weight_key: str,
    exact: bool,
    max_weight: float = MAX_WEIGHT,
) -> None:
    """Protection and the `strict` policy in one: `inspect_reply`, then `judge_reply`."""
    judge_reply(
        inspect_reply(content, model),
        model,
        message_type=message_type,
        weight_key=weight_key,
        exact=exact,
        max_weight=max_weight,
    )


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
                if not is_number(value) and self._signature is not None:
                    if self._configs[name][key][0] != value:
                        raise NotAggregatable(f"config value {name}.{key} differs between replies")
        for name, mrec in small.metric_records.items():
            for key, mvalue in mrec.items():
                if isinstance(mvalue, list) and self._signature is not None:
                    prev = self._metrics[name][key]
                    if len(prev) != len(mvalue):
                        raise NotAggregatable(f"metric list {name}.{key} differs in length")
        arrays = _arrays_of(content)
        for name, items in arrays:
            for key, nd in items:
                if nd.dtype.kind not in "biufc":
                    raise NotAggregatable(f"array {name}.{key} of dtype {nd.dtype} is not numeric")
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
                fold(acc[key], nd, weight, first)
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
                wsum = float(cast(float, value)) * weight if is_number(value) else 0.0
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


def fold(acc: np.ndarray[Any, Any], nd: np.ndarray[Any, Any], weight: float, first: bool) -> None:
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


def is_number(value: Any) -> bool:
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
        (name, tuple(sorted((k, is_number(v)) for k, v in rec.items()))) for name, rec in small.config_records.items()
    )
    return (arrays, metrics, configs)
