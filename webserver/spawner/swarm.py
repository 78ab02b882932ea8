"""The `swarm` backend: a run's coordinator and selectors as services of a Docker Swarm.

The spawner talks to one Swarm manager (`FEDOTA_SWARM_MANAGER`, else the engine of
DOCKER_HOST or the local socket). Per problem (names start with the installation's
prefix, `fedota` by default):

- one overlay network `<prefix>-p<id>`, not attachable (no container outside the
  problem's services can join it), encrypted (`encrypted` driver option, IPsec ESP
  between nodes) unless FEDOTA_SWARM_ENCRYPTED=0. Docker creates an encrypted network
  on any kernel; its encryption is programmed only when traffic crosses nodes, and on a
  kernel without ESP and AES-GCM (no CONFIG_INET_ESP, no CONFIG_CRYPTO_GCM, as on the
  machines this was built on) that traffic is lost (seen on a two-node swarm here), and
  `start` fails for a selector that cannot reach its coordinator on another node. Such a
  cluster needs FEDOTA_SWARM_ENCRYPTED=0 (docs/swarm.md);
- one coordinator service `<prefix>-p<id>-coordinator`, not published. Its selectors
  dial it by the service's name, the name in its TLS certificate. Services use DNS
  round-robin endpoints (`dnsrr`): the name resolves to the task's own address, with
  no virtual IP in front, which needs IPVS in the kernel of every node;
- N selector services `<prefix>-p<id>-selector-<i>`, each publishing the problem's fixed
  port (`RunSpec.selector_ports`) in host mode: the port is opened on the node that runs
  the selector's task and leads to that task alone, so a client's stream stays on the
  one selector it joined (the routing mesh would balance each new connection to the
  port over the service's tasks, through IPVS and with the client's address rewritten);
- per run, Swarm secrets `<prefix>-p<id>-r<run>-<nonce>-<what>`: both tokens, the
  certificates, keys and the CA, mounted as files under /run/secrets (owned by the
  images' user, mode 0400) and named to the services by FEDOTA_<KEY>_FILE or the TLS
  keys' file paths, so no secret is in a service's environment or spec;
- one volume `<prefix>-p<id>-state` for the coordinator's state (the app and its
  checkpoints). A volume belongs to one node, so the coordinator is constrained to the
  node whose engine the spawner talks to (`node.id==`), where the volume is made and
  the app is copied into it with `put_archive` through a container that is never
  started. The coordinator's state therefore does not follow it to another node; its
  checkpoints are also streamed to the website as they are written.

Everything carries the labels `fedota.install=<prefix>`, `fedota.problem=<id>` and
`fedota.role=<role>` (services, their containers, network, secrets, volume) and is found
again by label alone.

Restart policies match the docker backend. A selector restarts `on-failure`, up to
`restart_retries` times: a crashed or killed selector's task is replaced by Swarm (on
the same port, with the same secrets; on another node if its node is lost). The
coordinator has condition `none`: it exits non-zero when its run failed as well as when
it crashed, and only the website knows which, so the reconciler decides and `restart()`
starts a new task of the same service (a forced update) on the same node and volume.

Health: the images' gRPC health check runs as the services' health check (every
HEALTH_INTERVAL s); Swarm reports a task `running` only once it has passed it, so a
running task is a healthy service. A selector answers its health check before it has
reached its coordinator, so `start` also waits until each selector has logged its
coordinator's run information, and fails naming both nodes when one never does.

Tasks run as the images' non-root user with every capability dropped, a read-only root
filesystem (a tmpfs at /tmp), memory, CPU and pid limits and no Docker socket. `no-new-privileges` cannot be set on a service by
this engine's API (1.41).

Manager errors become `SpawnError` here, with what the manager said.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import requests
from docker.types import (  # type: ignore[import-untyped]
    EndpointSpec,
    Healthcheck,
    Mount,
    Resources,
    RestartPolicy,
    SecretReference,
)
from docker.utils import parse_bytes  # type: ignore[import-untyped]

from webserver.spawner.base import METRICS_PORT, RunSpec, ServiceState, SpawnError, metrics_env, serves_metrics
from webserver.spawner.docker import (
    COORDINATOR_PORT,
    HEALTH_PORT,
    HOST_GATEWAY,
    LABEL,
    PROBE,
    SELECTOR_PORT,
    STATE_MOUNT,
    _fab_archive,
    container_url,
)

log = logging.getLogger(__name__)

# The whole start (every service's task running, i.e. past its health check) must fit in this.
START_TIMEOUT = 120.0
STOP_GRACE = 10
# The images' own HEALTHCHECK runs every 10 s, so a task would wait up to 10 s after it
# listens before Swarm calls it running; each check starts a Python in the container.
HEALTH_INTERVAL = 3.0
# A check that has not answered by then failed; as the images' own HEALTHCHECK.
HEALTH_TIMEOUT = 10
# How long a task may wait for a node ("no suitable node") during a start: while a
# relaunched problem's old tasks shut down, their host ports are still taken.
UNPLACED_GRACE = 20.0
# Swarm's own task states, in the order a task goes through them.
STARTING_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting")
ENDED_STATES = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")
# The images' user: secrets are mounted as files it alone may read.
IMAGE_UID = "10001"
SECRETS_DIR = "/run/secrets"
NS = 1_000_000_000
# What a selector logs once its coordinator has answered (selector/core.py).
LINKED = b"run info received"


@contextmanager
def _manager(what: str, where: str = "") -> Iterator[None]:
    """Turn the manager's (and its transport's) errors into SpawnError naming what failed."""
    try:
        yield
    except docker.errors.APIError as exc:
        raise SpawnError(f"{what}: the Swarm manager said: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        at = f" at {where}" if where else ""
        raise SpawnError(
            f"{what}: cannot reach the Swarm manager{at} ({exc}); set FEDOTA_SWARM_MANAGER to a manager's "
            "Docker API (unix:///var/run/docker.sock, tcp://host:2376 with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH)"
        ) from exc


@dataclass(frozen=True)
class _Task:
    """The task of a service that says how it is now, and what came before it."""

    state: str
    desired: str
    error: str
    exit_code: int | None
    node: str
    container: str
    port: int | None
    previous: _Task | None = None


class SwarmSpawner:
    name = "swarm"

    def __init__(
        self,
        *,
        client: Any = None,
        manager: str = "",
        prefix: str = "fedota",
        coordinator_image: str = "fedota/coordinator:latest",
        selector_image: str = "fedota/selector:latest",
        selector_host: str = "127.0.0.1",
        coordinator_memory: str = "8g",
        selector_memory: str = "4g",
        cpus: float = 2.0,
        pids_limit: int = 1024,
        restart_retries: int = 3,
        encrypted: bool = True,
        selector_constraints: tuple[str, ...] = (),
        start_timeout: float = START_TIMEOUT,
        metrics: bool = False,
        prometheus_container: str = "",
    ) -> None:
        self._client = client
        self.manager = manager
        self.prefix = prefix
        self.coordinator_image = coordinator_image
        self.selector_image = selector_image
        # What clients dial (the join bundles): a name for the nodes that run selectors.
        self.selector_host = selector_host
        self.coordinator_memory = coordinator_memory
        self.selector_memory = selector_memory
        self.cpus = cpus
        self.pids_limit = pids_limit
        self.restart_retries = restart_retries
        self.encrypted = encrypted
        # Swarm placement constraints of the selectors, e.g. the nodes FEDOTA_SELECTOR_HOST reaches.
        self.selector_constraints = selector_constraints
        self.start_timeout = start_timeout
        # Coordinators and selectors serve Prometheus metrics on METRICS_PORT, reachable on the
        # problem's own overlay network only; the platform's Prometheus, a container on the
        # manager's engine, is connected to each problem's network while the problem runs.
        self.metrics = metrics
        self.prometheus_container = prometheus_container if metrics else ""
        self._node_id = ""

    @classmethod
    def from_settings(cls) -> SwarmSpawner:
        from django.conf import settings

        from webserver.spawner.addresses import selector_host

        return cls(
            manager=settings.FEDOTA_SWARM_MANAGER,
            prefix=settings.FEDOTA_DOCKER_PREFIX,
            coordinator_image=settings.FEDOTA_COORDINATOR_IMAGE,
            selector_image=settings.FEDOTA_SELECTOR_IMAGE,
            selector_host=selector_host(),
            coordinator_memory=settings.FEDOTA_DOCKER_COORDINATOR_MEMORY,
            selector_memory=settings.FEDOTA_DOCKER_SELECTOR_MEMORY,
            cpus=settings.FEDOTA_DOCKER_CPUS,
            encrypted=settings.FEDOTA_SWARM_ENCRYPTED,
            selector_constraints=tuple(settings.FEDOTA_SWARM_SELECTOR_CONSTRAINTS),
            start_timeout=settings.FEDOTA_SWARM_START_TIMEOUT,
            metrics=settings.FEDOTA_PROBLEM_METRICS,
            prometheus_container=settings.FEDOTA_SWARM_PROMETHEUS_CONTAINER,
        )

    @property
    def client(self) -> Any:
        """A client of a Swarm manager's engine (SpawnError if none answers or it is no manager)."""
        where = self.manager or "the local Docker engine"
        if self._client is None:
            with _manager("connecting", where):
                made = (
                    docker.DockerClient(base_url=self.manager, timeout=60)
                    if self.manager
                    else docker.from_env(timeout=60)
                )
                made.ping()
            self._client = made
        if not self._node_id:
            with _manager("asking the engine about its swarm", where):
                swarm = self._client.info().get("Swarm") or {}
            if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
                state = swarm.get("LocalNodeState") or "unknown"
                raise SpawnError(
                    f"{where} is not a Swarm manager (its swarm state: {state}): run `docker swarm init` there, "
                    "or set FEDOTA_SWARM_MANAGER to a manager node's Docker API"
                )
            self._node_id = str(swarm["NodeID"])
        return self._client

    @property
    def node_id(self) -> str:
        """The id of the manager node the spawner talks to: coordinators and their volumes live there."""
        self.client  # noqa: B018 - connects and learns the node id
        return self._node_id

    # ---- names and labels -------------------------------------------------------------------------

    def network_name(self, problem_id: int) -> str:
        return f"{self.prefix}-p{problem_id}"

    def volume_name(self, problem_id: int) -> str:
        return f"{self.prefix}-p{problem_id}-state"

    def service_name(self, problem_id: int, role: str, index: int = 0) -> str:
        if role == "coordinator":
            return f"{self.prefix}-p{problem_id}-coordinator"
        return f"{self.prefix}-p{problem_id}-selector-{index}"

    def labels(self, problem_id: int, **extra: str) -> dict[str, str]:
        return {f"{LABEL}.install": self.prefix, f"{LABEL}.problem": str(problem_id), **extra}

    def _filters(self, problem_id: int | None = None) -> dict[str, list[str]]:
        wanted = [f"{LABEL}.install={self.prefix}"]
        if problem_id is not None:
            wanted.append(f"{LABEL}.problem={problem_id}")
        return {"label": wanted}

    # ---- Spawner interface -----------------------------------------------------------------------

    def coordinator_hosts(self, problem_id: int) -> list[str]:
        return [self.service_name(problem_id, "coordinator")]

    def start(self, spec: RunSpec) -> list[ServiceState]:
        if not 1 <= spec.num_selectors:
            raise SpawnError("a run needs at least one selector")
        ports: tuple[int | None, ...] = spec.selector_ports or (None,) * spec.num_selectors
        if len(ports) != spec.num_selectors:
            raise SpawnError(f"{spec.num_selectors} selectors need {spec.num_selectors} ports, got {len(ports)}")
        self._check_coordinator_image()
        # A relaunch replaces the services and the run's secrets but keeps network and volume.
        self._remove_services(spec.problem_id)
        self._remove_secrets(spec.problem_id)
        network = self._ensure_network(spec.problem_id)
        self._connect_prometheus(network)
        volume = self._ensure_volume(spec.problem_id)
        self._copy_app(spec, volume)
        deadline = time.monotonic() + self.start_timeout
        try:
            made = self._create_secrets(spec)
            services = [self._create_coordinator(spec, network, made)]
            services += [self._create_selector(spec, network, made, i, port) for i, port in enumerate(ports)]
            self._wait_running(services, deadline)
            self._wait_linked(services[0], services[1:], deadline)
            states = self.status(spec.problem_id)
        except BaseException:
            self._remove_services(spec.problem_id)
            self._remove_secrets(spec.problem_id)
            raise
        return states

    def status(self, problem_id: int) -> list[ServiceState]:
        with _manager(f"listing the services of problem {problem_id}"):
            services = self.client.services.list(filters=self._filters(problem_id))
            out = [self._state(service) for service in services]
        out.sort(key=lambda s: (s.role != "coordinator", s.index))
        return out

    def restart(self, problem_id: int, role: str, index: int) -> ServiceState:
        """A new task of the service whose task ended: same spec, port, secrets, network, node (coordinator)."""
        name = self.service_name(problem_id, role, index)
        what = f"{role} {index}" if role == "selector" else role
        with _manager(f"restarting the {what} of problem {problem_id}"):
            try:
                service = self.client.services.get(name)
            except docker.errors.NotFound:
                raise SpawnError(f"the {what}'s service {name} is gone; it cannot be restarted as it was") from None
            labels = service.attrs["Spec"].get("Labels") or {}
            if labels.get(f"{LABEL}.install") != self.prefix or labels.get(f"{LABEL}.problem") != str(problem_id):
                raise SpawnError(f"the service {name} is not this installation's {what} of problem {problem_id}")
            task = self._task(service)
            if task is None or task.state in ENDED_STATES:
                # A forced update: Swarm replaces the task with one of the same spec, whatever its restart policy.
                spec = service.attrs["Spec"]
                template = {**spec["TaskTemplate"], "ForceUpdate": int(spec["TaskTemplate"].get("ForceUpdate", 0)) + 1}
                self.client.api.update_service(
                    service.id,
                    service.version,
                    task_template=template,
                    name=spec["Name"],
                    labels=spec.get("Labels"),
                    mode=spec.get("Mode"),
                    endpoint_spec=spec.get("EndpointSpec"),
                )
                # Until the orchestrator has made the new task (its spec carries the new count).
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    tasks = service.tasks()
                    if any((t.get("Spec") or {}).get("ForceUpdate", 0) == template["ForceUpdate"] for t in tasks):
                        break
                    time.sleep(0.2)
                service.reload()
            return self._state(service)

    def stop(self, problem_id: int, *, remove_data: bool = False) -> None:
        """Remove the problem's services, secrets, network and state volume (found by label).

        The volume goes too whatever `remove_data` says: its checkpoints were
        streamed to the website as they were written.
        """
        self._remove_services(problem_id)
        self._remove_secrets(problem_id)
        with _manager(f"removing the network of problem {problem_id}"):
            networks = self.client.networks.list(filters=self._filters(problem_id))
        # Until every node has let the removed services' containers go, the network is in use.
        for network in networks:
            self._disconnect_prometheus(network)
            self._retry(lambda n=network: n.remove(), f"removing the network {network.name}")
        with _manager(f"removing the volume of problem {problem_id}"):
            volumes = self.client.volumes.list(filters=self._filters(problem_id))
        for volume in volumes:
            self._retry(lambda v=volume: v.remove(force=True), f"removing the volume {volume.name}")

    def problems(self) -> set[int]:
        found: set[int] = set()
        key = f"{LABEL}.problem"
        with _manager("listing this installation's services"):
            objects: list[Any] = [
                *self.client.services.list(filters=self._filters()),
                *self.client.secrets.list(filters=self._filters()),
                *self.client.networks.list(filters=self._filters()),
                *self.client.volumes.list(filters=self._filters()),
            ]
        for obj in objects:
            labels = (obj.attrs.get("Spec") or {}).get("Labels") or obj.attrs.get("Labels") or {}
            try:
                found.add(int(labels[key]))
            except (KeyError, ValueError):
                continue
        return found

    def nodes(self, problem_id: int) -> dict[str, str]:
        """Which node (hostname) runs each of the problem's services now: {service name: node}."""
        with _manager(f"listing the services of problem {problem_id}"):
            services = self.client.services.list(filters=self._filters(problem_id))
            hostnames = {n.id: n.attrs["Description"]["Hostname"] for n in self.client.nodes.list()}
            tasks = {s.name: self._task(s) for s in services}
        return {name: hostnames.get(t.node, t.node) for name, t in tasks.items() if t is not None and t.node}

    # ---- internals --------------------------------------------------------------------------------

    def _check_coordinator_image(self) -> None:
        # The coordinator runs on this node (its volume does), and the app is copied into the
        # volume through a container of its image; selectors' nodes are checked as their tasks start.
        with _manager(f"looking for the image {self.coordinator_image}"):
            try:
                self.client.images.get(self.coordinator_image)
            except docker.errors.ImageNotFound:
                raise SpawnError(
                    f"the image {self.coordinator_image} is not on the Swarm manager's engine, where coordinators "
                    "run: build it there with scripts/build-images.sh (or docker load it)"
                ) from None

    def _ensure_network(self, problem_id: int) -> Any:
        name = self.network_name(problem_id)
        with _manager(f"creating the network {name}"):
            existing = self.client.networks.list(names=[name], filters=self._filters(problem_id))
            if existing:
                return existing[0]
            return self.client.networks.create(
                name,
                driver="overlay",
                scope="swarm",
                # No container joins it by itself, but the platform's Prometheus (a plain container).
                attachable=bool(self.prometheus_container),
                options={"encrypted": "true"} if self.encrypted else {},
                labels=self.labels(problem_id, **{f"{LABEL}.role": "network"}),
            )

    def _connect_prometheus(self, network: Any) -> None:
        """Let the platform's Prometheus reach the problem's metrics: a missing one is logged, not a failed publish."""
        if not self.prometheus_container:
            return
        try:
            network.reload()
            attached = (network.attrs.get("Containers") or {}).keys()
            container = self.client.containers.get(self.prometheus_container)
            if container.id not in attached:
                network.connect(container)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            if "already exists" in str(exc):  # connected meanwhile (another problem's start reloaded it)
                return
            log.warning(
                "the problem's metrics are served, but Prometheus (FEDOTA_SWARM_PROMETHEUS_CONTAINER=%s) "
                "could not join the network %s to scrape them: %s",
                self.prometheus_container,
                network.name,
                exc,
            )

    def _disconnect_prometheus(self, network: Any) -> None:
        if not self.prometheus_container:
            return
        try:
            network.disconnect(self.prometheus_container, force=True)
        except (docker.errors.DockerException, requests.RequestException):
            pass  # not connected (or gone): the network's removal says if anything still holds it

    def _ensure_volume(self, problem_id: int) -> Any:
        name = self.volume_name(problem_id)
        with _manager(f"creating the volume {name}"):
            try:
                return self.client.volumes.get(name)
            except docker.errors.NotFound:
                return self.client.volumes.create(name, labels=self.labels(problem_id, **{f"{LABEL}.role": "state"}))

    def _copy_app(self, spec: RunSpec, volume: Any) -> None:
        """The run's app into the state volume, through a container of the coordinator's image never started."""
        try:
            fab = spec.fab_path.read_bytes()
        except OSError as exc:
            raise SpawnError(f"cannot read the problem's app {spec.fab_path}: {exc}") from exc
        with _manager("copying the app into the coordinator's volume"):
            carrier = self.client.containers.create(
                self.coordinator_image,
                name=f"{self.prefix}-p{spec.problem_id}-app-{secrets.token_hex(3)}",
                network_mode="none",
                labels=self.labels(spec.problem_id, **{f"{LABEL}.role": "app-copy"}),
                volumes={volume.name: {"bind": STATE_MOUNT, "mode": "rw"}},
            )
            try:
                if not carrier.put_archive(STATE_MOUNT, _fab_archive(fab, f"{spec.fab_sha256}.fab")):
                    raise SpawnError("the Docker engine refused the app archive for the coordinator's volume")
            finally:
                carrier.remove(force=True)

    def _create_secrets(self, spec: RunSpec) -> dict[str, Any]:
        """The run's secrets, by what they hold (file name); empty values are not made."""
        values = {
            "selector-token": spec.selector_token,
            "report-token": spec.service_token,
            "tls-cert": spec.tls_cert_pem,
            "tls-key": spec.tls_key_pem,
            "coordinator-tls-cert": spec.coordinator_tls_cert_pem,
            "coordinator-tls-key": spec.coordinator_tls_key_pem,
            "ca-cert": spec.ca_cert_pem,
        }
        # A fresh nonce per start: a relaunch of the same run never meets its old secrets' names.
        stem = f"{self.prefix}-p{spec.problem_id}-r{spec.run_id}-{secrets.token_hex(3)}"
        made: dict[str, Any] = {}
        for what, value in values.items():
            if not value:
                continue
            labels = self.labels(spec.problem_id, **{f"{LABEL}.role": "secret", f"{LABEL}.run": str(spec.run_id)})
            with _manager(f"creating the secret {what}"):
                made[what] = self.client.secrets.create(name=f"{stem}-{what}", data=value.encode(), labels=labels)
        return made

    @staticmethod
    def _mount(made: dict[str, Any], what: str, as_name: str | None = None) -> SecretReference:
        secret = made[what]
        return SecretReference(
            secret.id, secret.name, filename=as_name or what, uid=IMAGE_UID, gid=IMAGE_UID, mode=0o400
        )

    def _task_template(self, memory: str) -> dict[str, Any]:
        resources = Resources(cpu_limit=int(self.cpus * NS), mem_limit=parse_bytes(memory))
        # docker-py has no argument for it; the engine's API (1.41) has the field.
        resources["Limits"]["Pids"] = self.pids_limit
        return {
            "resources": resources,
            "read_only": True,
            "cap_drop": ["ALL"],
            "init": True,
            "stop_grace_period": STOP_GRACE * NS,
            # Failed checks count only after the start period: as long as the spawner waits for
            # the start. Shorter, a coordinator still importing on a saturated manager was killed
            # as unhealthy (restart `none`: its start failed; bench/README.md, 12 problems).
            # A passing check ends the period at once, so a quick start is not slowed down.
            "healthcheck": Healthcheck(
                test=["CMD", *PROBE],
                interval=int(HEALTH_INTERVAL * NS),
                timeout=HEALTH_TIMEOUT * NS,
                retries=3,
                start_period=int(max(60.0, self.start_timeout) * NS),
            ),
            "log_driver": "json-file",
            "log_driver_options": {"max-size": "10m", "max-file": "3"},
            "endpoint_spec": EndpointSpec(mode="dnsrr"),
        }

    def _create_coordinator(self, spec: RunSpec, network: Any, made: dict[str, Any]) -> Any:
        env = {
            "HOME": "/tmp",
            "FEDOTA_APP": f"{STATE_MOUNT}/fab/{spec.fab_sha256}.fab",
            "FEDOTA_STATE_DIR": f"{STATE_MOUNT}/run_{spec.run_number:03d}",
            "FEDOTA_LISTEN": f"0.0.0.0:{COORDINATOR_PORT}",
            "FEDOTA_HEALTH_LISTEN": f"127.0.0.1:{HEALTH_PORT}",
            "FEDOTA_RUN_ID": str(spec.run_id),
            "FEDOTA_RUN_CONFIG": json.dumps(spec.run_config),
            "FEDOTA_ROUND_TIMEOUT": str(spec.round_timeout),
            "FEDOTA_WAIT_FOR_NODES": str(spec.min_clients),
            **({"FEDOTA_REPLY_POLICY": spec.reply_policy} if spec.reply_policy else {}),
            "FEDOTA_REPORT_URL": container_url(spec.report_url) if spec.report_url else "",
            **metrics_env(self.metrics),
            **spec.extra_env,
        }
        refs = []
        if "report-token" in made:
            env["FEDOTA_REPORT_TOKEN_FILE"] = f"{SECRETS_DIR}/report-token"
            refs.append(self._mount(made, "report-token"))
        if "selector-token" in made:
            env["FEDOTA_SELECTOR_TOKEN_FILE"] = f"{SECRETS_DIR}/selector-token"
            refs.append(self._mount(made, "selector-token"))
        if spec.tls:
            env["FEDOTA_TLS_CERT"] = f"{SECRETS_DIR}/tls-cert"
            env["FEDOTA_TLS_KEY"] = f"{SECRETS_DIR}/tls-key"
            refs += [
                self._mount(made, "coordinator-tls-cert", "tls-cert"),
                self._mount(made, "coordinator-tls-key", "tls-key"),
            ]
        else:
            env["FEDOTA_INSECURE"] = "1"
        labels = self.labels(
            spec.problem_id,
            **{f"{LABEL}.role": "coordinator", f"{LABEL}.index": "0", f"{LABEL}.run": str(spec.run_id)},
        )
        with _manager("creating the coordinator service"):
            return self.client.services.create(
                self.coordinator_image,
                name=self.service_name(spec.problem_id, "coordinator"),
                hostname="coordinator",
                env=[f"{k}={v}" for k, v in env.items()],
                labels=labels,
                container_labels=labels,
                networks=[network.id],
                secrets=refs,
                mounts=[
                    Mount(STATE_MOUNT, self.volume_name(spec.problem_id), type="volume"),
                    _tmpfs(),
                ],
                # Where its volume is. Not Swarm's to restart: see the module docstring.
                constraints=[f"node.id=={self.node_id}"],
                restart_policy=RestartPolicy(condition="none"),
                hosts={HOST_GATEWAY: "host-gateway"},
                **self._task_template(self.coordinator_memory),
            )

    def _create_selector(self, spec: RunSpec, network: Any, made: dict[str, Any], index: int, port: int | None) -> Any:
        env = {
            "HOME": "/tmp",
            "FEDOTA_COORDINATOR": f"{self.service_name(spec.problem_id, 'coordinator')}:{COORDINATOR_PORT}",
            "FEDOTA_LISTEN": f"0.0.0.0:{SELECTOR_PORT}",
            "FEDOTA_SELECTOR_ID": f"p{spec.problem_id}-r{spec.run_number}-s{index}",
            "FEDOTA_HEALTH_LISTEN": f"127.0.0.1:{HEALTH_PORT}",
            **metrics_env(self.metrics),
            **spec.extra_env,
        }
        refs = []
        if "selector-token" in made:
            env["FEDOTA_SELECTOR_TOKEN_FILE"] = f"{SECRETS_DIR}/selector-token"
            refs.append(self._mount(made, "selector-token"))
        if spec.tls:
            env["FEDOTA_TLS_CERT"] = f"{SECRETS_DIR}/tls-cert"
            env["FEDOTA_TLS_KEY"] = f"{SECRETS_DIR}/tls-key"
            env["FEDOTA_COORDINATOR_CA"] = f"{SECRETS_DIR}/ca-cert"
            refs += [self._mount(made, "tls-cert"), self._mount(made, "tls-key"), self._mount(made, "ca-cert")]
        else:
            env["FEDOTA_INSECURE"] = "1"
        labels = self.labels(
            spec.problem_id,
            **{f"{LABEL}.role": "selector", f"{LABEL}.index": str(index), f"{LABEL}.run": str(spec.run_id)},
        )
        template = self._task_template(self.selector_memory)
        template["endpoint_spec"] = EndpointSpec(
            mode="dnsrr",
            # Host mode: see the module docstring. No published port: the engine picks one.
            ports=[{"Protocol": "tcp", "TargetPort": SELECTOR_PORT, "PublishMode": "host", "PublishedPort": port or 0}],
        )
        with _manager(f"creating selector {index}"):
            return self.client.services.create(
                self.selector_image,
                name=self.service_name(spec.problem_id, "selector", index),
                hostname=f"selector-{index}",
                env=[f"{k}={v}" for k, v in env.items()],
                labels=labels,
                container_labels=labels,
                networks=[network.id],
                secrets=refs,
                mounts=[_tmpfs()],
                constraints=list(self.selector_constraints),
                restart_policy=RestartPolicy(
                    condition="on-failure", delay=1 * NS, max_attempts=self.restart_retries, window=0
                ),
                **template,
            )

    def _tasks(self, service: Any) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = service.tasks()
        return sorted(tasks, key=lambda t: (t.get("CreatedAt") or "", t["Version"]["Index"]))

    def _task(self, service: Any) -> _Task | None:
        """The service's newest task (and the one before it), or None if it has none yet."""
        tasks = self._tasks(service)
        if not tasks:
            return None
        return _task_of(tasks[-1], _task_of(tasks[-2]) if len(tasks) > 1 else None)

    def _wait_running(self, services: list[Any], deadline: float) -> None:
        """Until every service's task runs (past its health check); SpawnError at the first that cannot."""
        waiting = {service.id: service for service in services}
        unplaced_since: dict[str, float] = {}
        while waiting:
            for service in list(waiting.values()):
                labels = service.attrs["Spec"].get("Labels") or {}
                role = labels.get(f"{LABEL}.role", "service")
                what = f"{role} {labels.get(f'{LABEL}.index')}" if role == "selector" else role
                with _manager(f"inspecting the {what}'s task"):
                    task = self._task(service)
                if task is not None and task.state == "running":
                    del waiting[service.id]
                    continue
                if task is not None and task.state in ENDED_STATES:
                    raise SpawnError(self._failure(service, what, task))
                if task is not None and task.state == "pending" and "no suitable node" in task.error:
                    since = unplaced_since.setdefault(service.id, time.monotonic())
                    if time.monotonic() - since > UNPLACED_GRACE:
                        raise SpawnError(_unplaced(what, task.error))
                else:
                    unplaced_since.pop(service.id, None)
                if time.monotonic() > deadline:
                    state = (
                        f"its task is {task.state}" + (f" ({task.error})" if task.error else "") if task else "no task"
                    )
                    raise SpawnError(
                        f"the {what} did not pass its health check within {self.start_timeout:.0f} s: {state}\n"
                        + self._tail(service)
                    )
            if waiting:
                time.sleep(0.5)

    def _wait_linked(self, coordinator: Any, selectors: list[Any], deadline: float) -> None:
        """Until every selector has its coordinator's run info: a selector answers its health check
        before it reaches its coordinator, and one that never does (a network that does not carry
        traffic between their nodes) would take clients and give them no work."""
        waiting = list(selectors)
        while waiting:
            waiting = [s for s in waiting if LINKED not in self._log(s)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                selector = waiting[0]
                index = (selector.attrs["Spec"].get("Labels") or {}).get(f"{LABEL}.index")
                nodes = {
                    s.id: (self._task(s) or _Task("", "", "", None, "", "", None)).node for s in (coordinator, selector)
                }
                where = f"on node {self._hostname(nodes[selector.id])}"
                apart = nodes[selector.id] != nodes[coordinator.id]
                hint = (
                    f" The problem's network is encrypted and the two run on different nodes ({where}, the "
                    f"coordinator on {self._hostname(nodes[coordinator.id])}): a node whose kernel lacks IPsec ESP "
                    "or AES-GCM drops that traffic; set FEDOTA_SWARM_ENCRYPTED=0 on such a swarm (docs/swarm.md)."
                    if self.encrypted and apart
                    else ""
                )
                raise SpawnError(
                    f"selector {index} ({where}) did not reach its coordinator within {self.start_timeout:.0f} s."
                    f"{hint}\n{self._tail(selector, lines=5)}"
                )
            time.sleep(0.5)

    @staticmethod
    def _log(service: Any) -> bytes:
        try:
            return b"".join(service.logs(stdout=True, stderr=True))
        except (docker.errors.DockerException, requests.RequestException):
            return b""

    def _failure(self, service: Any, what: str, task: _Task) -> str:
        """Why a task ended while its service was starting, saying what to fix where it can."""
        error = task.error or f"exit code {task.exit_code}"
        if "No such image" in error:
            image = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
            node = self._hostname(task.node)
            return (
                f"the image {image} is not on the node {node}, which Swarm gave the {what}: load it there "
                "(docker save | docker load) or push it to a registry every node pulls from"
            )
        if "address already in use" in error or "port is already allocated" in error:
            published = [
                p.get("PublishedPort") for p in service.attrs["Spec"].get("EndpointSpec", {}).get("Ports") or []
            ]
            port = task.port or (published[0] if published and published[0] else "its port")
            return (
                f"the {what} cannot be published on port {port} of node {self._hostname(task.node)}: another program "
                "is using it (set FEDOTA_SELECTOR_PORT_BASE to move this installation's selector ports)"
            )
        return f"the {what} exited while starting ({error}):\n{self._tail(service)}"

    def _hostname(self, node_id: str) -> str:
        try:
            return str(self.client.nodes.get(node_id).attrs["Description"]["Hostname"])
        except (docker.errors.DockerException, requests.RequestException, KeyError):
            return node_id or "(none)"

    @staticmethod
    def _tail(service: Any, lines: int = 15) -> str:
        try:
            chunks = service.logs(stdout=True, stderr=True, tail=lines, timestamps=False)
            return b"".join(chunks).decode(errors="replace").strip()
        except (docker.errors.DockerException, requests.RequestException):
            return ""

    def _state(self, service: Any) -> ServiceState:
        spec = service.attrs["Spec"]
        labels = spec.get("Labels") or {}
        role = labels.get(f"{LABEL}.role", "unknown")
        index = int(labels.get(f"{LABEL}.index", "0") or 0)
        tasks = self._tasks(service)
        task = _task_of(tasks[-1], _task_of(tasks[-2]) if len(tasks) > 1 else None) if tasks else None
        exit_code: int | None = None
        detail = ""
        if task is None or task.state in STARTING_STATES:
            health = "starting"
            if task is not None and task.error:
                detail = task.error
            elif task is not None and task.previous is not None and task.previous.state in ("failed", "rejected"):
                detail = f"Swarm is restarting it after {task.previous.error or f'exit code {task.previous.exit_code}'}"
        elif task.state == "running":
            health = "healthy"
        else:
            health = "exited"
            exit_code = task.exit_code if task.exit_code is not None else (0 if task.state == "complete" else None)
            how = "was killed" if exit_code in (137, None) else f"exited with code {exit_code}"
            detail = f"its task {how}" + (f" ({task.error})" if task.error else "")
            tail = self._tail(service, lines=8) if exit_code else ""
            detail += f":\n{tail}" if tail else ""
        if role == "selector":
            published = [
                p.get("PublishedPort")
                for p in (spec.get("EndpointSpec") or {}).get("Ports") or []
                if p.get("TargetPort") == SELECTOR_PORT
            ]
            port = published[0] if published and published[0] else (task.port if task else None)
            address = f"{self.selector_host}:{port}" if port else ""
        else:
            address = f"{spec['Name']}:{COORDINATOR_PORT}"
        # Replaced by Swarm itself (restart policy, lost node) since the service was last
        # (re)started by us: the tasks made since its last forced update, but the first.
        force = spec["TaskTemplate"].get("ForceUpdate", 0)
        era = [t for t in tasks if (t.get("Spec") or {}).get("ForceUpdate", 0) == force]
        restarts = max(0, len(era) - 1)
        metrics = self._metrics_at(spec, tasks[-1]) if task is not None and task.state == "running" else ""
        return ServiceState(role, index, service.id[:12], address, health, detail, exit_code, restarts, metrics)

    def _metrics_at(self, spec: dict[str, Any], task: dict[str, Any]) -> str:
        """Where a running task serves its metrics: its address on the problem's overlay network."""
        env = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Env") or []
        if not serves_metrics(env):
            return ""
        problem = (spec.get("Labels") or {}).get(f"{LABEL}.problem", "")
        wanted = self.network_name(int(problem)) if problem.isdigit() else ""
        for attachment in task.get("NetworksAttachments") or []:
            if ((attachment.get("Network") or {}).get("Spec") or {}).get("Name") == wanted:
                addresses = attachment.get("Addresses") or []
                return f"{addresses[0].split('/')[0]}:{METRICS_PORT}" if addresses else ""
        return ""

    def _remove_services(self, problem_id: int) -> None:
        """Remove the problem's services, coordinator first, and wait until their tasks have ended."""
        with _manager(f"listing the services of problem {problem_id}"):
            services = self.client.services.list(filters=self._filters(problem_id))

        def role(service: Any) -> str:
            return str((service.attrs["Spec"].get("Labels") or {}).get(f"{LABEL}.role"))

        # The coordinator first: on SIGTERM it tells its selectors the run was stopped and they
        # tell their clients, which then exit instead of looking for a selector for minutes.
        for group in (
            [s for s in services if role(s) == "coordinator"],
            [s for s in services if role(s) != "coordinator"],
        ):
            live: list[str] = []
            for service in group:
                with _manager(f"removing the service {service.name}"):
                    try:
                        live += [t["ID"] for t in service.tasks() if t["Status"]["State"] not in ENDED_STATES]
                        service.remove()
                    except docker.errors.NotFound:
                        pass
            self._wait_gone(live)
        # A carrier a crashed start left behind (it is made and removed within _copy_app).
        with _manager(f"listing the containers of problem {problem_id}"):
            carriers = self.client.containers.list(
                all=True, filters={"label": [*self._filters(problem_id)["label"], f"{LABEL}.role=app-copy"]}
            )
        for carrier in carriers:
            with _manager(f"removing the container {carrier.name}"):
                try:
                    carrier.remove(force=True)
                except docker.errors.NotFound:
                    pass

    def _wait_gone(self, task_ids: list[str]) -> None:
        """Until the tasks of removed services have stopped on their nodes (their host ports are free then).

        A task on a node that is down never reports its end: it is not waited for (its node
        frees the port when it comes back without the service); a node that turns silent
        meanwhile is waited for no longer than the deadline.
        """
        deadline = time.monotonic() + STOP_GRACE + 20
        down: dict[str, bool] = {}
        for task_id in task_ids:
            while time.monotonic() < deadline:
                with _manager("waiting for a removed service's tasks to stop"):
                    try:
                        task = self.client.api.inspect_task(task_id)
                    except docker.errors.NotFound:
                        break
                    node = str(task.get("NodeID") or "")
                    if node and node not in down:
                        try:
                            down[node] = self.client.api.inspect_node(node)["Status"]["State"] == "down"
                        except docker.errors.NotFound:
                            down[node] = True  # removed from the swarm
                if task["Status"]["State"] in ENDED_STATES or down.get(node, False):
                    break
                time.sleep(0.3)

    def _remove_secrets(self, problem_id: int) -> None:
        with _manager(f"listing the secrets of problem {problem_id}"):
            found = self.client.secrets.list(filters=self._filters(problem_id))
        for secret in found:
            self._retry(lambda s=secret: s.remove(), f"removing the secret {secret.name}")

    @staticmethod
    def _retry(remove: Any, what: str, timeout: float = 30.0) -> None:
        """`remove()`, again while the manager says the object is still in use; gone already is fine."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with _manager(what):
                    try:
                        remove()
                    except docker.errors.NotFound:
                        pass
                return
            except SpawnError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _task_of(task: dict[str, Any], previous: _Task | None = None) -> _Task:
    status = task.get("Status") or {}
    container = status.get("ContainerStatus") or {}
    code = container.get("ExitCode")
    ports = (status.get("PortStatus") or {}).get("Ports") or []
    return _Task(
        state=str(status.get("State", "")),
        desired=str(task.get("DesiredState", "")),
        error=str(status.get("Err") or ""),
        exit_code=int(code) if code is not None and status.get("State") in ENDED_STATES else None,
        node=str(task.get("NodeID") or ""),
        container=str(container.get("ContainerID") or ""),
        port=int(ports[0]["PublishedPort"]) if ports and ports[0].get("PublishedPort") else None,
        previous=previous,
    )


def _unplaced(what: str, error: str) -> str:
    if "port" in error:
        return (
            f"Swarm finds no node for the {what}: {error} (another service publishes the same port on every node "
            "that could run it; set FEDOTA_SELECTOR_PORT_BASE to move this installation's selector ports)"
        )
    return f"Swarm finds no node for the {what}: {error}"


def _tmpfs() -> Mount:
    return Mount("/tmp", None, type="tmpfs", tmpfs_size=512 * 1024 * 1024)
