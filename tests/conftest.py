"""Session-wide test set-up shared by every folder.

The SQLite test database is a file, not pytest-django's in-memory default:
a Celery worker process, and a live server whose coordinator reports arrive on
several threads, must all open the same database.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
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
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        _own_var_dir(worker)


def _own_var_dir(worker: str) -> None:
    """Give this pytest-xdist worker (gw0, gw1, ...) a FEDOTA_VAR_DIR of its own.

    Workers run tests at the same time. Shared, the file cache would mix their log-in
    rate-limit counts (and every web test clears it), and their tasks would meet in one
    embedded Celery broker file. The settings were read from the environment before
    any conftest loads, so the ones made from the shared folder are moved here; the
    environment is changed for the subprocesses tests start. (The test database is
    already apart: its own temporary folder per process, and pytest-django suffixes
    the PostgreSQL test database's name with the worker id.)
    """
    from django.conf import settings
    from django.test.utils import override_settings

    shared = str(settings.VAR_DIR)
    own = Path(shared) / f"xdist-{worker}"
    own.mkdir(exist_ok=True)
    os.environ["FEDOTA_VAR_DIR"] = str(own)

    def moved(value: Any) -> Any:
        return type(value)(str(value).replace(shared, str(own), 1)) if shared in str(value) else value

    caches = {name: {**cache, "LOCATION": moved(cache.get("LOCATION", ""))} for name, cache in settings.CACHES.items()}
    # override_settings tells Django (setting_changed) to drop caches and storages made from the old values.
    override_settings(
        VAR_DIR=own,
        CACHES=caches,
        CELERY_BROKER_URL=moved(settings.CELERY_BROKER_URL),
        MEDIA_ROOT=moved(settings.MEDIA_ROOT),
        FEDOTA_STATE_DIR=moved(settings.FEDOTA_STATE_DIR),
    ).enable()


# The services a test starts as processes (each leads a process group of its own).
SERVICE_MODULES = ("coordinator", "coordinator.local", "selector", "client_image")


def _services_left(folder: str) -> dict[int, str]:
    """Fedota services still running whose command line names `folder` (this session's temporary files)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if folder in " ".join(argv) and any(argv[i : i + 2] == ["-m", m] for m in SERVICE_MODULES for i in range(3)):
            found[int(entry.name)] = " ".join(argv)[:200]
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No federation outlives the tests: what is left is killed, named, and fails the session.

    A test that stopped only a launcher (its services lead process groups of their own) once
    left two federations training through the rest of a CI run.
    """
    import signal
    import time

    factory = getattr(session.config, "_tmp_path_factory", None)
    # Under pytest-xdist the controller looks, once every worker has ended: its temporary
    # folder holds the workers' (popen-gwN), and a worker's exit status would not count.
    if factory is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    folder = str(factory.getbasetemp()) + "/"  # not pytest-80's files for pytest-8's
    end = time.monotonic() + 15  # services told to stop may still be ending
    while (left := _services_left(folder)) and time.monotonic() < end:
        time.sleep(0.5)
    if not left:
        return
    for pid in left:
        try:
            group = os.getpgid(pid)
            if group == os.getpgid(0):
                os.kill(pid, signal.SIGKILL)  # never this session's own group
            else:
                os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    listed = "\n".join(f"  {pid}: {cmd}" for pid, cmd in left.items())
    print(f"\n!! services left running by the tests (killed now):\n{listed}", file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _DB_DIR:
        shutil.rmtree(folder, ignore_errors=True)


# Files that take longest, handed out first so that the short ones fill the other workers
# around them: tests/e2e's federations, and in tests/docker whole platforms and swarms.
LONG_FIRST = (
    "tests/e2e/",
    SWARM_SCOPE := "tests/docker/test_swarm_*",
    "tests/docker/test_chaos.py",
    "tests/docker/test_e2e_docker.py",
    "tests/docker/test_compose_platform.py",
    "tests/docker/test_arm64_client.py",
    "tests/docker/test_debian_install.py",
    # A live gunicorn fuzzed by schemathesis (1 to 1.5 min), a real MLflow server.
    "tests/integration/test_api_live.py",
    "tests/integration/test_mlflow_export.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under `--dist loadfile`, hand out the longest files first, and the swarm files as one.

    They are the long ones (whole federations; test_federation.py alone takes minutes),
    but pytest-django moves tests without a database behind the rest, so in collection
    order they came last and the run ended with one worker still training. Started
    first, the many short files fill the other workers around them.

    tests/docker's swarm files each make this engine a swarm manager and leave the swarm
    at their end: on two workers at once, one would pull the swarm from under the other,
    so they are one unit of work, run one after the other on one worker.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongFirst(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            scope = str(super()._split_scope(nodeid))
            return SWARM_SCOPE if fnmatch.fnmatch(scope, SWARM_SCOPE) else scope

        # Only the queue of files is reordered: workers are sent indexes into the
        # collection, which must stay as every worker collected it.
        def _assign_work_unit(self, node: Any) -> None:
            for first in reversed(LONG_FIRST):
                for scope in reversed([s for s in self.workqueue if s.startswith(first) or s == first]):
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return LongFirst(config, log)


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
