"""Which rounds selectors may fold: proven from the running ServerApp itself.

A selector may replace its clients' replies by their weighted mean only when
the code about to aggregate them would compute exactly that mean from the
replies one by one. Nothing the app declares (a run-config key, a class name)
proves it; the call that is waiting for the replies does. So `send_and_receive`
looks at its caller:

- Flower's `Strategy.start` (the Message API): the strategy is `self`;
- Flower's `default_fit_workflow` / `default_evaluate_workflow` (the
  compatibility API's `DefaultWorkflow`): the strategy is `context.strategy`.

Rounds are folded only when that strategy is one of Flower's own weighted-mean
strategies (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, in either
API) and nothing on the way from the replies to the mean is the app's own: the
aggregation methods resolve to Flower's functions, and metrics are aggregated
by Flower's default (Message API) or not at all (compatibility API, where a
user's `*_metrics_aggregation_fn` sees one entry per reply). Anything else is
sent individually, which is what Flower's runtime does: SecAgg+ stages, DP
wrappers, FedMedian, Krum, a subclass that overrides aggregation, a ServerApp
that calls the Grid itself.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from types import FrameType
from typing import Any

from flwr.app import MessageType
from flwr.server import strategy as legacy
from flwr.server.workflow import default_workflows
from flwr.serverapp import strategy as fl
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from coordinator.resume import OFFSET_OF
from fedota_common.aggregate import LEGACY_WEIGHT_KEY

log = logging.getLogger(__name__)

# Flower's own aggregation functions that compute (or start from) the weighted mean of the replies.
_TRAIN = frozenset(
    {fl.FedAvg.aggregate_train, fl.FedAvgM.aggregate_train}
    | {cls.aggregate_train for cls in (fl.FedAdam, fl.FedYogi, fl.FedAdagrad)}
)
_EVALUATE = frozenset({fl.FedAvg.aggregate_evaluate})
_CHECK = frozenset({fl.FedAvg._check_and_log_replies})
_LEGACY_FIT = frozenset(
    {legacy.FedAvg.aggregate_fit, legacy.FedAvgM.aggregate_fit}
    | {cls.aggregate_fit for cls in (legacy.FedAdam, legacy.FedYogi, legacy.FedAdagrad)}
)
_LEGACY_EVALUATE = frozenset({legacy.FedAvg.aggregate_evaluate})

_START = fl.Strategy.start.__code__
_LEGACY_FIT_CALLER = default_workflows.default_fit_workflow.__code__
_LEGACY_EVALUATE_CALLER = default_workflows.default_evaluate_workflow.__code__


@dataclass(frozen=True)
class Folding:
    """The decision for one round: fold (weighted by `weight_key`) or not, and why.

    `strategy_round`: the messages are a Flower strategy's round (they send the
    model and expect it back), the only replies a `strict` reply policy judges.
    """

    fold: bool
    weight_key: str
    why: str
    strategy_round: bool = True
    # The strategy is a Message-API FedAvg (or starts from its mean): its mean of the
    # selectors' partial means can be computed for it, to the bit (coordinator/merging.py).
    merge: bool = False


def _own(strategy: Any, name: str, allowed: frozenset[Any]) -> bool:
    """Whether `strategy.<name>` is one of Flower's functions in `allowed` (not the app's, not patched).

    A resumed run's methods are wrapped to continue the round numbering
    (coordinator/resume.py); what counts is the method they wrap.
    """
    patched = vars(strategy).get(name)
    if patched is not None:
        return getattr(patched, OFFSET_OF, None) in allowed
    return getattr(type(strategy), name, None) in allowed


def _local(frame: FrameType, name: str) -> Any:
    """One local variable of a running function's frame, without holding on to the others.

    Before Python 3.13, `frame.f_locals` copies every local into a dict that
    the frame keeps until it ends or is read again. Read from `Strategy.start`
    while round r is sent, it kept round r-1's replies (`train_replies`) alive
    through round r's aggregation: one more model at the coordinator's peak.
    The copy is emptied again; a function's frame only caches its locals there
    (a tracer refreshes the dict before it reads it).
    """
    snapshot = frame.f_locals
    value = snapshot.get(name)
    if type(snapshot) is dict and frame.f_code.co_flags & inspect.CO_OPTIMIZED:
        snapshot.clear()
    return value


def strategy_of(caller: FrameType | None) -> Any:
    """The Message-API strategy whose `start` is `caller`, or None."""
    if caller is not None and caller.f_code is _START:
        return _local(caller, "self")
    return None


def _message_api(strategy: Any, message_type: str) -> Folding:
    kind = type(strategy).__name__
    if not isinstance(strategy, fl.FedAvg):
        return Folding(False, "", f"{kind} is not one of Flower's weighted-mean strategies")
    if not _own(strategy, "_check_and_log_replies", _CHECK):
        return Folding(False, "", f"{kind} checks replies its own way")
    if message_type == MessageType.TRAIN:
        if not _own(strategy, "aggregate_train", _TRAIN):
            return Folding(False, "", f"{kind} overrides aggregate_train")
        if strategy.train_metrics_aggr_fn is not aggregate_metricrecords:
            return Folding(False, "", f"{kind} aggregates train metrics with its own function")
    else:
        if not _own(strategy, "aggregate_evaluate", _EVALUATE):
            return Folding(False, "", f"{kind} overrides aggregate_evaluate")
        if strategy.evaluate_metrics_aggr_fn is not aggregate_metricrecords:
            return Folding(False, "", f"{kind} aggregates evaluate metrics with its own function")
    key = str(strategy.weighted_by_key)
    return Folding(True, key, f"{kind} aggregates with Flower's weighted mean by '{key}'", merge=True)


def _compat_api(strategy: Any, message_type: str) -> Folding:
    kind = type(strategy).__name__
    if not isinstance(strategy, legacy.FedAvg):
        return Folding(False, "", f"{kind} is not one of Flower's weighted-mean strategies")
    if message_type == MessageType.TRAIN:
        if not _own(strategy, "aggregate_fit", _LEGACY_FIT):
            return Folding(False, "", f"{kind} overrides aggregate_fit")
        if strategy.fit_metrics_aggregation_fn is not None:
            return Folding(False, "", f"{kind} passes each reply's metrics to fit_metrics_aggregation_fn")
    else:
        if not _own(strategy, "aggregate_evaluate", _LEGACY_EVALUATE):
            return Folding(False, "", f"{kind} overrides aggregate_evaluate")
        if strategy.evaluate_metrics_aggregation_fn is not None:
            return Folding(False, "", f"{kind} passes each reply's metrics to evaluate_metrics_aggregation_fn")
    return Folding(True, LEGACY_WEIGHT_KEY, f"{kind} (compatibility API) aggregates with Flower's weighted mean")


def folding_for(caller: FrameType | None, message_type: str) -> Folding:
    """Decide whether the replies that `caller` is about to receive may be folded at selectors."""
    if message_type not in (MessageType.TRAIN, MessageType.EVALUATE):
        return Folding(False, "", f"{message_type} messages are never folded", strategy_round=False)
    if caller is None:
        return Folding(False, "", "pushed by the ServerApp itself", strategy_round=False)
    code = caller.f_code
    if code is _START:
        return _message_api(_local(caller, "self"), message_type)
    if code is _LEGACY_FIT_CALLER or code is _LEGACY_EVALUATE_CALLER:
        context = _local(caller, "context")
        return _compat_api(getattr(context, "strategy", None), message_type)
    where = f"{code.co_name} ({caller.f_globals.get('__name__', '?')})"
    return Folding(False, "", f"sent by {where}, not by a Flower strategy's round", strategy_round=False)
