"""Spawner backends; `get_spawner()` picks one from settings.FEDOTA_SPAWNER."""

from __future__ import annotations

from django.conf import settings

from webserver.spawner.base import MAX_SELECTORS, RunSpec, ServiceState, Spawner, SpawnError, selector_ports

__all__ = ["MAX_SELECTORS", "RunSpec", "ServiceState", "SpawnError", "Spawner", "get_spawner", "selector_ports"]


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False


def get_spawner(name: str | None = None) -> Spawner:
    choice = name or settings.FEDOTA_SPAWNER
    if choice == "auto":
        choice = "docker" if _docker_answers() and _docker_backend_available() else "process"
    if choice == "process":
        from webserver.spawner.process import ProcessSpawner

        return ProcessSpawner(
            settings.FEDOTA_STATE_DIR,
            selector_host=settings.FEDOTA_SELECTOR_HOST,
            niceness=settings.FEDOTA_SERVICE_NICE,
        )
    if choice == "docker":
        try:
            from webserver.spawner.docker import DockerSpawner  # type: ignore[import-not-found]
        except ImportError as exc:
            raise SpawnError("the docker spawner backend is not available in this version") from exc
        return DockerSpawner.from_settings()  # type: ignore[no-any-return]
    raise SpawnError(f"FEDOTA_SPAWNER={choice!r} is not a backend; use auto, process or docker")


def _docker_backend_available() -> bool:
    try:
        import webserver.spawner.docker  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True
