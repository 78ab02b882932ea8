"""The reply policy: `flower` delivers what Flower delivers, `strict` keeps the platform's rules.

Protection (what must parse) refuses under either policy. Under `flower` a
selector folds only what it can fold exactly as Flower's FedAvg would average
the replies one by one, and forwards everything else on its own; the
coordinator hands every such reply to the ServerApp unchanged. A round with
rejections or no results says so, and a run that got nothing fails.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from coordinator.grid import GridPolicy, SelectorTierGrid
from coordinator.hub import Hub
from coordinator.main import BUILTIN_APPS
from coordinator.main import Settings as CoordinatorSettings
from coordinator.rounds import RoundTracker
from fedota_common.aggregate import REJECTED, inspect_reply, model_spec
from fedota_common.payload import RejectedReply, decode_content
from fedota_common.replies import (
    FLOWER,
    STRICT,
    FlowerPolicy,
    StrictPolicy,
    builtin_app_names,
    default_policy_name,
    reply_policy,
)
from fedota_common.settings import SettingsError
from protos.coordinator.v1 import coordinator_pb2 as cpb
from selector.main import Settings as SelectorSettings
from tests.unit.test_update_validation import (
    BAD,
    SHAPES,
    CheckingSelector,
    Selector,
    _instruction,
    _model,
    _reply,
    _wire,
    as_strategy_round,
)

pytestmark = pytest.mark.usefixtures("task_identity")

KW: dict[str, Any] = {"message_type": MessageType.TRAIN, "weight_key": "num-examples"}


def _judge(policy: Any, reply: RecordDict) -> None:
    spec = model_spec(_instruction())
    wire = _wire(reply)
    policy.judge(inspect_reply(wire, spec), spec, exact=True, **KW)


# ---- the policy objects ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD))
def test_strict_refuses_what_the_platform_always_refused_and_flower_delivers_it(case: str) -> None:
    arrays, weight, reason, message = BAD[case]
    with pytest.raises(RejectedReply) as info:
        _judge(StrictPolicy(), _reply(arrays, weight))
    assert info.value.reason == reason and message in str(info.value)
    _judge(FlowerPolicy(), _reply(arrays, weight))  # no exception: the ServerApp gets it


@pytest.mark.parametrize("case", list(BAD))
def test_flower_never_folds_a_reply_strict_would_refuse(case: str) -> None:
    arrays, weight, _reason, message = BAD[case]
    spec = model_spec(_instruction())
    view = inspect_reply(_wire(_reply(arrays, weight)), spec)
    assert message in FlowerPolicy().fold_refusal(view, spec, **KW)


def test_flower_folds_float_replies_like_the_model_but_not_integer_ones() -> None:
    spec = model_spec(_instruction())
    good = inspect_reply(_wire(_reply(_model(1), 5)), spec)
    assert FlowerPolicy().fold_refusal(good, spec, **KW) == ""
    ints = {"w": np.arange(4, dtype=np.int64)}
    int_spec = model_spec(_instruction(ints))
    view = inspect_reply(_wire(_reply(ints, 5)), int_spec)
    # Flower's FedAvg averages integer arrays into float64; a partial mean cast back would differ.
    assert "averaged into floats" in FlowerPolicy().fold_refusal(view, int_spec, **KW)
    assert StrictPolicy().fold_refusal(view, int_spec, **KW) == ""


def test_protection_refuses_a_broken_array_under_either_policy() -> None:
    reply = _reply(_model(), 5)
    data = bytearray(_wire(reply).arrays["arrays"][0][1].data)
    wire = _wire(reply)
    name, array = wire.arrays["arrays"][0]
    wire.arrays["arrays"][0] = (name, type(array)(array.dtype, array.shape, array.stype, memoryview(data[:-3])))
    with pytest.raises(RejectedReply) as info:
        inspect_reply(wire)
    assert info.value.reason == "malformed"


def test_policies_by_name_and_the_default_for_built_in_apps() -> None:
    assert reply_policy("flower").name == FLOWER and reply_policy(" Strict ").name == STRICT
    with pytest.raises(ValueError, match="choose flower or strict"):
        reply_policy("lenient")
    builtin = builtin_app_names(BUILTIN_APPS)
    assert {"fedota-tabular", "fedota-image"} <= builtin
    assert default_policy_name("fedota-tabular", builtin) == STRICT
    assert default_policy_name("someones-own-app", builtin) == FLOWER


def test_the_policy_is_a_setting_of_both_services() -> None:
    base = {"FEDOTA_APP": "apps/tabular", "FEDOTA_INSECURE": "1"}
    assert CoordinatorSettings.from_env(base, []).reply_policy == "auto"
    assert CoordinatorSettings.from_env({**base, "FEDOTA_REPLY_POLICY": "flower"}, []).reply_policy == "flower"
    assert CoordinatorSettings.from_env(base, ["--reply-policy", "strict"]).reply_policy == "strict"
    with pytest.raises(SettingsError, match="FEDOTA_REPLY_POLICY='nice' must be auto, flower or strict"):
        CoordinatorSettings.from_env({**base, "FEDOTA_REPLY_POLICY": "nice"}, [])
    sel = {"FEDOTA_COORDINATOR": "127.0.0.1:1", "FEDOTA_INSECURE": "1"}
    # A selector defers to its coordinator unless told to refuse at once.
    assert SelectorSettings.from_env(sel, []).reply_policy.name == FLOWER
    assert SelectorSettings.from_env({**sel, "FEDOTA_REPLY_POLICY": "strict"}, []).reply_policy.name == STRICT
    with pytest.raises(SettingsError, match="unknown reply policy 'x'"):
        SelectorSettings.from_env({**sel, "FEDOTA_REPLY_POLICY": "x"}, [])


# ---- the selector under `flower` ------------------------------------------------------------


def test_under_flower_a_selector_forwards_what_it_cannot_fold_and_folds_the_rest() -> None:
    sel = Selector()
    sel.core.reply_policy = FlowerPolicy()
    shifted = {k: v + np.float32(1) for k, v in sel.model.items()}
    sel.submit("a", _reply(shifted, 3))
    # Another dtype than the model's: strict would reject it; flower passes it on as it is.
    doubled = {k: v.astype(np.float64) * 2 for k, v in sel.model.items()}
    sel.submit("b", _reply(doubled, 0))
    header, data = sel.upstream.results.get(timeout=10)
    assert header.aggregation == cpb.AGGREGATION_INDIVIDUAL and list(header.message_ids) == ["t-b"]
    forwarded = decode_content(bytearray(data))
    assert forwarded["arrays"]["fc.weight"].numpy().dtype == np.float64
    assert forwarded["metrics"]["num-examples"] == 0
    lower = {k: v - np.float32(2) for k, v in sel.model.items()}
    sel.submit("c", _reply(lower, 7))
    result = sel.aggregate()
    for key in SHAPES:
        np.testing.assert_allclose(result[key], (shifted[key] * 3 + lower[key] * 7) / 10, rtol=1e-6)
    assert sel.core.rejected == {}


@pytest.mark.parametrize("case", ["nan", "shape", "missing", "zero-weight", "objects"])
def test_under_flower_a_selector_rejects_nothing_strict_would(case: str) -> None:
    arrays, weight, _reason, _message = BAD[case]
    sel = Selector()
    sel.core.reply_policy = FlowerPolicy()
    sel.submit("a", _reply(arrays, weight))
    header, _data = sel.upstream.results.get(timeout=10)
    assert list(header.message_ids) == ["t-a"] and header.aggregation == cpb.AGGREGATION_INDIVIDUAL
    assert sel.core.rejected == {}


# ---- the coordinator ------------------------------------------------------------------------


def _round(
    tmp_path: Path, hub: Hub, replies: dict[int, RecordDict], *, strategy_round: bool = True
) -> tuple[list[Message], RoundTracker]:
    """One train round; as if sent by a Flower strategy (what `strict` judges) unless told otherwise."""
    model = _model()
    CheckingSelector(hub, replies)
    lines: list[str] = []
    tracker = RoundTracker(tmp_path, weight_key="num-examples", total_rounds=1, keep_checkpoints=0, echo=lines.append)
    tracker.lines = lines  # type: ignore[attr-defined]
    policy = GridPolicy(
        round_timeout=60.0, overselect=1.0, min_result_fraction=0.0, aggregation="individual", weight_key="num-examples"
    )
    grid = as_strategy_round(SelectorTierGrid(hub, policy, tracker), strategy_round)
    started = time.monotonic()
    sent = [Message(_instruction(model), n, MessageType.TRAIN) for n in replies]
    out = list(grid.send_and_receive(sent))
    assert time.monotonic() - started < 30
    return out, tracker


def test_under_flower_the_coordinator_delivers_other_dtypes_shapes_weights_and_nan(tmp_path: Path) -> None:
    model = _model()
    odd = {
        1: _reply({k: v.astype(np.float64) for k, v in model.items()}, 4),
        2: _reply({**model, "fc.weight": np.zeros((3, 4), np.float32)}, 0),
        3: RecordDict({"metrics": MetricRecord({"loss": math.nan})}),
    }
    replies, tracker = _round(tmp_path, Hub(FlowerPolicy()), odd)
    assert not [r for r in replies if r.has_error()]
    by_node = {r.metadata.src_node_id: r.content for r in replies}
    assert by_node[1]["arrays"]["fc.weight"].numpy().dtype == np.float64
    assert by_node[2]["arrays"]["fc.weight"].numpy().shape == (3, 4)
    assert by_node[2]["metrics"]["num-examples"] == 0
    assert not by_node[3].array_records
    tracker.finish(None)
    assert tracker.failure() == ""
    assert tracker.rounds[0]["rejected"] == 0 and tracker.rounds[0]["results"] == 3


def test_under_strict_a_round_says_what_was_rejected_and_a_run_with_nothing_accepted_fails(tmp_path: Path) -> None:
    model = _model()
    wrong = _reply({k: v.astype(np.float64) for k, v in model.items()}, 4)
    replies, tracker = _round(tmp_path, Hub(StrictPolicy()), {1: wrong, 2: wrong})
    assert all(r.has_error() and r.error.reason.startswith(REJECTED) for r in replies)
    tracker.finish(None)
    record = tracker.rounds[0]
    assert record["rejected"] == 2 and record["no_results"] is True
    assert record["rejected_reasons"] == {"array 'fc.weight' has dtype float64; the model's is float32": 2}
    lines = tracker.lines  # type: ignore[attr-defined]
    assert any(
        line.startswith("warning: round 1: 2 replies rejected: array 'fc.weight' has dtype") for line in lines
    ), lines
    assert any(line.startswith("warning: round 1: no results accepted") for line in lines), lines
    why = tracker.failure()
    assert why.startswith("no round got a single accepted training reply: 2 asked for, 2 rejected")
    assert "has dtype float64; the model's is float32 (x2)" in why


def test_a_run_with_one_accepted_reply_does_not_fail_and_errors_alone_do(tmp_path: Path) -> None:
    tracker = RoundTracker(tmp_path, weight_key="num-examples", total_rounds=2, keep_checkpoints=0, echo=print)
    sent = Message(_instruction(), 1, MessageType.TRAIN)
    tracker.on_push(MessageType.TRAIN, "1", [sent])
    failed = Message(Error(code=0, reason="no reply before the round deadline"), reply_to=sent)
    tracker.on_close(MessageType.TRAIN, "1", [failed], [])
    assert "1 failed or never came" in tracker.failure()
    tracker.on_push(MessageType.TRAIN, "2", [sent])
    ok = Message(_reply(_model(), 3), reply_to=sent)
    tracker.on_close(MessageType.TRAIN, "2", [ok], [1])
    assert tracker.failure() == ""
    tracker.finish(None)


def test_the_run_started_event_says_which_reply_policy_applies() -> None:
    from coordinator.report import Reporter, Target

    reporter = Reporter(Target("http://127.0.0.1:9/internal/v1/runs/1/", "t"))
    reporter.run_started(total_rounds=2, app="a", fab_sha256="x", reply_policy=FLOWER)
    assert reporter.events[-1]["kind"] == "run_started" and reporter.events[-1]["reply_policy"] == "flower"


def test_strict_does_not_judge_messages_that_are_no_strategys_round(tmp_path: Path) -> None:
    """A SecAgg+ stage's reply carries keys and shares, not the model it was sent: strict lets it through."""
    stage = RecordDict({"secaggplus_configs": ConfigRecord({"stage": "share_keys", "public-key": b"k"})})
    replies, tracker = _round(tmp_path, Hub(StrictPolicy()), {1: stage, 2: stage}, strategy_round=False)
    assert not [r for r in replies if r.has_error()]
    tracker.finish(None)
    assert tracker.rounds[0]["rejected"] == 0
