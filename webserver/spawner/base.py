"""The Spawner interface: start and stop one run's coordinator and selectors.

Backends (`process` here, `docker` later) sit side by side behind this one
interface and translate their library's errors into `SpawnError` at their edge.
Callers (Celery tasks via problems.services) never know which backend runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class SpawnError(Exception):
    """Infrastructure could not be started, inspected or stopped; the message says why."""


@dataclass(frozen=True)
class RunSpec:
    """Everything a backend needs to start one run of a problem."""

    problem_id: int
    run_id: int
    run_number: int
    fab_path: Path
    fab_sha256: str
    run_config: dict[str, Any]  # overrides of the app's [tool.flwr.app.config]
    num_selectors: int
    round_timeout: float
    min_clients: int
    report_url: str  # internal API base for this run
    service_token: str  # credential the coordinator reports with
    selector_token: str  # shared secret between this run's selectors and coordinator
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceState:
    role: str  # coordinator | selector
    index: int
    handle: str  # pid or container id
    address: str  # host:port; for selectors what clients dial
    health: str  # starting | healthy | unhealthy | exited
    detail: str = ""


class Spawner(Protocol):
    name: str

    def start(self, spec: RunSpec) -> list[ServiceState]:
        """Start the run's services and return them once they answer (or raise SpawnError)."""
        ...

    def status(self, problem_id: int) -> list[ServiceState]:
        """The services of a problem that exist now, with their health."""
        ...

    def stop(self, problem_id: int, *, remove_data: bool = False) -> None:
        """Remove everything of the problem; idempotent."""
        ...

    def problems(self) -> set[int]:
        """Ids of problems this backend has something running for (orphan detection)."""
        ...
