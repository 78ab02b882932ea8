"""A problem's run config: the platform's run settings as one validated document.

The document is what the problem setter chooses: the platform's own settings (round
timeout, clients to wait for, selectors, reply policy) and overrides of the Flower app's
`[tool.flwr.app.config]` (`app_config`, plus `rounds`, `strategy` and
`clients_per_round`, which name the app's `num-server-rounds`, `strategy` and
`clients-per-round`). `app_overrides` turns it into the overrides the coordinator and
clients run with. Nothing is silently ignored: a setting that names a key the app does
not declare is refused (naming the keys it declares) unless it is left at its default,
and then it is left out. Every problem is reported at once, each under the name of the
setting at fault.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from webserver.errors import ApplicationError

STRATEGIES = (
    "FedAvg",
    "FedProx",
    "FedAvgM",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "Bulyan",
)

DEFAULTS: dict[str, Any] = {
    "rounds": 5,
    # 0: every connected client trains each round. A fixed number makes each round
    # wait until that many are connected, which stalls a small federation.
    "clients_per_round": 0,
    "min_clients": 2,
    "round_timeout": 300,
    "strategy": "FedAvg",
    "strategy_params": {},
    "num_selectors": 2,
    "app_config": {},
    # Filled in by kind of app (`default_reply_policy`).
    "reply_policy": "",
}

# How replies are judged (fedota_common/replies.py): `flower` delivers to the ServerApp
# every reply Flower's runtime would; `strict` adds the platform's value checks.
REPLY_POLICIES = ("flower", "strict")


def default_reply_policy(*, builtin: bool) -> str:
    """`strict` for the built-in apps (written for it), `flower` for uploaded ones (as Flower would run them)."""
    return "strict" if builtin else "flower"


MAX_ROUNDS = 10_000
MAX_ROUND_TIMEOUT = 86_400
MAX_SELECTORS = 8

# Settings that mean something only through the app key they set: an app without the
# key cannot take them.
APP_ONLY = ("rounds", "strategy", "clients_per_round")

# Platform setting -> the app config key it sets (when the app declares that key).
APP_KEYS = {
    "rounds": "num-server-rounds",
    "strategy": "strategy",
    "round_timeout": "round-timeout",
    "min_clients": "min-available-nodes",
    "clients_per_round": "clients-per-round",
}

Scalar = bool | int | float | str


class RunConfigError(ApplicationError):
    """The run config is invalid; `errors` maps each setting to its problems."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        lines = [msg for msgs in errors.values() for msg in msgs]
        super().__init__("invalid run config: " + "; ".join(lines), field=None, extra={"run_config": errors})


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    return "text"


