"""The structure of docker-compose.yml (the platform itself), read without starting it.

Parsed with PyYAML (which drf-spectacular brings in): health checks and restart
policies on every long-running service, the watchdog that restarts what `docker
kill` or a hang stopped, start order through health (`depends_on` conditions),
the Docker socket in the Celery worker and the watchdog only, and no secret written into the
file. When a compose tool is installed, `config` also checks that it accepts
the file and refuses to run without the secrets. Needs no Docker engine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # in the locks (requirements/dev.txt): a missing module must fail, not skip

from tests.docker.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SOCKET = "/var/run/docker.sock"
# A value that is one interpolation of a variable; `:?` makes compose refuse to start without it.
INTERPOLATED = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
REQUIRED = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]+\}")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|(^|_)KEY$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every volume, in short ("src:dst[:mode]") or long syntax."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            out.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
        else:
            out.append((str(volume.get("source", "")), str(volume["target"])))
    return out


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def test_the_platform_services_are_all_there(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert {"postgres", "redis", "migrate", "web", "worker", "beat", "watchdog"} <= set(services)
    assert services["postgres"]["image"].startswith("fedota/postgres:")
    assert services["redis"]["image"].startswith("fedota/redis:")
    for name in ("migrate", "web", "worker", "beat", "watchdog"):
        assert services[name]["image"].startswith("fedota/web:"), name
    assert "version" not in compose, "no version key: the compose specification (docker-compose 1.29 and v2)"


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        if _one_shot(service):
            continue
        check = service.get("healthcheck")
        assert check, f"{name} runs for good but has no healthcheck"
        assert not check.get("disable"), name
        test = check["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test {test!r}"
        assert check.get("interval") and check.get("timeout"), f"{name}: set interval and timeout"
        assert str(service.get("restart")) in ("always", "unless-stopped", "on-failure"), name


PLATFORM = ("postgres", "redis", "web", "worker", "beat")


def test_the_platform_restarts_what_dies(compose: dict[str, Any]) -> None:
    """Docker restarts a service whose process died; the watchdog one that was `docker kill`ed or hangs."""
    services = _services(compose)
    for name in (*PLATFORM, "watchdog"):
        assert services[name].get("restart") in ("always", "unless-stopped"), f"{name}: restart policy"
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: healthcheck"
    env = _environment(services["watchdog"])
    assert set(env["FEDOTA_WATCHDOG_DEAD"].split()) == set(PLATFORM)
    # Not the database or the broker on a failed check: a restart would not cure an overloaded one.
    assert set(env["FEDOTA_WATCHDOG_UNHEALTHY"].split()) == {"web", "worker", "beat"}
    script = services["watchdog"]["command"][-1]
    assert "$" not in script, "compose would interpolate it"
    compile(script, "watchdog", "exec")


def test_the_health_checks_probe_what_each_service_needs(compose: dict[str, Any]) -> None:
    services = _services(compose)

    def probe(name: str) -> str:
        test = services[name]["healthcheck"]["test"]
        return " ".join(str(part) for part in test[1:])

    # The web check wants 200 from /healthz, which runs a query on the database.
    assert "/healthz" in probe("web") and "status == 200" in probe("web")
    # The worker answers a ping through the broker, addressed to its own node.
    assert "inspect ping" in probe("worker") and "celery@$$HOSTNAME" in probe("worker")
    assert "pg_isready" in probe("postgres")
    assert "redis-cli ping" in probe("redis")
    assert "beat" in probe("beat") and "CELERY_BROKER_URL" in probe("beat")
    # A broker round trip costs a second of CPU: not more often than every 30 s.
    assert services["worker"]["healthcheck"]["interval"] == "30s"


def test_start_order_waits_for_health(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form with a condition"
        for target, spec in depends.items():
            condition = (spec or {}).get("condition")
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits for {target}'s health, which has no check"
            elif condition == "service_completed_successfully":
                assert _one_shot(services[target]), f"{name} waits for {target} to finish, but it runs for good"
            else:
                raise AssertionError(f"{name} depends on {target} with condition {condition!r}")
    for name in ("web", "worker", "migrate"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name


def test_only_the_worker_and_the_watchdog_talk_to_the_docker_engine(compose: dict[str, Any]) -> None:
    with_socket = [
        name for name, service in _services(compose).items() if any(SOCKET in src for src, _ in _mounts(service))
    ]
    assert with_socket == ["worker", "watchdog"]
    # The watchdog holds the socket and nothing else: no network, no settings, no data.
    watchdog = _services(compose)["watchdog"]
    assert watchdog["network_mode"] == "none"
    assert watchdog.get("read_only") is True
    assert not watchdog.get("ports") and not watchdog.get("depends_on")
    assert set(_environment(watchdog)) == {"FEDOTA_WATCHDOG_DEAD", "FEDOTA_WATCHDOG_UNHEALTHY"}
    assert [dst for _, dst in _mounts(watchdog)] == [SOCKET]
    assert str(watchdog.get("user", "")) not in ("root", "0", "0:0")
    assert any(REQUIRED.search(str(gid)) for gid in watchdog.get("group_add", [])), "group_add: ${DOCKER_GID:?...}"
    worker = _services(compose)["worker"]
    # Least privilege: the image's unprivileged user plus the socket's group, not root.
    assert str(worker.get("user", "")) not in ("root", "0", "0:0")
    assert any(REQUIRED.search(str(gid)) for gid in worker.get("group_add", [])), "group_add: ${DOCKER_GID:?...}"
    env = _environment(worker)
    assert env["FEDOTA_SPAWNER"] == "docker"
    assert "host.docker.internal" in env["FEDOTA_INTERNAL_URL"]
    assert "host.docker.internal" in env["DJANGO_ALLOWED_HOSTS"]


def test_web_and_worker_share_the_media_volume(compose: dict[str, Any]) -> None:
    services = _services(compose)

    def var_volume(name: str) -> str:
        return next(src for src, dst in _mounts(services[name]) if dst == "/var/lib/fedota")

    assert var_volume("web") == var_volume("worker")
    assert var_volume("web") in compose["volumes"]
    assert any(
        dst == "/var/lib/postgresql/data" and src in compose["volumes"] for src, dst in _mounts(services["postgres"])
    )
    ports = services["web"]["ports"]
    assert ports == ["${FEDOTA_WEB_PORT:-8000}:8000"], "published on every address: coordinators use the host gateway"
    for name in ("postgres", "redis", "worker", "beat", "migrate", "watchdog"):
        assert not services[name].get("ports"), f"{name} must not be published"


def test_no_secret_is_written_into_the_file(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key):
                assert value == "" or INTERPOLATED.match(value), f"{name}: {key} holds a literal value"
            if "://" in value and "@" in value:  # a URL with credentials
                userinfo = value.split("://", 1)[1].split("@", 1)[0]
                password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
                assert INTERPOLATED.match(password), f"{name}: {key} has a literal password"
    required = set(REQUIRED.findall(COMPOSE_FILE.read_text()))
    assert {"DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "DOCKER_GID"} <= required


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_accepts_the_file_and_refuses_missing_secrets(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        # Skipped loudly, or a failure where the container tests must run (CI).
        unavailable("no docker-compose or `docker compose` here (scripts/docker-engine.sh installs it)")
    env_file = tmp_path / "env"
    # Only PATH and HOME: a variable of the caller's environment would win over the env file.
    environ = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}

    def config(text: str) -> subprocess.CompletedProcess[str]:
        env_file.write_text(text)
        return subprocess.run(
            [*command, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "-p", "fedota-config-check", "config"],
            capture_output=True,
            text=True,
            env=environ,
            cwd=tmp_path,
            timeout=120,
        )

    ok = config("DJANGO_SECRET_KEY=test-only-not-a-secret-0123456789\nPOSTGRES_PASSWORD=pw123\nDOCKER_GID=4242\n")
    assert ok.returncode == 0, ok.stderr
    rendered = yaml.safe_load(ok.stdout)
    worker = rendered["services"]["worker"]
    assert [str(g) for g in worker["group_add"]] == ["4242"]
    assert _environment(worker)["DATABASE_URL"] == "postgres://fedota:pw123@postgres:5432/fedota"
    assert _environment(worker)["FEDOTA_INTERNAL_URL"] == "http://host.docker.internal:8000"

    missing = config("POSTGRES_PASSWORD=pw123\nDOCKER_GID=4242\n")
    assert missing.returncode != 0
    assert "DJANGO_SECRET_KEY" in missing.stderr
