"""The run config: defaults, every problem reported by name, mapping onto the app's config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedota_common.fab import load_app
from webserver.errors import ApplicationError
from webserver.problems.runconfig import (
    RunConfigError,
    app_overrides,
    format_assignments,
    parse_assignments,
    validate_run_config,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tabular_defaults() -> dict[str, Any]:
    return dict(load_app(REPO / "apps" / "tabular").default_config)


def errors_of(doc: dict[str, Any], defaults: dict[str, Any]) -> dict[str, list[str]]:
    with pytest.raises(RunConfigError) as caught:
        validate_run_config(doc, defaults)
    return caught.value.errors


def test_defaults_are_filled_in(tabular_defaults: dict[str, Any]) -> None:
    assert validate_run_config({}, tabular_defaults) == {
        "rounds": 5,
        "clients_per_round": 0,
        "min_clients": 2,
        "round_timeout": 300,
        "strategy": "FedAvg",
        "strategy_params": {},
        "num_selectors": 2,
        "app_config": {},
        "reply_policy": "flower",
    }
    assert validate_run_config(None, tabular_defaults)["rounds"] == 5
    assert validate_run_config({}, tabular_defaults, builtin=True)["reply_policy"] == "strict"


def test_every_connected_client_trains_by_default_whatever_the_minimum(tabular_defaults: dict[str, Any]) -> None:
    # 0 = no fixed sample size, so min_clients is not bounded by it.
    doc = validate_run_config({"min_clients": 5}, tabular_defaults)
    assert doc["clients_per_round"] == 0 and doc["min_clients"] == 5


def test_strategy_name_is_matched_case_insensitively(tabular_defaults: dict[str, Any]) -> None:
    assert validate_run_config({"strategy": "fedprox"}, tabular_defaults)["strategy"] == "FedProx"


def test_every_problem_is_reported_with_its_setting(tabular_defaults: dict[str, Any]) -> None:
    errors = errors_of(
        {
            "rounds": -3,
            "clients_per_round": 2,
            "min_clients": 5,
            "round_timeout": 0,
            "strategy": "FedMagic",
            "num_selectors": 9,
            "colour": "blue",
        },
        tabular_defaults,
    )
    assert errors["rounds"] == ["rounds must be a whole number between 1 and 10000; got -3"]
    assert "min_clients (5) cannot exceed clients_per_round (2)" in errors["min_clients"][0]
    assert "round_timeout" in errors["round_timeout"][0] and "got 0" in errors["round_timeout"][0]
    assert "FedMagic" in errors["strategy"][0] and "FedAvg" in errors["strategy"][0]
    assert "between 1 and 8; got 9" in errors["num_selectors"][0]
    assert "unknown setting 'colour'" in errors["colour"][0]


@pytest.mark.parametrize(
    ("doc", "field", "text"),
    [
        ({"rounds": 10001}, "rounds", "got 10001"),
        ({"rounds": 2.5}, "rounds", "got 2.5"),
        ({"rounds": True}, "rounds", "got True"),
        ({"rounds": "5"}, "rounds", "got '5'"),
        ({"clients_per_round": -1}, "clients_per_round", "at least 0"),
        ({"min_clients": 0}, "min_clients", "at least 1"),
        ({"round_timeout": 86401}, "round_timeout", "at most 86400"),
        ({"round_timeout": -1}, "round_timeout", "got -1"),
        ({"round_timeout": float("nan")}, "round_timeout", "got nan"),
        ({"num_selectors": 0}, "num_selectors", "between 1 and 8"),
        ({"strategy": 3}, "strategy", "got 3"),
        ({"strategy_params": [1]}, "strategy_params", "must be an object"),
    ],
)
def test_bad_values_are_refused(tabular_defaults: dict[str, Any], doc: dict[str, Any], field: str, text: str) -> None:
    errors = errors_of(doc, tabular_defaults)
    assert text in errors[field][0]


def test_a_run_config_that_is_not_an_object_is_refused(tabular_defaults: dict[str, Any]) -> None:
    assert "must be an object" in errors_of([1, 2], tabular_defaults)["run_config"][0]  # type: ignore[arg-type]


def test_the_error_is_an_application_error_naming_the_fields(tabular_defaults: dict[str, Any]) -> None:
    with pytest.raises(ApplicationError) as caught:
        validate_run_config({"rounds": 0}, tabular_defaults)
    assert caught.value.extra["run_config"]["rounds"]
    assert "rounds must be a whole number" in caught.value.message


def test_app_keys_in_params_must_exist_and_fit_their_type(tabular_defaults: dict[str, Any]) -> None:
    errors = errors_of(
        {
            "strategy_params": {"proximal-mu": "lots", "magic": 1},
            "app_config": {"local-epochs": 2.5, "num-server-rounds": 3},
        },
        tabular_defaults,
    )
    params = " ".join(errors["strategy_params"])
    assert "'proximal-mu' must be a number like its default 0.1; got 'lots'" in params
    assert "'magic' is not a key of the app's [tool.flwr.app.config]" in params
    assert "local-epochs" in params  # the list of what the app accepts
    app = " ".join(errors["app_config"])
    assert "'local-epochs' must be a whole number" in app
    assert "'num-server-rounds' is set by the run config's 'rounds'" in app


def test_app_overrides_map_settings_onto_the_app_keys(tabular_defaults: dict[str, Any]) -> None:
    overrides = app_overrides(
        {
            "rounds": 7,
            "clients_per_round": 4,
            "min_clients": 3,
            "round_timeout": 120,
            "strategy": "FedProx",
            "strategy_params": {"proximal-mu": 0.5},
            "app_config": {"local-epochs": 2, "learning-rate": 1},
        },
        tabular_defaults,
    )
    assert overrides == {
        "num-server-rounds": 7,
        "strategy": "FedProx",
        "round-timeout": 120.0,
        "min-available-nodes": 3,
        "clients-per-round": 4,
        "proximal-mu": 0.5,
        "local-epochs": 2,
        "learning-rate": 1,
    }
    assert isinstance(overrides["round-timeout"], float)  # the app declares a float
    # The result is exactly what the app itself accepts.
    load_app(REPO / "apps" / "tabular").fused_config(overrides)


def test_app_overrides_only_name_keys_the_app_declares() -> None:
    small_app = {"num-server-rounds": 3, "lr": 0.1}
    assert app_overrides({"rounds": 9, "app_config": {"lr": 0.5}}, small_app) == {"num-server-rounds": 9, "lr": 0.5}
    with pytest.raises(RunConfigError) as caught:
        app_overrides({"app_config": {"strategy": "x"}}, small_app)
    assert "the app accepts: lr, num-server-rounds" in caught.value.errors["app_config"][0]


def test_assignments_parse_toml_values_and_bare_words() -> None:
    parsed = parse_assignments(
        'proximal-mu = 0.1\n# note\n\nlocal-epochs=3\nflag = true\nname = FedAvg\nq = "a b"', field="x"
    )
    assert parsed == {"proximal-mu": 0.1, "local-epochs": 3, "flag": True, "name": "FedAvg", "q": "a b"}
    assert parse_assignments(format_assignments(parsed), field="x") == parsed
    with pytest.raises(ApplicationError) as caught:
        parse_assignments("just words", field="app_config")
    assert caught.value.field == "app_config" and "line 1" in caught.value.message


@pytest.mark.parametrize(("folder", "package"), [("tabular", "fedota_tabular"), ("image", "fedota_image")])
def test_builtin_apps_sample_exactly_clients_per_round(
    monkeypatch: pytest.MonkeyPatch, folder: str, package: str
) -> None:
    import importlib

    monkeypatch.syspath_prepend(str(REPO / "apps" / folder))
    strategy_module = importlib.import_module(f"{package}.strategy")
    task = importlib.import_module(f"{package}.task")

    class Grid:
        def get_node_ids(self) -> list[int]:
            return list(range(1, 11))

    from flwr.app import ArrayRecord, ConfigRecord

    def sampled(strategy: Any, phase: str) -> int:
        # Count who is sampled, without building Messages (they need a Flower run context).
        monkeypatch.setattr(strategy, "_construct_messages", lambda record, node_ids, kind: node_ids, raising=False)
        configure = strategy.configure_train if phase == "train" else strategy.configure_evaluate
        return len(list(configure(1, ArrayRecord(), ConfigRecord(), Grid())))

    config = dict(task.DEFAULT_RUN_CONFIG, **{"clients-per-round": 3, "min-available-nodes": 2})
    strategy = strategy_module.make_strategy(config)
    assert sampled(strategy, "train") == 3
    assert sampled(strategy, "evaluate") == 3
    # 0 keeps the fractions: every one of the 10 connected clients trains.
    assert sampled(strategy_module.make_strategy(task.DEFAULT_RUN_CONFIG), "train") == 10


def test_the_reply_policy_is_flower_or_strict(tabular_defaults: dict[str, Any]) -> None:
    assert validate_run_config({"reply_policy": "strict"}, tabular_defaults)["reply_policy"] == "strict"
    assert validate_run_config({"reply_policy": "flower"}, tabular_defaults, builtin=True)["reply_policy"] == "flower"
    assert (
        "reply_policy must be one of flower, strict"
        in errors_of({"reply_policy": "lenient"}, tabular_defaults)["reply_policy"][0]
    )


def test_a_setting_for_a_key_the_app_does_not_declare_is_refused_not_ignored() -> None:
    small_app = {"lr": 0.1}
    errors = errors_of({"rounds": 9, "strategy": "FedProx", "clients_per_round": 3}, small_app)
    assert errors["rounds"] == [
        "rounds sets the app's 'num-server-rounds', which this app does not declare in [tool.flwr.app.config]; "
        "the app accepts: lr"
    ]
    assert "'strategy'" in errors["strategy"][0] and "'clients-per-round'" in errors["clients_per_round"][0]
    # Left at their defaults they are simply not part of this app's run config.
    config = validate_run_config({"rounds": 5, "strategy": "FedAvg"}, small_app)
    assert "rounds" not in config and "strategy" not in config and "clients_per_round" not in config
    assert app_overrides({"app_config": {"lr": 0.5}}, small_app) == {"lr": 0.5}
    # The platform's own settings always apply: the coordinator uses them whatever the app declares.
    assert config["round_timeout"] == 300 and config["min_clients"] == 2 and config["num_selectors"] == 2