def _fits(default: Any, value: Any) -> bool:
    """Whether `value` may override an app config key whose default is `default`."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return _is_whole(value)
    if isinstance(default, float):
        return _is_number(value)
    return isinstance(value, str)


def validate_run_config(
    doc: Mapping[str, Any] | None, app_default_config: Mapping[str, Any], *, builtin: bool = False
) -> dict[str, Any]:
    """The normalised run config (defaults filled in), or RunConfigError listing every problem.

    `builtin`: the app is one of the platform's (its reply policy defaults to `strict`).
    """
    errors: dict[str, list[str]] = {}

    def fail(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    if doc is None:
        doc = {}
    if not isinstance(doc, Mapping):
        raise RunConfigError({"run_config": [f"the run config must be an object; got {type(doc).__name__}"]})
    out: dict[str, Any] = {}
    for key in doc:
        if key not in DEFAULTS:
            fail(key, f"unknown setting {key!r}; the run config accepts: {', '.join(DEFAULTS)}")

    def whole(field: str, low: int, high: int | None) -> int:
        value = doc.get(field, DEFAULTS[field])
        bound = f"between {low} and {high}" if high is not None else f"of at least {low}"
        if not _is_whole(value) or value < low or (high is not None and value > high):
            fail(field, f"{field} must be a whole number {bound}; got {value!r}")
            return int(DEFAULTS[field])
        return int(value)

    out["rounds"] = whole("rounds", 1, MAX_ROUNDS)
    out["clients_per_round"] = whole("clients_per_round", 0, None)
    out["min_clients"] = whole("min_clients", 1, None)
    if "min_clients" not in errors and "clients_per_round" not in errors and out["clients_per_round"]:
        if out["min_clients"] > out["clients_per_round"]:
            fail(
                "min_clients",
                f"min_clients ({out['min_clients']}) cannot exceed clients_per_round ({out['clients_per_round']})",
            )
    out["num_selectors"] = whole("num_selectors", 1, MAX_SELECTORS)

    timeout = doc.get("round_timeout", DEFAULTS["round_timeout"])
    if not _is_number(timeout) or timeout <= 0 or timeout > MAX_ROUND_TIMEOUT:
        fail(
            "round_timeout",
            f"round_timeout must be a number of seconds above 0 and at most {MAX_ROUND_TIMEOUT}; got {timeout!r}",
        )
        timeout = DEFAULTS["round_timeout"]
    out["round_timeout"] = timeout

    strategy = doc.get("strategy", DEFAULTS["strategy"])
    by_lower = {name.lower(): name for name in STRATEGIES}
    if not isinstance(strategy, str) or strategy.strip().lower() not in by_lower:
        fail("strategy", f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        strategy = DEFAULTS["strategy"]
    out["strategy"] = by_lower[strategy.strip().lower()]

    policy = doc.get("reply_policy") or default_reply_policy(builtin=builtin)
    if policy not in REPLY_POLICIES:
        fail("reply_policy", f"reply_policy must be one of {', '.join(REPLY_POLICIES)}; got {policy!r}")
        policy = default_reply_policy(builtin=builtin)
    out["reply_policy"] = policy

    declared = ", ".join(sorted(app_default_config)) or "(none)"
    for setting in APP_ONLY:
        key = APP_KEYS[setting]
        if key in app_default_config:
            continue
        if setting in doc and setting not in errors and out[setting] != DEFAULTS[setting]:
            fail(
                setting,
                f"{setting} sets the app's {key!r}, which this app does not declare in [tool.flwr.app.config]; "
                f"the app accepts: {declared}",
            )
        # Left at its default it is simply not offered: the app has no such setting.
        out.pop(setting, None)

    platform_keys = {APP_KEYS[k] for k in APP_KEYS}
    accepted = ", ".join(sorted(app_default_config)) or "(none)"
    for field in ("strategy_params", "app_config"):
        raw = doc.get(field, {})
        if not isinstance(raw, Mapping):
            fail(field, f"{field} must be an object of app config keys and values; got {raw!r}")
            out[field] = {}
            continue
        clean: dict[str, Scalar] = {}
        for key, value in raw.items():
            if key in platform_keys and key in app_default_config:
                setting = next(k for k, v in APP_KEYS.items() if v == key)
                fail(field, f"{field}: {key!r} is set by the run config's {setting!r}; set that instead")
            elif key not in app_default_config:
                fail(
                    field,
                    f"{field}: {key!r} is not a key of the app's [tool.flwr.app.config]; the app accepts: {accepted}",
                )
            elif not _fits(app_default_config[key], value):
                default = app_default_config[key]
                fail(
                    field, f"{field}: {key!r} must be {_type_name(default)} like its default {default!r}; got {value!r}"
                )
            else:
                clean[str(key)] = value
        out[field] = clean
    both = set(out["strategy_params"]) & set(out["app_config"])
    for key in sorted(both):
        fail("app_config", f"app_config: {key!r} is also in strategy_params; give it once")
    if errors:
        raise RunConfigError(errors)
    return out


def app_overrides(doc: Mapping[str, Any] | None, app_default_config: Mapping[str, Any]) -> dict[str, Scalar]:
    """The run config as overrides of the app's `[tool.flwr.app.config]` (only keys the app declares)."""
    config = validate_run_config(doc, app_default_config)
    overrides: dict[str, Scalar] = {}
    for setting, key in APP_KEYS.items():
        if key not in app_default_config or setting not in config:
            continue
        value = config[setting]
        default = app_default_config[key]
        # Keep the app's own type: its code may do float(...) or int(...) either way,
        # but Flower's config records are typed.
        if isinstance(default, float) and not isinstance(default, bool):
            value = float(value)
        elif isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            value = int(value) if value.is_integer() else value
        overrides[key] = value
    overrides.update(config["strategy_params"])
    overrides.update(config["app_config"])
    return overrides


def parse_assignments(text: str, *, field: str) -> dict[str, Scalar]:
    """`key = value` lines (TOML values; bare words are text) as a dict, for the run config form."""
    import tomllib

    result: dict[str, Scalar] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise ApplicationError(f"line {number}: expected key = value, got {line!r}", field=field)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word such as FedAvg or a file name
        if not isinstance(value, bool | int | float | str):
            raise ApplicationError(f"line {number}: {key} must be a number, true/false or text", field=field)
        result[key] = value
    return result


def format_assignments(values: Mapping[str, Scalar]) -> str:
    """The inverse of `parse_assignments`, for pre-filling the form."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, str):
            shown = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            shown = repr(value)
        lines.append(f"{key} = {shown}")
    return "\n".join(lines)
