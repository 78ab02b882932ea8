"""The Spawner interface: start and stop one run's coordinator and selectors.

Backends (`process`, `docker`) sit side by side behind this one
interface and translate their library's errors into `SpawnError` at their edge.
Callers (Celery tasks via problems.services) never know which backend runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedota_common.metrics import LISTEN


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
    # Secrets are kept out of the spec's repr, so logging a spec never logs them.
    service_token: str = field(repr=False)  # credential the coordinator reports with
    selector_token: str = field(repr=False)  # shared secret between this run's selectors and coordinator
    # Host ports the selectors must listen on, one per selector. They are the
    # same for every run of a problem (see `selector_ports`), so participants'
    # join bundles stay valid across runs. Empty: the backend picks.
    selector_ports: tuple[int, ...] = ()
    # TLS on both links, all issued by the problem's CA (PEM): the selectors' server
    # certificate and key for the host clients dial, the coordinator's for the names the
    # backend's selectors dial it at (`Spawner.coordinator_hosts`), and the CA certificate
    # the selectors check the coordinator against. All empty: plaintext on both links
    # (`--insecure`), which only hand-made specs for local tests do; the run lifecycle
    # always issues them. Some but not all: refused.
    tls_cert_pem: str = ""
    tls_key_pem: str = field(default="", repr=False)
    coordinator_tls_cert_pem: str = ""
    coordinator_tls_key_pem: str = field(default="", repr=False)
    ca_cert_pem: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    # The coordinator's reply policy (`flower` | `strict`); "": its own default (`auto`).
    reply_policy: str = ""

    def __post_init__(self) -> None:
        pems = (
            self.tls_cert_pem,
            self.tls_key_pem,
            self.coordinator_tls_cert_pem,
            self.coordinator_tls_key_pem,
            self.ca_cert_pem,
        )
        if any(pems) and not all(pems):
            raise ValueError(
                "a run spec has TLS on both links or on neither: give the selectors' and the "
                "coordinator's certificates and keys and the CA certificate, or none of them"
            )
        if self.tls and not self.selector_token:
            raise ValueError("a run spec with TLS needs a selector token")

    @property
    def tls(self) -> bool:
        """Do clients↔selectors and selectors↔coordinator speak TLS?"""
        return bool(self.tls_cert_pem)

    # Certificates and keys travel in the environment, never on the command line.

    def coordinator_tls_env(self) -> dict[str, str]:
        """How the coordinator learns its certificate, or that it serves plaintext."""
        if self.tls:
            return {"FEDOTA_TLS_CERT": self.coordinator_tls_cert_pem, "FEDOTA_TLS_KEY": self.coordinator_tls_key_pem}
        return {"FEDOTA_INSECURE": "1"}

    def selector_tls_env(self) -> dict[str, str]:
        """How a selector learns its certificate and the CA its coordinator's must chain to."""
        if self.tls:
            return {
                "FEDOTA_TLS_CERT": self.tls_cert_pem,
                "FEDOTA_TLS_KEY": self.tls_key_pem,
                "FEDOTA_COORDINATOR_CA": self.ca_cert_pem,
            }
        return {"FEDOTA_INSECURE": "1"}


@dataclass(frozen=True)
class ServiceState:
    role: str  # coordinator | selector
    index: int
    handle: str  # pid or container id
    address: str  # host:port; for selectors what clients dial
    health: str  # starting | healthy | unhealthy | exited
    detail: str = ""
    # How an exited service ended, when the backend knows: 0 means it finished
    # on its own (a coordinator whose ServerApp completed), anything else a crash.
    exit_code: int | None = None
    # How often the backend itself restarted this service after a crash (Docker's restart
    # policy) since it was last started; backends that never do say 0.
    restarts: int = 0
    # host:port serving the service's Prometheus metrics (plain HTTP, /metrics) where the
    # platform's Prometheus reaches it; "" when the backend does not serve them (docs/metrics.md).
    metrics: str = ""


# The container backends' port for each service's Prometheus metrics (plain HTTP, no
# credentials) when FEDOTA_PROBLEM_METRICS is on: reachable on the problem's own network
# (Docker, Swarm) or from the platform's Prometheus pods only (Kubernetes NetworkPolicy),
# never published to data holders (docs/metrics.md).
METRICS_PORT = 9094
METRICS_LISTEN = f"0.0.0.0:{METRICS_PORT}"


def metrics_env(on: bool, listen: str = METRICS_LISTEN) -> dict[str, str]:
    """The environment that makes a coordinator or selector serve its metrics at `listen`."""
    return {LISTEN.env: listen} if on else {}


def serves_metrics(env: list[str]) -> bool:
    """Whether a container started with `env` (NAME=value entries) serves its metrics on METRICS_PORT."""
    return f"{LISTEN.env}={METRICS_LISTEN}" in env


# Each problem owns a block of this many consecutive selector ports.
MAX_SELECTORS = 8


def selector_ports(problem_id: int, count: int, *, base: int) -> tuple[int, ...]:
    """The host ports of a problem's selectors: fixed per problem, never per run.

    Problem ids share blocks modulo 1000 (two problems 1000 ids apart collide and
    the second one's start fails naming the port), which keeps every port within
    `base .. base + 7999`.
    """
    if not 1 <= count <= MAX_SELECTORS:
        raise SpawnError(f"a problem may have 1 to {MAX_SELECTORS} selectors, not {count}")
    first = base + (problem_id % 1000) * MAX_SELECTORS
    return tuple(range(first, first + count))


class Spawner(Protocol):
    name: str

    def coordinator_hosts(self, problem_id: int) -> list[str]:
        """The names (or addresses) the problem's selectors dial its coordinator at: its certificate's names."""
        ...

    def start(self, spec: RunSpec) -> list[ServiceState]:
        """Start the run's services and return them once they answer (or raise SpawnError)."""
        ...

    def status(self, problem_id: int) -> list[ServiceState]:
        """The services of a problem that exist now, with their health."""
        ...

    def restart(self, problem_id: int, role: str, index: int) -> ServiceState:
        """Start one dead service of the problem again, exactly as it was started; the others are not touched.

        Same ports, volume or state folder, network, environment and TLS material (so the
        selectors' certificate is still the one join bundles trust, and a coordinator finds its
        checkpoints). A service that is running already is left alone. Raises SpawnError when
        the service cannot be started as it was (it was removed, say): the run must then be
        launched whole.
        """
        ...

    def stop(self, problem_id: int, *, remove_data: bool = False) -> None:
        """Remove everything of the problem; idempotent."""
        ...

    def problems(self) -> set[int]:
        """Ids of problems this backend has something running for (orphan detection)."""
        ...
