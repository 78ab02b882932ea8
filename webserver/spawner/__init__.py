"""Spawner backends; `get_spawner()` picks one from settings.FEDOTA_SPAWNER."""

from __future__ import annotations

from django.conf import settings

from webserver.spawner.base import MAX_SELECTORS, RunSpec, ServiceState, Spawner, SpawnError, selector_ports

__all__ = ["MAX_SELECTORS", "RunSpec", "ServiceState", "SpawnError", "Spawner", "get_spawner", "selector_ports"]


def _docker_ready() -> bool:
    """An engine answers and has the coordinator image (else `auto` runs processes)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.images.get(settings.FEDOTA_COORDINATOR_IMAGE)
        return True
    except Exception:  # noqa: BLE001 - any failure means "no usable engine here"
        return False


def get_spawner(name: str | None = None) -> Spawner:
    choice = name or settings.FEDOTA_SPAWNER
    if choice == "auto":
        choice = "docker" if _docker_ready() else "process"
    from webserver.spawner.addresses import selector_host

    if choice == "process":
        from webserver.spawner.process import ProcessSpawner

        return ProcessSpawner(
            settings.FEDOTA_STATE_DIR,
            selector_host=selector_host(),
            niceness=settings.FEDOTA_SERVICE_NICE,
            metrics=settings.FEDOTA_PROBLEM_METRICS,
        )
    if choice == "docker":
        try:
            from webserver.spawner.docker import DockerSpawner
        except ImportError as exc:
            raise SpawnError(f"the docker backend needs the docker package (pip install docker): {exc}") from exc
        return DockerSpawner.from_settings()
    if choice == "swarm":
        try:
            from webserver.spawner.swarm import SwarmSpawner
        except ImportError as exc:
            raise SpawnError(f"the swarm backend needs the docker package (pip install docker): {exc}") from exc
        return SwarmSpawner.from_settings()
    if choice == "kubernetes":
        try:
            from webserver.spawner.kubernetes import KubernetesSpawner
        except ImportError as exc:
            raise SpawnError(
                f"the kubernetes backend needs the kubernetes package (pip install kubernetes): {exc}"
            ) from exc
        return KubernetesSpawner.from_settings()
    raise SpawnError(f"FEDOTA_SPAWNER={choice!r} is not a backend; use auto, process, docker, swarm or kubernetes")
