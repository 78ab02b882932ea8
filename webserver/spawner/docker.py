"""The `docker` backend: a run's coordinator and selectors as containers of a real engine.

Per problem (names start with the installation's prefix, `fedota` by default):

- one user-defined bridge network `<prefix>-p<id>`: the coordinator and the
  selectors talk over it by container name; other problems' containers are on
  other networks, which the engine isolates from each other;
- one coordinator container, not published to the host. Selectors dial it by
  its container name, the name in its TLS certificate. It reaches the
  website's internal API through `host.docker.internal` (the host gateway);
- N selector containers, each published on the problem's fixed host port
  (`RunSpec.selector_ports`), the endpoints in the join bundles;
- one volume `<prefix>-p<id>-state` for the coordinator's state (the app and
  its checkpoints). The app is copied into it with `put_archive`, so the Celery
  worker shares no path with the problem's containers and may itself run in a
  container.

Everything carries the labels `fedota.install=<prefix>`, `fedota.problem=<id>`
and `fedota.role=<role>`, and is found again by label alone: `stop()` and
orphan removal need no record of what was started.

Containers run as the images' non-root user with every capability dropped,
`no-new-privileges`, a read-only root filesystem (a tmpfs at /tmp), memory,
CPU and pid limits and no Docker socket.

Restart policies differ by role (docs/containers.md). A selector has
`on-failure` with a few retries: the engine brings a crashed selector back at
once, on the same port with the same certificate. The coordinator has none:
it exits non-zero when its run failed as well as when it crashed, and only the
website knows which (a failed run was reported as failed first), so the
reconciler decides. The engine never restarts a container someone killed or
stopped; the reconciler restarts exactly that container (`restart`), and
launches the run whole only when a container is gone.

The checkpoints are streamed to the website as the coordinator writes them,
so the volume is working state: it survives a relaunch of the same run and is
removed, with the containers and the network, when the problem stops.

Engine errors become `SpawnError` here, with what the engine said.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import requests

from webserver.spawner.base import METRICS_PORT, RunSpec, ServiceState, SpawnError, metrics_env, serves_metrics
from webserver.spawner.process import _bind_host

log = logging.getLogger(__name__)

COORDINATOR_PORT = 9091
SELECTOR_PORT = 9092
# Each service's plaintext health port, on the container's loopback only (its gRPC port speaks TLS).
HEALTH_PORT = 9093
STATE_MOUNT = "/state"
# The whole start (every container answering its health check) must fit in this.
START_TIMEOUT = 120.0
STOP_GRACE = 10
# Asked inside a container (the worker may not reach the problem's network): the
# same question as the images' HEALTHCHECK, grpc.health.v1 Check("") answering SERVING
# (an RpcError exits 1). It imports grpc and grpc_health only: fedota_common.grpcutil's
# check_health pulls in numpy and Flower (0.5 s of CPU against 0.1 s), which competed
# with the services still starting beside it.
# The images' health check (their HEALTHCHECK's too): grpc.health.v1 Check("") on the loopback
# health port, without importing grpc (fedota_common/healthprobe.py says why).
PROBE = ["python", "-m", "fedota_common.healthprobe", str(HEALTH_PORT)]
HOST_GATEWAY = "host.docker.internal"
LABEL = "fedota"

T = TypeVar("T")


@contextmanager
def _engine(what: str) -> Iterator[None]:
    """Turn the engine's (and its transport's) errors into SpawnError naming what failed."""
    try:
        yield
    except docker.errors.APIError as exc:
        raise SpawnError(f"{what}: the Docker engine said: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise SpawnError(f"{what}: cannot talk to the Docker engine ({exc})") from exc


def container_url(url: str) -> str:
    """`url` as a container sees it: a loopback host becomes the host gateway."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        netloc = HOST_GATEWAY + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _fab_archive(data: bytes, name: str) -> bytes:
    """A tar holding `fab/<name>`, owned by the images' user, for put_archive into the state volume."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo("fab")
        folder.type, folder.mode, folder.uid, folder.gid = tarfile.DIRTYPE, 0o755, 10001, 10001
        folder.mtime = int(time.time())
        tar.addfile(folder)
        info = tarfile.TarInfo(f"fab/{name}")
        info.size, info.mode, info.uid, info.gid = len(data), 0o444, 10001, 10001
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class DockerSpawner:
    name = "docker"

    def __init__(
        self,
        *,
        client: Any = None,
        prefix: str = "fedota",
        coordinator_image: str = "fedota/coordinator:latest",
        selector_image: str = "fedota/selector:latest",
        selector_host: str = "127.0.0.1",
        publish_host: str | None = None,
        coordinator_memory: str = "8g",
        selector_memory: str = "4g",
        cpus: float = 2.0,
        cpu_shares: int = 256,
        pids_limit: int = 1024,
        restart_retries: int = 3,
        metrics: bool = False,
    ) -> None:
        self._client = client
        self.metrics = metrics
        self.prefix = prefix
        self.coordinator_image = coordinator_image
        self.selector_image = selector_image
        # What clients dial (the join bundles), and the host address ports are published on.
        self.selector_host = selector_host
        self.publish_host = publish_host or _bind_host(selector_host)
        self.coordinator_memory = coordinator_memory
        self.selector_memory = selector_memory
        self.cpus = cpus
        # The engine's default weight is 1024 (the website's container, in docker-compose.yml): a
        # problem's services yield the CPU to pages when both want it, and take all of it when not.
        self.cpu_shares = cpu_shares
        self.pids_limit = pids_limit
        self.restart_retries = restart_retries

    @classmethod
    def from_settings(cls) -> DockerSpawner:
        from django.conf import settings

        from webserver.spawner.addresses import selector_host

        return cls(
            prefix=settings.FEDOTA_DOCKER_PREFIX,
            coordinator_image=settings.FEDOTA_COORDINATOR_IMAGE,
            selector_image=settings.FEDOTA_SELECTOR_IMAGE,
            selector_host=selector_host(),
            publish_host=settings.FEDOTA_DOCKER_PUBLISH_HOST or None,
            coordinator_memory=settings.FEDOTA_DOCKER_COORDINATOR_MEMORY,
            selector_memory=settings.FEDOTA_DOCKER_SELECTOR_MEMORY,
            cpus=settings.FEDOTA_DOCKER_CPUS,
            cpu_shares=settings.FEDOTA_DOCKER_CPU_SHARES,
            metrics=settings.FEDOTA_PROBLEM_METRICS,
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            with _engine("connecting"):
                self._client = docker.from_env(timeout=60)
        return self._client

    # ---- names and labels -------------------------------------------------------------------------

    def network_name(self, problem_id: int) -> str:
        return f"{self.prefix}-p{problem_id}"

    def volume_name(self, problem_id: int) -> str:
        return f"{self.prefix}-p{problem_id}-state"

    def container_name(self, problem_id: int, role: str, index: int = 0) -> str:
        return (
            f"{self.prefix}-p{problem_id}-coordinator"
            if role == "coordinator"
            else (f"{self.prefix}-p{problem_id}-selector-{index}")
        )

    def labels(self, problem_id: int, **extra: str) -> dict[str, str]:
        return {f"{LABEL}.install": self.prefix, f"{LABEL}.problem": str(problem_id), **extra}

    def _filters(self, problem_id: int | None = None) -> dict[str, list[str]]:
        wanted = [f"{LABEL}.install={self.prefix}"]
        if problem_id is not None:
            wanted.append(f"{LABEL}.problem={problem_id}")
        return {"label": wanted}

    # ---- Spawner interface -----------------------------------------------------------------------

    def coordinator_hosts(self, problem_id: int) -> list[str]:
        return [self.container_name(problem_id, "coordinator")]

    def start(self, spec: RunSpec) -> list[ServiceState]:
        if not 1 <= spec.num_selectors:
            raise SpawnError("a run needs at least one selector")
        ports: tuple[int | None, ...] = spec.selector_ports or (None,) * spec.num_selectors
        if len(ports) != spec.num_selectors:
            raise SpawnError(f"{spec.num_selectors} selectors need {spec.num_selectors} ports, got {len(ports)}")
        self._check_images()
        # A relaunch (restart) replaces the containers but keeps network and volume.
        self._remove_containers(spec.problem_id)
        network = self._ensure_network(spec.problem_id)
        volume = self._ensure_volume(spec.problem_id)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            coordinator = self._create_coordinator(spec, network, volume)
            selectors = [self._create_selector(spec, network, i, port) for i, port in enumerate(ports)]

            def start_coordinator() -> None:
                with _engine("starting the coordinator"):
                    coordinator.start()

            def start_selector(i: int) -> None:
                with _engine(f"starting selector {i}"):
                    _start_published(
                        selectors[i],
                        f"selector {i} cannot be published on port {ports[i]}: another program is using "
                        "it (set FEDOTA_SELECTOR_PORT_BASE to move this installation's selector ports)",
                    )

            # All at once, and probed all at once: each start is the engine wiring a network
            # (0.5 s here), and the selectors retry their coordinator by themselves.
            _each(
                lambda start: start(), [start_coordinator] + [lambda i=i: start_selector(i) for i in range(len(ports))]
            )
            waits = [lambda: self._wait_healthy(coordinator, "coordinator", 0, deadline)] + [
                lambda c=c, i=i: self._wait_healthy(c, "selector", i, deadline) for i, c in enumerate(selectors)
            ]
            _each(lambda wait: wait(), waits)
            with _engine(f"inspecting the containers of problem {spec.problem_id}"):
                for container in (coordinator, *selectors):
                    container.reload()
        except BaseException:
            self._remove_containers(spec.problem_id)
            raise
        # Each has just answered its health check: asking again (status() would, as the engine's
        # own first check comes an interval after the start) doubled the probes' cost.
        states = [self._state(c, answered=True) for c in (coordinator, *selectors)]
        states.sort(key=lambda s: (s.role != "coordinator", s.index))
        return states

    def status(self, problem_id: int) -> list[ServiceState]:
        with _engine(f"listing the containers of problem {problem_id}"):
            containers = self.client.containers.list(all=True, ignore_removed=True, filters=self._filters(problem_id))
        out = [self._state(c) for c in containers]
        out.sort(key=lambda s: (s.role != "coordinator", s.index))
        return out

    def restart(self, problem_id: int, role: str, index: int) -> ServiceState:
        """Start the exited container of one service again: same name, ports, volume, network, environment."""
        name = self.container_name(problem_id, role, index)
        what = f"{role} {index}" if role == "selector" else role
        with _engine(f"restarting the {what} of problem {problem_id}"):
            try:
                container = self.client.containers.get(name)
            except docker.errors.NotFound:
                raise SpawnError(f"the {what}'s container {name} is gone; it cannot be restarted as it was") from None
            labels = container.attrs["Config"].get("Labels") or {}
            if labels.get(f"{LABEL}.install") != self.prefix or labels.get(f"{LABEL}.problem") != str(problem_id):
                raise SpawnError(f"the container {name} is not this installation's {what} of problem {problem_id}")
            state = container.attrs["State"]
            if state["Status"] not in ("running", "restarting"):
                _start_published(
                    container, f"the {what} cannot be published on its port again: another program is using it"
                )
            container.reload()
            return self._state(container)

    def stop(self, problem_id: int, *, remove_data: bool = False) -> None:
        """Remove the problem's containers, its network and its state volume (found by label).

        The volume goes too whatever `remove_data` says: its checkpoints were
        streamed to the website as they were written.
        """
        self._remove_containers(problem_id)
        with _engine(f"removing the network of problem {problem_id}"):
            for network in self.client.networks.list(filters=self._filters(problem_id)):
                try:
                    network.remove()
                except docker.errors.NotFound:
                    pass
        with _engine(f"removing the volume of problem {problem_id}"):
            for volume in self.client.volumes.list(filters=self._filters(problem_id)):
                try:
                    volume.remove(force=True)
                except docker.errors.NotFound:
                    pass

    def problems(self) -> set[int]:
        found: set[int] = set()
        key = f"{LABEL}.problem"
        with _engine("listing this installation's containers"):
            objects: list[Any] = [
                *self.client.containers.list(all=True, ignore_removed=True, filters=self._filters()),
                *self.client.networks.list(filters=self._filters()),
                *self.client.volumes.list(filters=self._filters()),
            ]
        for obj in objects:
            labels = (obj.attrs.get("Config") or {}).get("Labels") or obj.attrs.get("Labels") or {}
            try:
                found.add(int(labels[key]))
            except (KeyError, ValueError):
                continue
        return found

    # ---- internals --------------------------------------------------------------------------------

    def _check_images(self) -> None:
        for image in (self.coordinator_image, self.selector_image):
            with _engine(f"looking for the image {image}"):
                try:
                    self.client.images.get(image)
                except docker.errors.ImageNotFound:
                    raise SpawnError(
                        f"the image {image} is not on this Docker engine; build it with scripts/build-images.sh"
                    ) from None

    def _ensure_network(self, problem_id: int) -> Any:
        name = self.network_name(problem_id)
        with _engine(f"creating the network {name}"):
            existing = self.client.networks.list(names=[name], filters=self._filters(problem_id))
            if existing:
                return existing[0]
            return self.client.networks.create(
                name, driver="bridge", labels=self.labels(problem_id, **{f"{LABEL}.role": "network"})
            )

    def _ensure_volume(self, problem_id: int) -> Any:
        name = self.volume_name(problem_id)
        with _engine(f"creating the volume {name}"):
            try:
                return self.client.volumes.get(name)
            except docker.errors.NotFound:
                return self.client.volumes.create(name, labels=self.labels(problem_id, **{f"{LABEL}.role": "state"}))

    def _hardening(self, memory: str, *, restart: bool) -> dict[str, Any]:
        return {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "read_only": True,
            "tmpfs": {"/tmp": "rw,nosuid,nodev,size=512m"},
            "mem_limit": memory,
            "nano_cpus": int(self.cpus * 1e9),
            "cpu_shares": self.cpu_shares,
            "pids_limit": self.pids_limit,
            "restart_policy": (
                {"Name": "on-failure", "MaximumRetryCount": self.restart_retries} if restart else {"Name": "no"}
            ),
            "init": True,
            "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        }

    def _create_coordinator(self, spec: RunSpec, network: Any, volume: Any) -> Any:
        name = self.container_name(spec.problem_id, "coordinator")
        try:
            fab = spec.fab_path.read_bytes()
        except OSError as exc:
            raise SpawnError(f"cannot read the problem's app {spec.fab_path}: {exc}") from exc
        fab_name = f"{spec.fab_sha256}.fab"
        env = {
            "HOME": "/tmp",
            "FEDOTA_APP": f"{STATE_MOUNT}/fab/{fab_name}",
            "FEDOTA_STATE_DIR": f"{STATE_MOUNT}/run_{spec.run_number:03d}",
            "FEDOTA_LISTEN": f"0.0.0.0:{COORDINATOR_PORT}",
            "FEDOTA_HEALTH_LISTEN": f"127.0.0.1:{HEALTH_PORT}",
            "FEDOTA_RUN_ID": str(spec.run_id),
            "FEDOTA_RUN_CONFIG": json.dumps(spec.run_config),
            "FEDOTA_ROUND_TIMEOUT": str(spec.round_timeout),
            "FEDOTA_SELECTOR_TOKEN": spec.selector_token,
            "FEDOTA_WAIT_FOR_NODES": str(spec.min_clients),
            **({"FEDOTA_REPLY_POLICY": spec.reply_policy} if spec.reply_policy else {}),
            "FEDOTA_REPORT_URL": container_url(spec.report_url),
            "FEDOTA_REPORT_TOKEN": spec.service_token,
            **metrics_env(self.metrics),
            **spec.coordinator_tls_env(),
            **spec.extra_env,
        }
        labels = self.labels(
            spec.problem_id,
            **{f"{LABEL}.role": "coordinator", f"{LABEL}.index": "0", f"{LABEL}.run": str(spec.run_id)},
        )
        with _engine("creating the coordinator container"):
            container = self.client.containers.create(
                self.coordinator_image,
                name=name,
                hostname="coordinator",
                environment=env,
                labels=labels,
                network=network.name,
                volumes={volume.name: {"bind": STATE_MOUNT, "mode": "rw"}},
                extra_hosts={HOST_GATEWAY: "host-gateway"},
                # Not the engine's to restart: see the module docstring.
                **self._hardening(self.coordinator_memory, restart=False),
            )
            # Into the volume (the root filesystem is read-only), before the first start.
            if not container.put_archive(STATE_MOUNT, _fab_archive(fab, fab_name)):
                raise SpawnError("the Docker engine refused the app archive for the coordinator")
        return container

    def _create_selector(self, spec: RunSpec, network: Any, index: int, port: int | None) -> Any:
        name = self.container_name(spec.problem_id, "selector", index)
        env = {
            "HOME": "/tmp",
            "FEDOTA_COORDINATOR": f"{self.container_name(spec.problem_id, 'coordinator')}:{COORDINATOR_PORT}",
            "FEDOTA_LISTEN": f"0.0.0.0:{SELECTOR_PORT}",
            "FEDOTA_SELECTOR_ID": f"p{spec.problem_id}-r{spec.run_number}-s{index}",
            "FEDOTA_SELECTOR_TOKEN": spec.selector_token,
            "FEDOTA_HEALTH_LISTEN": f"127.0.0.1:{HEALTH_PORT}",
            **metrics_env(self.metrics),
            **spec.selector_tls_env(),
            **spec.extra_env,
        }
        labels = self.labels(
            spec.problem_id,
            **{f"{LABEL}.role": "selector", f"{LABEL}.index": str(index), f"{LABEL}.run": str(spec.run_id)},
        )
        with _engine(f"creating selector {index}"):
            return self.client.containers.create(
                self.selector_image,
                name=name,
                hostname=f"selector-{index}",
                environment=env,
                labels=labels,
                network=network.name,
                ports={f"{SELECTOR_PORT}/tcp": (self.publish_host, port)},
                **self._hardening(self.selector_memory, restart=True),
            )

    def _wait_healthy(self, container: Any, role: str, index: int, deadline: float) -> None:
        what = f"{role} {index}" if role == "selector" else role
        while True:
            with _engine(f"inspecting the {what}"):
                container.reload()
                state = container.attrs["State"]
                if state["Status"] in ("exited", "dead") or state.get("Restarting") or state["Status"] == "restarting":
                    raise SpawnError(
                        f"the {what} exited with code {state.get('ExitCode')} while starting:\n{self._tail(container)}"
                    )
                # Reading its log is cheap; a probe starts a Python inside the container.
                if state["Status"] == "running" and self._listening(container) and self._probe(container):
                    return
            if time.monotonic() > deadline:
                raise SpawnError(f"the {what} did not answer within {START_TIMEOUT:.0f} s:\n{self._tail(container)}")
            time.sleep(0.1)

    def _state(self, container: Any, *, answered: bool = False) -> ServiceState:
        """The service in `container` as the website shows it; `answered`: it has just
        answered its health check, so an engine still at "starting" need not be asked again."""
        attrs = container.attrs
        labels = attrs["Config"].get("Labels") or {}
        role = labels.get(f"{LABEL}.role", "unknown")
        index = int(labels.get(f"{LABEL}.index", "0") or 0)
        state = attrs["State"]
        status = state["Status"]
        exit_code: int | None = None
        detail = ""
        if status == "running":
            health = (state.get("Health") or {}).get("Status") or "healthy"
            if health == "starting" and (answered or (self._listening(container) and self._probe(container))):
                # The engine's first check runs an interval after the start; ask now.
                health = "healthy"
            if health == "unhealthy":
                detail = "the gRPC health check did not answer SERVING"
        elif status in ("created", "restarting"):
            health = "starting"
            if status == "restarting" or attrs.get("RestartCount"):
                detail = f"the engine is restarting it after exit code {state.get('ExitCode')}"
        else:  # exited, dead, paused, removing
            health = "exited"
            exit_code = int(state.get("ExitCode", 0)) if status != "paused" else None
            how = "was killed" if exit_code in (137, None) else f"exited with code {exit_code}"
            tail = self._tail(container, lines=8) if exit_code else ""
            detail = f"the container {how}" + (f":\n{tail}" if tail else "")
        if role == "selector":
            bound = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{SELECTOR_PORT}/tcp") or []
            host_port = (
                bound[0]["HostPort"]
                if bound
                else (((attrs.get("HostConfig") or {}).get("PortBindings") or {}).get(f"{SELECTOR_PORT}/tcp") or [{}])[
                    0
                ].get("HostPort", "")
            )
            address = f"{self.selector_host}:{host_port}" if host_port else ""
        else:
            address = f"{attrs['Name'].lstrip('/')}:{COORDINATOR_PORT}"
        restarts = int(attrs.get("RestartCount") or 0)
        return ServiceState(
            role, index, container.id[:12], address, health, detail, exit_code, restarts, self._metrics_at(attrs)
        )

    @staticmethod
    def _metrics_at(attrs: dict[str, Any]) -> str:
        """Where the running container serves its metrics: its address on the problem's network."""
        env = (attrs.get("Config") or {}).get("Env") or []
        if attrs["State"]["Status"] != "running" or not serves_metrics(env):
            return ""
        networks = ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).values()
        address = next((str(n.get("IPAddress")) for n in networks if n.get("IPAddress")), "")
        return f"{address}:{METRICS_PORT}" if address else ""

    @staticmethod
    def _listening(container: Any) -> bool:
        """Has the service logged that it listens, since its container (re)started?"""
        started = container.attrs["State"].get("StartedAt") or ""
        try:
            # The engine's nanoseconds do not parse; microseconds are plenty.
            since = datetime.fromisoformat(started[:26].rstrip("Z") + "+00:00").timestamp()
        except ValueError:
            since = None
        try:
            text = container.logs(stdout=True, stderr=True, since=since)
        except (docker.errors.DockerException, requests.RequestException):
            return False
        return b" listening" in text

    @staticmethod
    def _probe(container: Any) -> bool:
        """Does the service in `container` answer the gRPC health check on its loopback health port?"""
        try:
            code, _ = container.exec_run(PROBE)
        except docker.errors.APIError:
            return False  # e.g. it stopped between the inspect and the exec
        return bool(code == 0)

    @staticmethod
    def _tail(container: Any, lines: int = 15) -> str:
        try:
            return container.logs(tail=lines).decode(errors="replace").strip()
        except (docker.errors.DockerException, requests.RequestException):
            return ""

    def _remove_containers(self, problem_id: int) -> None:
        with _engine(f"listing the containers of problem {problem_id}"):
            containers = self.client.containers.list(all=True, ignore_removed=True, filters=self._filters(problem_id))

        def remove(container: Any) -> None:
            with _engine(f"removing the container {container.name}"):
                try:
                    if container.status == "running":
                        container.stop(timeout=STOP_GRACE)
                    container.remove(force=True)
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    # Another worker (a stop task and the reconciler at once) is removing it.
                    if exc.status_code != 409 or "in progress" not in str(exc):
                        raise

        # The coordinator first: on SIGTERM it tells its selectors the run was stopped and they
        # tell their clients, which then exit instead of looking for a selector for minutes.
        # Stopped after it, the selectors have passed that on.
        def is_coordinator(c: Any) -> bool:
            return (c.attrs["Config"].get("Labels") or {}).get(f"{LABEL}.role") == "coordinator"

        _each(remove, [c for c in containers if is_coordinator(c)])
        _each(remove, [c for c in containers if not is_coordinator(c)])


def _start_published(container: Any, taken: str) -> None:
    """Start a container; SpawnError(`taken`) if its published port belongs to another program."""
    try:
        container.start()
    except docker.errors.APIError as exc:
        if "allocated" in str(exc) or "address already in use" in str(exc):
            raise SpawnError(taken) from exc
        raise


def _each(func: Callable[[Any], None], items: list[Any]) -> None:
    """`func` on every item in parallel; the first error is raised once all have finished."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        futures = [pool.submit(func, item) for item in items]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
