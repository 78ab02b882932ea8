"""Fixtures for tests against real services on this machine: Redis and a Celery worker.

A worker is a separate process, so it must see the test's database: with
SQLite the test database is a file here (pytest-django's default is in
memory), with PostgreSQL it is the `test_<name>` database pytest-django
creates. Tests that use it must be `transactional_db` so their rows are
committed. Redis is required, never skipped: CI installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The DATABASE_URL of the test database as this process sees it (call inside a db test)."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        name = str(db["NAME"])
        assert name != ":memory:" and "mode=memory" not in name, "the test database must be a file"
        return f"sqlite:///{Path(name).resolve()}"
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "127.0.0.1"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgres://{auth}@{host}{port}/{quote(str(db['NAME']), safe='')}"


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed; the Celery worker tests need it. "
            "Install it with: apt-get install -y redis-server",
            pytrace=False,
        )
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=open(folder / "redis.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_group(proc)
                pytest.fail(f"redis-server did not start:\n{(folder / 'redis.log').read_text()}", pytrace=False)
            time.sleep(0.1)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        _stop_group(proc)


@pytest.fixture
def use_broker(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Make this process's Celery app send to `redis_url`.

    Settings were read before the test began; Celery's configuration looks at
    the CELERY_BROKER_URL environment variable before anything else.
    """
    from webserver.celery import app

    def drop_pools() -> None:
        app.close()  # pooled connections to the old broker
        # The producer pool outlives app.close(): an earlier test that merely enqueued a
        # task (even eagerly) left it bound to the default SQLite broker.
        app.amqp._producer_pool = None

    monkeypatch.setenv("CELERY_BROKER_URL", redis_url)
    drop_pools()
    assert app.connection_for_write().as_uri().startswith("redis://127.0.0.1:")
    assert app.amqp.producer_pool.connections.connection.as_uri().startswith("redis://127.0.0.1:")
    try:
        yield redis_url
    finally:
        drop_pools()


@pytest.fixture
def celery_worker_process(tmp_path: Path, use_broker: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a real `celery -A webserver worker` against the test broker and database.

    Call it with extra environment (settings the worker should share with the
    test); it returns once the worker is ready. The worker is killed at the end.
    """
    started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(**env_extra: str) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker{len(started)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDOTA_", "CELERY_", "DATABASE_"))}
        var_dir = tmp_path / "worker-var"
        var_dir.mkdir(exist_ok=True)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "webserver.settings",
                "DATABASE_URL": database_url(),
                "CELERY_BROKER_URL": use_broker,
                "FEDOTA_VAR_DIR": str(var_dir),
                "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1",
                **env_extra,
            }
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "webserver",
                "worker",
                "--loglevel=INFO",
                "--concurrency=1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-{os.getpid()}-{len(started)}@%h",
            ],
            cwd=REPO,
            env=env,
            stdout=open(log_path, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append((proc, log_path))
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Celery worker did not start:\n{log_path.read_text(errors='replace')}", pytrace=False)
            time.sleep(0.2)
        return proc

    yield start
    for proc, log_path in started:
        _stop_group(proc)
        sys.stdout.write(f"\n--- worker log {log_path} (tail) ---\n")
        sys.stdout.write("\n".join(log_path.read_text(errors="replace").splitlines()[-40:]) + "\n")


def make_user(username: str, role: str | None, *, staff: bool = False) -> Any:
    from django.contrib.auth import get_user_model

    from webserver.accounts.models import Profile

    user = get_user_model().objects.create_user(
        username=username, email=f"{username}@example.org", password="correct horse battery staple 42", is_staff=staff
    )
    if role is not None:
        Profile.objects.create(user=user, role=role, email_verified=True)
    return user
