"""Secrets from files: FEDOTA_<KEY>_FILE names a mounted secret (Docker or Swarm) instead of
the secret sitting in the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.main import Settings as CoordinatorSettings
from fedota_common.settings import SettingsError
from selector.main import Settings as SelectorSettings


def _secret(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_the_coordinator_reads_its_tokens_and_tls_from_files(tmp_path: Path) -> None:
    env = {
        "FEDOTA_APP": "app.fab",
        "FEDOTA_REPORT_URL": "http://web:8000/internal/v1/runs/3/",
        "FEDOTA_REPORT_TOKEN_FILE": _secret(tmp_path, "report-token", "report-secret\n"),
        "FEDOTA_SELECTOR_TOKEN_FILE": _secret(tmp_path, "selector-token", "selector-secret"),
        "FEDOTA_TLS_CERT_FILE": _secret(tmp_path, "tls-cert", "-----BEGIN CERTIFICATE-----\nAAA\n"),
        "FEDOTA_TLS_KEY": str(tmp_path / "key.pem"),  # the path form the TLS keys always took still works
    }
    settings = CoordinatorSettings.from_env(env, [])
    # The file's final newline is not part of the token.
    assert settings.report_token == "report-secret"
    assert settings.selector_token == "selector-secret"
    assert settings.tls_cert == "-----BEGIN CERTIFICATE-----\nAAA"
    assert settings.tls_key == str(tmp_path / "key.pem")


def test_the_selector_reads_its_token_and_coordinator_ca_from_files(tmp_path: Path) -> None:
    env = {
        "FEDOTA_COORDINATOR": "coordinator:9091",
        "FEDOTA_SELECTOR_TOKEN_FILE": _secret(tmp_path, "token", "s3cret\r\n"),
        "FEDOTA_COORDINATOR_CA_FILE": _secret(tmp_path, "ca", "-----BEGIN CERTIFICATE-----\nCA\n"),
        "FEDOTA_TLS_CERT_FILE": _secret(tmp_path, "cert", "-----BEGIN CERTIFICATE-----\nC\n"),
        "FEDOTA_TLS_KEY_FILE": _secret(tmp_path, "key", "-----BEGIN PRIVATE KEY-----\nK\n"),
    }
    settings = SelectorSettings.from_env(env, [])
    assert settings.selector_token == "s3cret"
    assert settings.coordinator_trust() == b"-----BEGIN CERTIFICATE-----\nCA"
    assert settings.tls_key.startswith("-----BEGIN PRIVATE KEY-----")


def test_a_missing_secret_file_and_a_doubly_given_secret_are_listed_without_the_secret(tmp_path: Path) -> None:
    env = {
        "FEDOTA_COORDINATOR": "coordinator:9091",
        "FEDOTA_SELECTOR_TOKEN": "in-the-environment",
        "FEDOTA_SELECTOR_TOKEN_FILE": _secret(tmp_path, "token", "in-a-file"),
        "FEDOTA_TLS_CERT_FILE": str(tmp_path / "nowhere.pem"),
        "FEDOTA_INSECURE": "1",
    }
    with pytest.raises(SettingsError) as err:
        SelectorSettings.from_env(env, [])
    text = str(err.value)
    assert "FEDOTA_SELECTOR_TOKEN and FEDOTA_SELECTOR_TOKEN_FILE are both set: give one of them" in text
    assert f"FEDOTA_TLS_CERT_FILE: cannot read {tmp_path / 'nowhere.pem'}" in text
    assert "in-the-environment" not in text and "in-a-file" not in text


def test_a_flag_still_wins_and_only_secrets_have_a_file_form(tmp_path: Path) -> None:
    env = {
        "FEDOTA_APP_FILE": _secret(tmp_path, "app", "not-read"),
        "FEDOTA_APP": "app.fab",
        "FEDOTA_INSECURE": "1",
        "FEDOTA_SELECTOR_TOKEN_FILE": _secret(tmp_path, "token", "from-file"),
    }
    settings = CoordinatorSettings.from_env(env, ["--selector-token", "from-flag"])
    assert settings.app == "app.fab"
    assert settings.selector_token == "from-flag"
