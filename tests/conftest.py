"""Session-wide test set-up shared by every folder.

The SQLite test database is a file, not pytest-django's in-memory default:
a Celery worker process, and a live server whose coordinator reports arrive on
several threads, must all open the same database.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

_DB_DIR: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Put the SQLite test database in a file a worker process can open too.

    A hook rather than a fixture: the test database is created once per
    session, possibly for a test outside this folder first, so the choice must
    be made before any test runs (pytest calls this when it loads this file).
    """
    import tempfile

    from django.conf import settings

    db = settings.DATABASES["default"]
    test = db.setdefault("TEST", {})
    if str(db["ENGINE"]).endswith("sqlite3") and not test.get("NAME"):  # type: ignore[union-attr]
        _DB_DIR.append(tempfile.mkdtemp(prefix="fedota-test-db-"))
        test["NAME"] = str(Path(_DB_DIR[0]) / "test.sqlite3")  # type: ignore[index]


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _DB_DIR:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright; missing Chromium fails, never skips.

    The flags keep it off the network (this machine's closed network refuses its
    background connections) and runnable as root.
    """
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM
    # calls are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    assert os.path.exists(CHROMIUM), "Chromium is missing: apt-get install chromium (scripts/system-deps.sh does)"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()
