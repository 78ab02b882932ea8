"""Services report every bad setting at once."""

from __future__ import annotations

import pytest

from coordinator.main import Settings as CoordinatorSettings
from fedota_common.settings import SettingsError
from selector.main import Settings as SelectorSettings


def test_all_problems_are_listed_together() -> None:
    env = {"FEDOTA_ROUND_TIMEOUT": "-3", "FEDOTA_MIN_RESULT_FRACTION": "2"}
    with pytest.raises(SettingsError) as err:
        CoordinatorSettings.from_env(env, [])
    text = str(err.value)
    assert "FEDOTA_APP (or --app) is required" in text
    assert "FEDOTA_ROUND_TIMEOUT='-3' is invalid: must be > 0" in text
    assert "FEDOTA_MIN_RESULT_FRACTION='2' is invalid" in text


def test_the_coordinators_own_checks_are_listed_together_too() -> None:
    env = {"FEDOTA_APP": "app", "FEDOTA_AGGREGATION": "median", "FEDOTA_REPORT_URL": "http://web/runs/1/"}
    with pytest.raises(SettingsError) as err:
        CoordinatorSettings.from_env(env, [])
    text = str(err.value)
    assert "FEDOTA_AGGREGATION='median' must be auto, weighted-mean or individual" in text
    assert "FEDOTA_REPORT_TOKEN is required when FEDOTA_REPORT_URL is set" in text
    assert "--tls-cert and --tls-key" in text and "--selector-token" in text


def test_flags_override_environment_and_run_config_parses() -> None:
    env = {"FEDOTA_APP": "from-env", "FEDOTA_RUN_CONFIG": '{"lr": 0.5}'}
    s = CoordinatorSettings.from_env(
        env, ["--app", "from-flag", "--run-config", "num-server-rounds=4 strategy='FedProx'", "--insecure"]
    )
    assert s.app == "from-flag"
    assert s.run_config == {"num-server-rounds": 4, "strategy": "FedProx"}


def test_selector_needs_its_coordinator() -> None:
    with pytest.raises(SettingsError, match="FEDOTA_COORDINATOR"):
        SelectorSettings.from_env({}, [])
