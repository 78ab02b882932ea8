"""Reply policies: which replies a problem's ServerApp receives, and which a selector may fold.

Protection and policy are two layers. Protection (frame and size bounds,
declared sizes and hashes, headers and arrays that must parse, task ownership,
rate limits) runs for every reply and lives with the wire code. A reply policy
judges values, and is chosen per problem:

- `flower` delivers what Flower's own runtime would deliver: any dtype or
  shape, no arrays at all, zero, negative or missing weights, NaN or Inf, extra
  records. What the strategy does with them is the strategy's business.
- `strict` is the platform's own rules (`fedota_common.aggregate.judge_reply`):
  a reply must return the model's arrays, finite, with a positive weight up to
  `MAX_WEIGHT`. A reply that breaks them is rejected, and the round says so.

Under either policy a selector folds a reply into its partial weighted mean
only when the sum is what Flower's FedAvg would compute from the replies one
by one; `flower` forwards every other reply on its own, never rejecting it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import ClassVar

from fedota_common.aggregate import MAX_WEIGHT, ModelSpec, ReplyView, judge_reply
from fedota_common.payload import NUMPY_STYPE, RejectedReply

FLOWER = "flower"
STRICT = "strict"
NAMES = (FLOWER, STRICT)


class ReplyPolicy:
    """What happens to a reply that protection let through."""

    name: ClassVar[str]

    def judge(
        self,
        view: ReplyView,
        model: ModelSpec | None,
        *,
        message_type: str,
        weight_key: str,
        exact: bool,
        max_weight: float = MAX_WEIGHT,
    ) -> None:
        """Raise `RejectedReply` if the reply must not reach the ServerApp."""
        raise NotImplementedError

    def fold_refusal(self, view: ReplyView, model: ModelSpec | None, *, message_type: str, weight_key: str) -> str:
        """Why a judged reply must not be folded into a partial weighted mean ("" if it may be).

        A reply that may be folded can still turn out unfoldable against the
        replies folded before it (`WeightedMean.add` raises `NotAggregatable`).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"ReplyPolicy({self.name!r})"


class StrictPolicy(ReplyPolicy):
    """The platform's rules: replies like the model, finite, with a sane weight; others rejected."""

    name = STRICT

    def judge(
        self,
        view: ReplyView,
        model: ModelSpec | None,
        *,
        message_type: str,
        weight_key: str,
        exact: bool,
        max_weight: float = MAX_WEIGHT,
    ) -> None:
        judge_reply(view, model, message_type=message_type, weight_key=weight_key, exact=exact, max_weight=max_weight)

    def fold_refusal(self, view: ReplyView, model: ModelSpec | None, *, message_type: str, weight_key: str) -> str:
        # Judged already; integer arrays fold into an aggregate cast back to the model's dtype, as always.
        return ""


class FlowerPolicy(ReplyPolicy):
    """Flower's rules: every reply that protection let through reaches the ServerApp unchanged."""

    name = FLOWER

    def judge(
        self,
        view: ReplyView,
        model: ModelSpec | None,
        *,
        message_type: str,
        weight_key: str,
        exact: bool,
        max_weight: float = MAX_WEIGHT,
    ) -> None:
        return None

    def fold_refusal(self, view: ReplyView, model: ModelSpec | None, *, message_type: str, weight_key: str) -> str:
        # Only replies that `strict` would accept are folded: whatever the coordinator's
        # policy, a partial aggregate then holds nothing it could refuse, and a reply
        # the coordinator must judge reaches it on its own.
        try:
            judge_reply(view, model, message_type=message_type, weight_key=weight_key, exact=True)
        except RejectedReply as exc:
            return str(exc)
        # Flower's FedAvg averages into `array * (w / total)`: float for integer arrays.
        # An aggregate cast back to integers would not be that mean.
        for record, items in view.arrays:
            for name, spec in items:
                if spec.stype != NUMPY_STYPE or not _floating(spec.dtype):
                    return (
                        f"array '{record}/{name}' of dtype {spec.dtype} is averaged into floats by Flower; "
                        "a partial mean of its dtype would differ"
                    )
        return ""


def _floating(dtype: str) -> bool:
    import numpy as np

    try:
        return np.dtype(dtype).kind in "fc"
    except TypeError:
        return False


_POLICIES: dict[str, ReplyPolicy] = {STRICT: StrictPolicy(), FLOWER: FlowerPolicy()}


def reply_policy(name: str) -> ReplyPolicy:
    """The policy called `name` (`flower` or `strict`); ValueError names the choices."""
    try:
        return _POLICIES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown reply policy {name!r}; choose {' or '.join(NAMES)}") from None


def builtin_app_names(apps_dir: Path) -> frozenset[str]:
    """The `[project] name` of every app folder under `apps_dir` (the built-in apps)."""
    names: set[str] = set()
    if not apps_dir.is_dir():
        return frozenset()
    for pyproject in sorted(apps_dir.glob("*/pyproject.toml")):
        try:
            name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        if isinstance(name, str) and name:
            names.add(name)
    return frozenset(names)


def default_policy_name(app_name: str, builtin: frozenset[str]) -> str:
    """`strict` for a built-in app, `flower` for any other (an uploaded app gets what Flower gives it).

    The website knows which apps are built in and should say so explicitly
    (`FEDOTA_REPLY_POLICY`); this is the fallback when it does not. An uploaded
    app that takes a built-in app's name gets `strict`, which only refuses more.
    """
    return STRICT if app_name in builtin else FLOWER
