"""Twelve-factor settings: production refuses to start without a real secret; secrets from files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter with exactly these variables (plus PATH)."""
    environ = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "FEDOTA_VAR_DIR": str(tmp_path / "var"), **env}
    code = (
        "import webserver.settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE if hasattr(s, 'SESSION_COOKIE_SECURE') else None, "
        "s.DATABASES['default']['ENGINE'], s.DATABASES['default']['NAME'], s.SECRET_KEY[:6])"
    )
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, cwd=tmp_path)


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = _settings(tmp_path, FEDOTA_ENV="production")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set in production" in result.stderr


def test_production_refuses_a_placeholder_secret(tmp_path: Path) -> None:
    result = _settings(tmp_path, FEDOTA_ENV="production", DJANGO_SECRET_KEY="change-me")
    assert result.returncode != 0
    assert "placeholder" in result.stderr


def test_production_reads_the_secret_from_a_file_and_secures_cookies(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-" + "x" * 50 + "\n")
    result = _settings(tmp_path, FEDOTA_ENV="production", DJANGO_SECRET_KEY_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    debug, secure_cookie, _engine, _name, key = result.stdout.split()
    assert (debug, secure_cookie, key) == ("False", "True", "s3cr3t")


def test_an_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    result = _settings(tmp_path, FEDOTA_ENV="production", DJANGO_SECRET_KEY_FILE=str(tmp_path / "missing"))
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY_FILE=" in result.stderr and "cannot be read" in result.stderr


def test_development_needs_nothing_and_keeps_its_key_out_of_the_repo(tmp_path: Path) -> None:
    result = _settings(tmp_path)
    assert result.returncode == 0, result.stderr
    debug, _secure, engine, name, _key = result.stdout.split()
    assert debug == "True" and engine.endswith("sqlite3") and name.startswith(str(tmp_path / "var"))
    assert (tmp_path / "var" / "dev-secret-key").exists()


def test_postgres_urls_and_bad_schemes(tmp_path: Path) -> None:
    ok = _settings(tmp_path, DATABASE_URL="postgres://fedota:p%40ss@db:5432/fedota")
    assert ok.returncode == 0, ok.stderr
    assert "postgresql" in ok.stdout and " fedota " in f" {ok.stdout.split()[3]} "
    bad = _settings(tmp_path, DATABASE_URL="mysql://x@y/z")
    assert bad.returncode != 0 and "use sqlite:/// or postgres://" in bad.stderr


def test_the_restart_budget_is_read_and_checked(tmp_path: Path) -> None:
    assert _settings(tmp_path, FEDOTA_RESTART_BUDGET="8", FEDOTA_RESTART_WINDOW="1800").returncode == 0
    bad = _settings(tmp_path, FEDOTA_RESTART_WINDOW="0")
    assert bad.returncode != 0 and "FEDOTA_RESTART_WINDOW (seconds) more than 0" in bad.stderr
    bad = _settings(tmp_path, FEDOTA_RESTART_BUDGET="five")
    assert bad.returncode != 0 and "FEDOTA_RESTART_BUDGET='five' must be an integer" in bad.stderr
