"""The platform as docker-compose.yml runs it, started for a test module and torn down after.

`compose_stack` runs `docker-compose up` on the real file (PostgreSQL, Redis,
migrate, gunicorn, the Celery worker and beat, the watchdog) from the images
scripts/build-images.sh built, with a throwaway .env, waits until every service is
healthy and makes a problem setter. Everything the worker starts carries the test
session's install label; whatever a failed test left, and the platform with its
volumes, go at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.docker.conftest import require_images, unavailable
from tests.docker.probes import exec_python
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PASSWORD = "a long and unusual passphrase 7"
SETTER = "compose-setter"
MAX_SELECTORS = 8  # webserver.spawner.base.MAX_SELECTORS
LONG_RUNNING = ("postgres", "redis", "web", "worker", "beat", "watchdog")
IMAGES = ("fedota/web:latest", "fedota/postgres:15", "fedota/redis:7")

T = TypeVar("T")


def wait(
    what: str, check: Callable[[], T | None], timeout: float, explain: Callable[[], str], interval: float = 1.0
) -> T:
    """`check()`'s first truthy value, asked every `interval` s; an AssertionError with `explain()` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{explain()}")
        time.sleep(interval)


def health(container: Any) -> str:
    """The container's health status now ("healthy", "starting", "unhealthy", or "None" without a check)."""
    container.reload()
    return str((container.attrs["State"].get("Health") or {}).get("Status"))


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def _free_on_loopback(ports: range) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


@dataclass
class Site:
    """The website's HTTP API at `url`."""

    url: str

    def api(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        expect: int = 200,
        files: dict[str, Any] | None = None,
    ) -> Any:
        """The JSON answer of an API call that must answer `expect` (multipart with `body` as fields when `files`)."""
        import requests

        headers = {"Authorization": f"Token {token}"} if token else {}
        if files is None:
            resp = requests.request(method, self.url + path, json=body, headers=headers, timeout=60)
        else:
            resp = requests.request(method, self.url + path, data=body, files=files, headers=headers, timeout=60)
        assert resp.status_code == expect, f"{method} {path} answered {resp.status_code}: {resp.text[:2000]}"
        return resp.json() if resp.content else None

    def token(self, username: str) -> str:
        return str(self.api("POST", "/api/v1/auth/token/", body={"username": username, "password": PASSWORD})["token"])


@dataclass
class Stack(Site):
    compose: list[str]
    project: str
    docker: Any
    environ: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.compose, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=self.environ
        )

    def containers(self) -> dict[str, Any]:
        """The platform's containers by compose service name."""
        found = self.docker.containers.list(
            all=True, filters={"label": [f"com.docker.compose.project={self.project}"]}, ignore_removed=True
        )
        return {c.labels["com.docker.compose.service"]: c for c in found}

    def logs(self) -> str:
        done = self.run("logs", "--no-color", "--tail", "30", timeout=120)
        return done.stdout[-12000:] + done.stderr[-2000:]

    def make_user(self, username: str, role: str, organisation: str) -> None:
        """A verified user of `role` (setter or holder) with PASSWORD, made in the web container."""
        code, out = exec_python(
            self.containers()["web"],
            "manage.py",
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model\n"
            "from webserver.accounts.models import Profile\n"
            f"u = get_user_model().objects.create_user(username={username!r}, email='{username}@example.org', "
            f"password={PASSWORD!r})\n"
            f"Profile.objects.create(user=u, role={role!r}, organisation={organisation!r}, email_verified=True)\n",
        )
        assert code == 0, out


@contextlib.contextmanager
def compose_stack(docker_client: Any, docker_prefix: str, tmp: Path) -> Iterator[Stack]:
    """The platform up and healthy, with the user SETTER; everything removed afterwards."""
    compose = _compose_command()
    if compose is None:
        unavailable("no docker-compose or `docker compose` here (scripts/docker-engine.sh installs it)")
    require_images(docker_client, IMAGES)

    port = free_port()
    for _ in range(50):
        port_base = random.randrange(13000, 20000, MAX_SELECTORS)
        if _free_on_loopback(range(port_base + MAX_SELECTORS, port_base + 2 * MAX_SELECTORS)):
            break
    else:
        pytest.fail("no free block of selector ports")
    env_file = tmp / ".env"
    env_file.write_text(
        "\n".join(
            [
                f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}",
                f"POSTGRES_PASSWORD={secrets.token_hex(16)}",
                f"DOCKER_GID={os.stat('/var/run/docker.sock').st_gid}",
                f"FEDOTA_WEB_PORT={port}",
                f"FEDOTA_PUBLIC_URL=http://127.0.0.1:{port}",
                # Everything the worker starts carries this session's label: the conftest's
                # final check finds whatever is left behind.
                f"FEDOTA_DOCKER_PREFIX={docker_prefix}",
                f"FEDOTA_SELECTOR_PORT_BASE={port_base}",
                "FEDOTA_DOCKER_COORDINATOR_MEMORY=2g",
                "FEDOTA_DOCKER_SELECTOR_MEMORY=1g",
                "WEB_CONCURRENCY=2",
                "",
            ]
        )
    )
    project = f"{docker_prefix}{tmp.name.replace('-', '').replace('_', '').lower()}"
    # Only PATH and HOME: a variable of the caller's environment would win over the env file.
    environ = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    base = [*compose, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "-p", project]
    made = Stack(f"http://127.0.0.1:{port}", base, project, docker_client, environ)
    try:
        up = made.run("up", "-d", timeout=600)
        assert up.returncode == 0, f"docker-compose up failed:\n{up.stdout}\n{up.stderr}"

        def all_healthy() -> bool:
            found = made.containers()
            migrate = found.get("migrate")
            if migrate is not None:
                migrate.reload()
                state = migrate.attrs["State"]
                assert state["Status"] != "exited" or state["ExitCode"] == 0, f"migrate failed:\n{made.logs()}"
            healthy = [
                (found[name].attrs["State"].get("Health") or {}).get("Status") == "healthy"
                for name in LONG_RUNNING
                if name in found
            ]
            return len(healthy) == len(LONG_RUNNING) and all(healthy)

        wait("every compose service to be healthy", all_healthy, 300, made.logs, interval=3.0)
        made.make_user(SETTER, "setter", "Oncology Lab")
        yield made
    finally:
        from webserver.spawner.docker import DockerSpawner

        # Whatever the worker left (a failed test), then the platform and its volumes.
        spawner = DockerSpawner(client=docker_client, prefix=docker_prefix)
        for problem_id in spawner.problems():
            spawner.stop(problem_id)
        down = made.run("down", "-v", "--remove-orphans", "-t", "10", timeout=300)
        assert down.returncode == 0, down.stderr
