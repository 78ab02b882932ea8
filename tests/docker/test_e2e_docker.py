"""The whole platform against a real Docker engine, driven only through its HTTP API.

A real gunicorn, a real Celery worker and Celery beat (the reconciler) run as
subprocesses on a file SQLite database with the `docker` spawner. A problem
setter publishes two problems on the built-in tabular app with the
breast-cancer contract: A (2 selectors, 5 rounds, 3 hospitals) and, right
after it, B (1 selector, 3 rounds, 2 hospitals). Each problem's coordinator and
selectors come up as containers on the problem's own network, locked down.
Hospitals ask to join, the setter approves, each downloads its join bundle and
runs the exact `docker run` line its problem page shows (the bundle's too), with
only the placeholder paths filled in (its own CSV folder and the bundle, mounted
read-only), on the default bridge. Nothing sets FEDOTA_SELECTOR_HOST, as on a fresh
install: the platform finds the address itself (the Docker host gateway, which
the engine's bridge network may not list) and the clients dial the selectors'
published ports there, through the host like a remote site. Both
problems train to their end at the same time; A's dashboard shows 5 rounds with
accuracy of at least 0.90 and its final model downloads and loads. A container
of one problem cannot connect to the other problem's coordinator. Finally
nothing labelled with either problem is left: a finished problem is cleaned up
by the reconciler, and stopping a running problem through the API removes its
containers, network and volume.

Run alone: `.venv/bin/pytest -q tests/docker/test_e2e_docker.py -x -s` (a few
minutes on two cores). Skipped loudly without an engine or the images (see
conftest.py), failing instead under FEDOTA_REQUIRE_DOCKER=1.
"""

from __future__ import annotations

import io
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.docker.conftest import leftovers
from tests.docker.joining import filled_in, login, shown_docker_run
from tests.docker.probes import REACH, exec_python, ip_on, reach
from tests.ports import free_port
from webserver.spawner.addresses import bridge_gateway

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "a long and unusual passphrase 7"
# Client containers carry the install label (so the session-end check finds any left
# behind) but not `fedota.problem`: they are the hospitals' containers, not the
# platform's, and the platform must neither count nor remove them.
CLIENT_LABEL = "fedota.e2e-client"
SETTER = "e2e-setter"
HOLDERS = ("e2e-hospital-1", "e2e-hospital-2", "e2e-hospital-3")
COORDINATOR_PORT = 9091
SELECTOR_PORT = 9092
MAX_SELECTORS = 8  # webserver.spawner.base.MAX_SELECTORS: each problem owns 8 ports

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(1500)]

T = TypeVar("T")


# ---- the platform: gunicorn, a Celery worker and beat, on a file database ----------------------


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    try:
        # The main process only: gunicorn's arbiter and Celery's main process stop their children.
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def _free_on(host: str, ports: range) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


@dataclass
class Client:
    """One hospital's `fedota/client` container and the processes following it."""

    name: str
    problem_id: int
    log: Path
    waiter: subprocess.Popen[bytes]  # `docker wait`: prints the exit code when the container ends
    follower: subprocess.Popen[bytes]  # `docker logs -f` into `log`
    _code: int | None = None

    def code(self) -> int | None:
        """The container's exit code once it has ended, else None."""
        if self._code is None and self.waiter.poll() is not None:
            out = (self.waiter.stdout.read() if self.waiter.stdout else b"").decode().strip()
            self._code = int(out) if out.lstrip("-").isdigit() else -1
        return self._code


@dataclass
class Platform:
    url: str
    tmp: Path
    env: dict[str, str]
    prefix: str
    gateway: str
    port_base: int
    docker: Any
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    clients: list[Client] = field(default_factory=list)

    # -- diagnostics ---------------------------------------------------------------------------

    def explain(self, problem_ids: tuple[int, ...] = ()) -> str:
        """Tails of every log that may say why a wait failed."""
        parts = []
        for name, proc in self.procs.items():
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            parts.append(f"--- {name} ({state}) {self.logs[name]} ---\n{_tail(self.logs[name])}")
        filters = {"label": [f"fedota.install={self.prefix}"]}
        for container in self.docker.containers.list(all=True, filters=filters, ignore_removed=True):
            labels = container.labels
            owner = labels.get("fedota.problem", labels.get(CLIENT_LABEL, ""))
            if problem_ids and not (owner.isdigit() and int(owner) in problem_ids):
                continue
            try:
                logs = container.logs(tail=25).decode(errors="replace")
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                logs = f"(no logs: {exc})"
            health = container.attrs["State"].get("Health") or {}
            checks = "".join(
                f"\n  health check exit {c.get('ExitCode')}: {(c.get('Output') or '').strip()[-300:]}"
                for c in (health.get("Log") or [])[-3:]
            )
            parts.append(
                f"--- container {container.name} ({container.status}, health {health.get('Status', '-')}) ---"
                f"{checks}\n{logs}"
            )
        for client in self.clients:
            if not problem_ids or client.problem_id in problem_ids:
                parts.append(f"--- client {client.name} (exit {client.code()}) ---\n{_tail(client.log, 25)}")
        return "\n".join(parts)

    # -- waiting -------------------------------------------------------------------------------

    def wait(
        self,
        what: str,
        check: Callable[[], T | None],
        timeout: float,
        *,
        interval: float = 1.0,
        problems: tuple[int, ...] = (),
    ) -> T:
        """Poll `check` until it returns something truthy; on time-out fail with every log's tail.

        `check` may raise AssertionError itself to fail at once (a run that failed).
        """
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with code {proc.returncode} while waiting for {what}")
            try:
                value = check()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.explain(problems)}") from None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.explain(problems)}")
            time.sleep(interval)

    # -- HTTP ------------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        expect: tuple[int, ...] = (200,),
        files: dict[str, Any] | None = None,
    ) -> Any:
        """The JSON answer of an API call that must answer one of `expect` (multipart with `body` as fields when
        `files`)."""
        import requests

        headers = {"Authorization": f"Token {token}"} if token else {}
        if files is None:
            resp = requests.request(method, self.url + path, json=body, headers=headers, timeout=60)
        else:
            resp = requests.request(method, self.url + path, data=body, files=files, headers=headers, timeout=60)
        assert resp.status_code in expect, (
            f"{method} {path} answered {resp.status_code} (expected {expect}): {resp.text[:2000]}"
        )
        return resp.json() if resp.content else None

    def token(self, username: str) -> str:
        doc = self.api("POST", "/api/v1/auth/token/", body={"username": username, "password": PASSWORD})
        return str(doc["token"])

    def browser_session(self, username: str) -> Any:
        """A logged-in session, for the pages (model downloads are pages, not API)."""
        return login(self.url, username, PASSWORD)

    # -- problems --------------------------------------------------------------------------------

    def selector_ports(self, problem_id: int, count: int) -> list[int]:
        first = self.port_base + (problem_id % 1000) * MAX_SELECTORS
        return list(range(first, first + count))

    def latest_run(self, token: str, problem_id: int) -> dict[str, Any]:
        runs = self.api("GET", f"/api/v1/problems/{problem_id}/runs/", token)
        assert runs, f"problem {problem_id} has no run"
        return dict(max(runs, key=lambda r: int(r["number"])))

    def wait_run(self, token: str, problem_id: int, status: str, timeout: float) -> dict[str, Any]:
        final = {"running", "finished", "failed", "stopped"} - {status}

        def check() -> dict[str, Any] | None:
            run = self.latest_run(token, problem_id)
            if run["status"] in final:
                raise AssertionError(
                    f"run {run['number']} of problem {problem_id} became {run['status']} instead of {status}: "
                    f"{run['status_detail']}"
                )
            return run if run["status"] == status else None

        return self.wait(f"problem {problem_id}'s run to be {status}", check, timeout, problems=(problem_id,))

    def containers(self, problem_id: int) -> list[Any]:
        filters = {"label": [f"fedota.install={self.prefix}", f"fedota.problem={problem_id}"]}
        return list(self.docker.containers.list(all=True, filters=filters, ignore_removed=True))

    # -- hospitals -------------------------------------------------------------------------------

    def shown_docker_run(self, username: str, problem_id: int) -> str:
        """The `docker run` line the problem page shows this data holder, as its Copy button copies it."""
        return shown_docker_run(self.browser_session(username), self.url, problem_id)

    def start_client(self, problem_id: int, bundle: dict[str, Any], data: Path, name: str, shown: str) -> Client:
        """Run the line the website shows, with only the placeholder paths filled in, detached and named."""
        line = filled_in(shown, problem_id, data, bundle, self.tmp / "bundles" / name)
        # Detached and findable; everything else exactly as the website gives it.
        line[2:2] = ["-d", "--name", name, "--label", f"fedota.install={self.prefix}"]
        line[2:2] = ["--label", f"{CLIENT_LABEL}={problem_id}"]
        started = subprocess.run(line, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, f"{shlex.join(line)} failed: {started.stderr}"
        log = self.tmp / "logs" / f"{name}.log"
        # The container removes itself (--rm): follow its log and exit code while it runs.
        follower = subprocess.Popen(
            ["docker", "logs", "-f", name], stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        waiter = subprocess.Popen(
            ["docker", "wait", name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = Client(name, problem_id, log, waiter, follower)
        self.clients.append(client)
        return client


@pytest.fixture(scope="module")
def platform(docker_client: Any, docker_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with running_platform(docker_client, docker_prefix, tmp_path_factory.mktemp("e2e-docker")) as made:
        yield made


@contextmanager
def running_platform(
    docker_client: Any, docker_prefix: str, tmp: Path, *, spawner: str = "docker", environ: dict[str, str] | None = None
) -> Iterator[Platform]:
    """gunicorn, a Celery worker and beat on a file database in `tmp`, with the `spawner` backend.

    `environ`: settings of the platform's own on top of this function's (a swarm's selector hosts).
    """
    (tmp / "logs").mkdir()
    var = tmp / "var"
    var.mkdir()
    port = free_port()
    # Nothing sets FEDOTA_SELECTOR_HOST, as on a fresh install: the platform announces the
    # selectors at the Docker host gateway, which clients on the default bridge reach (the
    # engine's bridge may list no gateway: Debian's docker.io 20.10 as a plain dockerd).
    gateway = bridge_gateway(docker_client.networks.get("bridge").attrs)
    assert gateway, f"no gateway for the default bridge: {docker_client.networks.get('bridge').attrs['IPAM']}"
    for _ in range(50):
        port_base = random.randrange(21000, 29000, MAX_SELECTORS)
        # Problems 1 to 3 (a fresh database) get the blocks right after the base.
        if _free_on(gateway, range(port_base + MAX_SELECTORS, port_base + 4 * MAX_SELECTORS)):
            break
    else:
        pytest.fail(f"no free block of selector ports on {gateway}")
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDOTA_", "CELERY_", "DATABASE_", "DJANGO_"))}
    env.pop("CACHE_URL", None)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "webserver.settings",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "FEDOTA_ENV": "development",
            "FEDOTA_VAR_DIR": str(var),
            "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
            "CELERY_BROKER_URL": f"sqla+sqlite:///{var / 'broker.sqlite3'}",
            "FEDOTA_SPAWNER": spawner,
            "FEDOTA_DOCKER_PREFIX": docker_prefix,
            "FEDOTA_SELECTOR_PORT_BASE": str(port_base),
            "FEDOTA_PUBLIC_URL": url,
            # A loopback report URL: the spawner hands the coordinator host.docker.internal instead.
            "FEDOTA_INTERNAL_URL": url,
            **(environ or {}),
        }
    )
    logs = {name: tmp / "logs" / f"{name}.log" for name in ("web", "worker", "beat")}
    made = Platform(url, tmp, env, docker_prefix, gateway, port_base, docker_client, logs)
    print(f"\n[e2e-docker] {url}, prefix {docker_prefix}, selectors on {gateway} from port {port_base}, in {tmp}")

    def manage(*args: str, extra: dict[str, str] | None = None) -> None:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env={**env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"

    def start(name: str, argv: list[str]) -> None:
        made.procs[name] = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=logs[name].open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    try:
        manage("migrate", "--noinput")
        users = [(SETTER, "setter", "Oncology Lab")] + [
            (h, "holder", f"Hospital {i + 1}") for i, h in enumerate(HOLDERS)
        ]
        manage(
            "shell",
            "-c",
            "import json, os\n"
            "from django.contrib.auth import get_user_model\n"
            "from webserver.accounts.models import Profile\n"
            "for name, role, org in json.loads(os.environ['E2E_USERS']):\n"
            "    user = get_user_model().objects.create_user(\n"
            "        username=name, email=f'{name}@example.org', password=os.environ['E2E_PASSWORD'])\n"
            "    Profile.objects.create(user=user, role=role, organisation=org, email_verified=True)\n",
            extra={"E2E_USERS": json.dumps(users), "E2E_PASSWORD": PASSWORD},
        )
        start(
            "web",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "webserver.wsgi",
                # Every interface: coordinators report through the Docker host gateway.
                "--bind",
                f"0.0.0.0:{port}",
                "--worker-class",
                "gthread",
                "--workers",
                "2",
                "--threads",
                "8",
                "--timeout",
                "120",
                "--access-logfile",
                str(tmp / "logs" / "web-access.log"),
            ],
        )
        start(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "webserver",
                "worker",
                "--loglevel=INFO",
                "--concurrency=2",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"e2e-docker-{os.getpid()}@%h",
            ],
        )
        # The reconciler every 15 s, as in production: it removes a finished problem's selectors.
        start(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "webserver",
                "beat",
                "--loglevel=INFO",
                "--schedule",
                str(var / "celerybeat-schedule"),
            ],
        )
        import requests

        def web_up() -> bool:
            try:
                return requests.get(url + "/", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        made.wait("the web server", web_up, 60, interval=0.5)
        made.wait("the Celery worker", lambda: " ready." in logs["worker"].read_text(errors="replace"), 90)
        yield made
    finally:
        for name in ("beat", "worker", "web"):
            if name in made.procs:
                _stop_group(made.procs[name])
        for client in made.clients:
            for proc in (client.waiter, client.follower):
                _stop_group(proc, grace=5)
        _remove_everything(docker_client, docker_prefix)
        for name in ("web", "worker", "beat"):
            if logs[name].exists():
                sys.stdout.write(f"\n--- {name} log {logs[name]} (tail) ---\n{_tail(logs[name], 15)}\n")


def _remove_everything(client: Any, prefix: str) -> None:
    """Whatever this test left labelled with its prefix: clients, problems' containers, networks, volumes.

    The platform's own stop first (by problem), then a sweep by label with the SDK; every step
    runs even if an earlier one failed, and the first error is raised at the end.
    """
    import docker.errors

    from webserver.spawner.docker import DockerSpawner

    errors: list[BaseException] = []
    filters = {"label": [f"fedota.install={prefix}"]}

    def attempt(step: Callable[[], object]) -> None:
        try:
            step()
        except docker.errors.NotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - keep cleaning, report the first failure
            errors.append(exc)

    # ignore_removed: a --rm client may vanish between the listing and its inspection.
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        if CLIENT_LABEL in container.labels:
            attempt(lambda c=container: c.remove(force=True))
    spawner = DockerSpawner(client=client, prefix=prefix)
    problems: set[int] = set()
    attempt(lambda: problems.update(spawner.problems()))
    for problem_id in sorted(problems):
        attempt(lambda p=problem_id: spawner.stop(p))
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        attempt(lambda c=container: c.remove(force=True))
    for network in client.networks.list(filters=filters):
        attempt(network.remove)
    for volume in client.volumes.list(filters=filters):
        attempt(lambda v=volume: v.remove(force=True))
    if errors:
        raise errors[0]


# ---- checks on the problems' containers -------------------------------------------------------


INSIDE = (
    "import os\n"
    "caps = [l.split()[1] for l in open('/proc/1/status') if l.startswith(('CapEff', 'CapBnd'))]\n"
    "try:\n"
    "    open('/app/written-by-test', 'w'); writable = 'yes'\n"
    "except OSError as exc:\n"
    "    writable = type(exc).__name__ + ' ' + str(exc.strerror)\n"
    "print(os.getuid(), os.getgid(), *caps, writable, sep='|')\n"
)


# Run in a selector: its coordinator's link speaks TLS with a certificate from the problem's CA
# (the selector's own FEDOTA_COORDINATOR_CA) for the name it dials, and plaintext gets nowhere.
COORDINATOR_LINK = (
    "import os, socket, ssl, sys, grpc\n"
    "host, port = sys.argv[1], int(sys.argv[2])\n"
    "ctx = ssl.create_default_context(cadata=os.environ['FEDOTA_COORDINATOR_CA'])\n"
    "with socket.create_connection((host, port), timeout=5) as raw:\n"
    "    with ctx.wrap_socket(raw, server_hostname=host) as tls:\n"
    "        version = tls.version()\n"
    "channel = grpc.insecure_channel(f'{host}:{port}')\n"
    "try:\n"
    "    grpc.channel_ready_future(channel).result(timeout=3); plaintext = 'answered'\n"
    "except grpc.FutureTimeoutError:\n"
    "    plaintext = 'refused'\n"
    "print(version, plaintext)\n"
)


def _check_services(platform: Platform, token: str, problem_id: int, selectors: int) -> dict[str, Any]:
    """The problem's coordinator and selectors: labelled, healthy, on their own network, locked down."""
    network = f"{platform.prefix}-p{problem_id}"
    want_roles = ["coordinator"] + ["selector"] * selectors

    seen_healthy: set[str] = set()

    def all_healthy() -> list[Any] | None:
        containers = platform.containers(problem_id)
        for c in containers:
            if c.status != "running":
                raise AssertionError(f"{c.name} is {c.status}")
            if (c.attrs["State"].get("Health") or {}).get("Status") == "healthy":
                seen_healthy.add(c.name)
        names = {c.name for c in containers}
        return containers if len(names) == len(want_roles) and names <= seen_healthy else None

    # The engine's own HEALTHCHECK (gRPC health), first run 10 s after the start. Each container
    # must have passed it; one that later misses three checks in a row (a host so loaded that a
    # check exceeds its 5 s timeout) is "unhealthy" until the next check passes.
    containers = platform.wait(
        f"problem {problem_id}'s containers to be healthy", all_healthy, 120, problems=(problem_id,)
    )
    by_role = sorted(containers, key=lambda c: (c.labels["fedota.role"] != "coordinator", c.labels["fedota.index"]))
    assert [c.labels["fedota.role"] for c in by_role] == want_roles
    ports = platform.selector_ports(problem_id, selectors)
    for c in by_role:
        role, index = c.labels["fedota.role"], int(c.labels["fedota.index"])
        assert c.labels["fedota.install"] == platform.prefix and c.labels["fedota.problem"] == str(problem_id)
        expected_name = f"{network}-coordinator" if role == "coordinator" else f"{network}-selector-{index}"
        assert c.name == expected_name
        assert list(c.attrs["NetworkSettings"]["Networks"]) == [network], (
            f"{c.name} is attached to {list(c.attrs['NetworkSettings']['Networks'])}, not only to {network}"
        )
        host = c.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True, f"{c.name}: root filesystem is writable"
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), f"{c.name}: {host['CapDrop']} {host['CapAdd']}"
        assert "no-new-privileges:true" in (host["SecurityOpt"] or [])
        assert host["Privileged"] is False
        assert not any("docker.sock" in (m.get("Source") or "") for m in c.attrs["Mounts"])
        assert c.attrs["Config"]["User"] not in ("", "root", "0"), f"{c.name} runs as {c.attrs['Config']['User']!r}"
        code, out = exec_python(c, "-c", INSIDE)
        assert code == 0, out
        uid, gid, cap_eff, cap_bnd, writable = out.split("|")
        assert uid != "0" and gid != "0", f"{c.name} runs as uid {uid} gid {gid}"
        assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0, f"{c.name} has capabilities {cap_eff}/{cap_bnd}"
        assert "Read-only file system" in writable, f"{c.name}: writing to /app: {writable}"
        bound = {k: v for k, v in (c.attrs["NetworkSettings"]["Ports"] or {}).items() if v}
        if role == "coordinator":
            assert not bound and not host.get("PortBindings"), f"the coordinator is published: {bound}"
            assert [m.get("Name") for m in c.attrs["Mounts"]] == [f"{network}-state"]
        else:
            assert list(bound) == [f"{SELECTOR_PORT}/tcp"], bound
            code, out = exec_python(c, "-c", COORDINATOR_LINK, f"{network}-coordinator", str(COORDINATOR_PORT))
            assert code == 0 and out.splitlines()[-1] in ("TLSv1.2 refused", "TLSv1.3 refused"), (
                f"{c.name} -> its coordinator: not TLS with the problem's CA only: {out}"
            )
            assert [(b["HostIp"], int(b["HostPort"])) for b in bound[f"{SELECTOR_PORT}/tcp"]] == [
                (platform.gateway, ports[index])
            ]
    nets = platform.docker.networks.list(names=[network])
    assert [n.attrs["Labels"].get("fedota.problem") for n in nets] == [str(problem_id)]
    assert platform.docker.volumes.get(f"{network}-state").attrs["Labels"]["fedota.problem"] == str(problem_id)

    # The website's view of the same services (what the infrastructure page and dashboard show);
    # the reconciler refreshes it from the engine every 15 s.
    expected = sorted(
        [("coordinator", 0, "healthy", f"{network}-coordinator:{COORDINATOR_PORT}")]
        + [("selector", i, "healthy", f"{platform.gateway}:{p}") for i, p in enumerate(ports)]
    )
    shown: list[Any] = []

    def website_agrees() -> bool:
        dash = platform.api("GET", f"/api/v1/problems/{problem_id}/dashboard/", token)
        shown[:] = sorted((s["role"], s["index"], s["health"], s["address"]) for s in dash["services"])
        return shown == expected

    try:
        platform.wait(f"the dashboard to show problem {problem_id}'s services healthy", website_agrees, 60)
    except AssertionError as exc:
        raise AssertionError(f"the dashboard shows {shown}, not {expected}\n{exc}") from None
    return {c.name: c for c in by_role}


def _revoke_in_the_web_ui(platform: Platform, problem_id: int, participant_id: int) -> float:
    """The setter presses "Revoke" on the problem's participants page; returns when (monotonic)."""
    session = platform.browser_session(SETTER)
    resp = session.post(
        f"{platform.url}/participation/{participant_id}/revoke/",
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"], "reason": "consent withdrawn"},
        headers={"Referer": f"{platform.url}/"},
        allow_redirects=False,
        timeout=30,
    )
    at = time.monotonic()
    assert resp.status_code in (302, 303), f"revoking participant {participant_id}: HTTP {resp.status_code}"
    page = platform.api("GET", f"/api/v1/problems/{problem_id}/participants/", platform.token(SETTER))
    rows = page["results"] if isinstance(page, dict) else page
    assert [r["status"] for r in rows if r["id"] == participant_id] == ["revoked"], rows
    return at


# ---- the test ---------------------------------------------------------------------------------


def test_two_problems_train_in_containers_isolated_and_leave_nothing(platform: Platform, tmp_path: Path) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = time.monotonic() - t0
        print(f"[e2e-docker] {timings[name]:6.1f} s  {name}", flush=True)

    from scripts.make_demo_data import make_breast_cancer

    # Three hospitals' CSV folders; the client runs as uid 10001, so everything world-readable.
    demo = make_breast_cancer(tmp_path / "demo", 3, seed=0)
    for root, dirs, files in os.walk(tmp_path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    os.chmod(tmp_path, 0o755)
    contract = json.loads((demo / "contract.json").read_text())
    hospitals = [demo / "clients" / f"hospital_{i}" for i in range(3)]

    setter = platform.token(SETTER)
    holders = {name: platform.token(name) for name in HOLDERS}
    assert "tabular" in [a["name"] for a in platform.api("GET", "/api/v1/apps/", setter)]

    # ---- the setter creates and publishes A, then B right away ---------------------------------
    def create(title: str, run_config: dict[str, Any]) -> dict[str, Any]:
        return dict(
            platform.api(
                "POST",
                "/api/v1/problems/",
                setter,
                {
                    "title": title,
                    "description": "Tell **malignant** from benign tumours.",
                    "contract": contract,
                    "app_template": "tabular",
                    "run_config": run_config,
                    "join_policy": "approval",
                },
                expect=(201,),
            )
        )

    # The round timeout is generous: two federations share this machine's two cores.
    problem_a = create(
        "Breast cancer A",
        {"rounds": 5, "num_selectors": 2, "min_clients": 3, "clients_per_round": 0, "round_timeout": 240},
    )
    problem_b = create(
        "Breast cancer B",
        {"rounds": 3, "num_selectors": 1, "min_clients": 2, "clients_per_round": 0, "round_timeout": 240},
    )
    a, b = int(problem_a["id"]), int(problem_b["id"])
    run_a = platform.api("POST", f"/api/v1/problems/{a}/publish/", setter, expect=(201,))
    run_b = platform.api("POST", f"/api/v1/problems/{b}/publish/", setter, expect=(201,))
    assert run_a["status"] == run_b["status"] == "queued"
    lap("published A and B")

    platform.wait_run(setter, a, "running", 240)
    platform.wait_run(setter, b, "running", 240)
    lap("both runs running")
    services_a = _check_services(platform, setter, a, selectors=2)
    services_b = _check_services(platform, setter, b, selectors=1)
    lap("containers checked (labels, health, network, lockdown)")

    # ---- isolation: no container of one problem reaches the other problem's coordinator ---------
    net_a, net_b = f"{platform.prefix}-p{a}", f"{platform.prefix}-p{b}"
    coord_a, coord_b = services_a[f"{net_a}-coordinator"], services_b[f"{net_b}-coordinator"]
    ip_a, ip_b = ip_on(coord_a, net_a), ip_on(coord_b, net_b)
    probes = [
        (services_a[f"{net_a}-selector-0"], coord_a.name, True),  # control: its own coordinator, by name
        (services_a[f"{net_a}-selector-1"], ip_a, True),  # control: its own coordinator, by address
        (services_a[f"{net_a}-selector-0"], coord_b.name, False),
        (services_a[f"{net_a}-selector-0"], ip_b, False),
        (coord_a, ip_b, False),
        (services_b[f"{net_b}-selector-0"], coord_b.name, True),  # control
        (services_b[f"{net_b}-selector-0"], coord_a.name, False),
        (services_b[f"{net_b}-selector-0"], ip_a, False),
    ]
    for container, target, allowed in probes:
        ((ok, out),) = reach(container, [(target, COORDINATOR_PORT)])
        print(f"[e2e-docker] {container.name} -> {target}:{COORDINATOR_PORT}: {out}")
        assert ok is allowed, (
            f"{container.name} {'could not' if allowed else 'COULD'} connect to {target}:{COORDINATOR_PORT}: {out}"
        )
    # Where the hospitals' clients run (the default bridge): the coordinators are out of reach,
    # the selectors' published ports are not.
    targets = [(ip_a, COORDINATOR_PORT), (ip_b, COORDINATOR_PORT)] + [
        (platform.gateway, port) for port in platform.selector_ports(a, 2) + platform.selector_ports(b, 1)
    ]
    outside = subprocess.run(
        ["docker", "run", "--rm", "--label", f"fedota.install={platform.prefix}", "--label", f"{CLIENT_LABEL}=probe"]
        + ["--entrypoint", "python", "fedota/client:latest", "-c", REACH, json.dumps(targets)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outside.returncode == 0, outside.stderr
    from_bridge = json.loads(outside.stdout.strip().splitlines()[-1])
    print(f"[e2e-docker] from the default bridge: {from_bridge}")
    assert [ok for ok, _ in from_bridge] == [False, False, True, True, True], from_bridge
    lap("isolation checked")

    # ---- hospitals join: ask, the setter approves, each takes its bundle ------------------------
    participant_ids: dict[tuple[int, str], int] = {}
    # The `docker run` line each hospital's page shows: what the hospitals run, unchanged.
    lines: dict[tuple[int, str], str] = {}

    def join(problem_id: int, holder: str, site: str) -> dict[str, Any]:
        token = holders[holder]
        asked = platform.api(
            "POST", f"/api/v1/problems/{problem_id}/participants/", token, {"site_name": site}, expect=(201,)
        )
        assert asked["status"] == "pending", asked
        approved = platform.api("POST", f"/api/v1/participants/{asked['id']}/approve/", setter)
        assert approved["status"] == "approved", approved
        participant_ids[(problem_id, site)] = int(asked["id"])
        bundle = dict(platform.api("POST", f"/api/v1/participants/{asked['id']}/bundle/", token))
        ports = platform.selector_ports(problem_id, 2 if problem_id == a else 1)
        assert bundle["selectors"] == [f"{platform.gateway}:{p}" for p in ports], bundle["selectors"]
        lines[(problem_id, site)] = platform.shown_docker_run(holder, problem_id)
        assert lines[(problem_id, site)] == bundle["docker_run"], (lines[(problem_id, site)], bundle["docker_run"])
        assert bundle["problem_id"] == problem_id and bundle["site_name"] == site
        assert bundle["fab_sha256"] == (problem_a if problem_id == a else problem_b)["fab_sha256"]
        assert bundle["data_contract"] == (problem_a if problem_id == a else problem_b)["contract"]
        return bundle

    sites_a = {f"Hospital {i + 1} (A)": (HOLDERS[i], hospitals[i]) for i in range(3)}
    sites_b = {f"Hospital {i + 2} (B)": (HOLDERS[i + 1], hospitals[i + 1]) for i in range(2)}
    bundles_a = {site: join(a, holder, site) for site, (holder, _) in sites_a.items()}
    bundles_b = {site: join(b, holder, site) for site, (holder, _) in sites_b.items()}
    lap("5 join requests approved, bundles issued")

    # ---- the hospitals run the website's docker line ---------------------------------------------
    clients = [
        platform.start_client(a, bundles_a[site], data, f"{platform.prefix}-a-client-{i}", lines[(a, site)])
        for i, (site, (_, data)) in enumerate(sites_a.items())
    ] + [
        platform.start_client(b, bundles_b[site], data, f"{platform.prefix}-b-client-{i}", lines[(b, site)])
        for i, (site, (_, data)) in enumerate(sites_b.items())
    ]
    lap("5 client containers started")

    progress: dict[int, tuple[str, int]] = {}

    def both_finished() -> bool:
        done = True
        for problem_id, rounds in ((a, 5), (b, 3)):
            dash = platform.api("GET", f"/api/v1/problems/{problem_id}/dashboard/", setter)
            run = dash["run"]
            state = (run["status"], run["current_round"])
            if progress.get(problem_id) != state:
                progress[problem_id] = state
                accs = [r["eval_acc"] for r in dash["rounds"]]
                print(
                    f"[e2e-docker] {time.monotonic() - t0:6.1f} s  problem {problem_id}: {run['status']}, "
                    f"round {run['current_round']}/{run['total_rounds']}, clients {dash['clients_connected']}, "
                    f"eval_acc {accs}",
                    flush=True,
                )
            if run["status"] in ("failed", "stopped"):
                raise AssertionError(f"problem {problem_id}'s run {run['status']}: {run['status_detail']}")
            # The last round's checkpoint may be uploaded after the final model: wait for both.
            last = (dash["rounds"] or [{}])[-1].get("downloads") or {}
            finished = run["status"] == "finished" and len(dash["rounds"]) == rounds
            if not (finished and dash["final_model"]["pt"] and last.get("npz")):
                done = False
        for client in clients:
            code = client.code()
            if code not in (None, 0):
                raise AssertionError(f"client {client.name} exited with code {code}:\n{_tail(client.log)}")
        return done

    platform.wait("A (5 rounds) and B (3 rounds) to finish", both_finished, 600, interval=2.0)
    lap("both runs finished")

    # ---- A: 5 rounds, accuracy, every hospital took part, the final model ------------------------
    dash_a = platform.api("GET", f"/api/v1/problems/{a}/dashboard/", setter)
    rounds_a = dash_a["rounds"]
    assert [r["round"] for r in rounds_a] == [1, 2, 3, 4, 5]
    assert dash_a["run"]["total_rounds"] == 5 and dash_a["run"]["current_round"] == 5
    assert all(r["eval_acc"] is not None for r in rounds_a), rounds_a
    # The tabular app's ClientApp reports `eval_acc` (aggregated weighted by examples).
    assert all(r["metrics"]["evaluate"].get("eval_acc") == r["eval_acc"] for r in rounds_a), rounds_a
    assert rounds_a[-1]["eval_acc"] >= 0.90, [r["eval_acc"] for r in rounds_a]
    contributed_a = {p["site"]: p["rounds"] for p in dash_a["participants"]}
    assert contributed_a == dict.fromkeys(sites_a, 5), contributed_a

    # ---- B trained on its own: its rounds, its hospitals only ------------------------------------
    dash_b = platform.api("GET", f"/api/v1/problems/{b}/dashboard/", setter)
    rounds_b = dash_b["rounds"]
    assert [r["round"] for r in rounds_b] == [1, 2, 3] and dash_b["run"]["total_rounds"] == 3
    assert all(r["eval_acc"] is not None for r in rounds_b), rounds_b
    contributed_b = {p["site"]: p["rounds"] for p in dash_b["participants"]}
    assert contributed_b == dict.fromkeys(sites_b, 3), contributed_b

    # Every hospital's client ended on its own with "run finished".
    for client in clients:
        platform.wait(f"client {client.name} to exit", lambda c=client: c.code() is not None, 120)
        assert client.code() == 0, f"client {client.name} exited with {client.code()}:\n{_tail(client.log)}"
    lap("rounds, accuracy and clients checked")

    # ---- the final model downloads (a logged-in page, as the dashboard links it) -----------------
    import numpy as np
    import torch

    session = platform.browser_session(SETTER)
    final = dash_a["final_model"]
    assert final["pt"] and final["npz"], final
    pt = session.get(platform.url + final["pt"], timeout=60)
    npz = session.get(platform.url + final["npz"], timeout=60)
    assert pt.status_code == 200 and npz.status_code == 200, (pt.status_code, npz.status_code)
    assert "attachment" in pt.headers.get("Content-Disposition", "")
    state = torch.load(io.BytesIO(pt.content), weights_only=True)
    arrays = np.load(io.BytesIO(npz.content))
    assert state and all(isinstance(v, torch.Tensor) for v in state.values()), type(state)
    assert sum(v.numel() for v in state.values()) == sum(arrays[k].size for k in arrays.files)
    assert len(state) == len(arrays.files)
    # The round-5 model is the final model (the coordinator sends it out next).
    round5 = session.get(platform.url + rounds_a[-1]["downloads"]["npz"], timeout=60)
    assert round5.status_code == 200
    last = np.load(io.BytesIO(round5.content))
    assert all(np.array_equal(last[k], arrays[k]) for k in arrays.files)
    lap(f"final model downloaded ({len(pt.content)} B .pt, {len(npz.content)} B .npz)")

    # ---- finished problems: the API has nothing to stop; the reconciler removes what is left -----
    for problem_id in (a, b):
        answer = platform.api("POST", f"/api/v1/problems/{problem_id}/stop/", setter, expect=(409,))
        assert "no run" in answer["detail"], answer
        platform.wait(
            f"the reconciler to remove finished problem {problem_id}'s containers, network and volume",
            lambda p=problem_id: leftovers(platform.docker, platform.prefix, p) == [],
            90,
            interval=2.0,
            problems=(problem_id,),
        )
    lap("finished problems cleaned up by the reconciler")
    for problem_id in (a, b):
        dash = platform.api("GET", f"/api/v1/problems/{problem_id}/dashboard/", setter)
        shown = [(s["role"], s["index"], s["health"]) for s in dash["services"]]
        print(f"[e2e-docker] problem {problem_id}'s finished run: services the dashboard still shows: {shown}")

    # ---- stopping a running problem through the API leaves nothing ------------------------------
    run2 = platform.api("POST", f"/api/v1/problems/{a}/publish/", setter, expect=(201,))
    assert run2["number"] == 2
    platform.wait_run(setter, a, "running", 240)
    _check_services(platform, setter, a, selectors=2)
    lap("A's second run running")

    # ---- revocation in the web UI closes a connected client's stream within 10 s ----------------
    # Two of A's three hospitals come back with their first run's bundles (a bundle outlives a
    # run); the run waits for its third (min_clients 3), so both stay connected, idle.
    (site_1, (_, data_1)), (site_2, (_, data_2)) = list(sites_a.items())[:2]
    revoked = platform.start_client(a, bundles_a[site_1], data_1, f"{platform.prefix}-a2-client-0", lines[(a, site_1)])
    staying = platform.start_client(a, bundles_a[site_2], data_2, f"{platform.prefix}-a2-client-1", lines[(a, site_2)])
    platform.wait(
        "two clients connected to A's second run",
        lambda: platform.api("GET", f"/api/v1/problems/{a}/dashboard/", setter)["clients_connected"] == 2,
        120,
        problems=(a,),
    )
    revoked_at = _revoke_in_the_web_ui(platform, a, participant_ids[(a, site_1)])
    platform.wait(
        f"{revoked.name} to be disconnected after its revocation", lambda: revoked.code() is not None, 10, interval=0.2
    )
    took = time.monotonic() - revoked_at
    log = _tail(revoked.log)
    assert revoked.code() == 4, f"{revoked.name} exited with {revoked.code()}:\n{log}"
    assert "access withdrawn" in log, log
    assert staying.code() is None, f"{staying.name} was disconnected too:\n{_tail(staying.log)}"
    lap(f"revoked client disconnected {took:.1f} s after the revocation")
    # The same bundle cannot come back.
    again = platform.start_client(
        a, bundles_a[site_1], data_1, f"{platform.prefix}-a2-client-0-again", lines[(a, site_1)]
    )
    platform.wait(f"{again.name} to be refused", lambda: again.code() is not None, 60, interval=0.5)
    assert again.code() == 4, f"{again.name} exited with {again.code()}:\n{_tail(again.log)}"
    assert "does not accept the credential" in _tail(again.log), _tail(again.log)
    assert staying.code() is None, _tail(staying.log)
    lap("the revoked bundle is refused; the other hospital stays connected")

    platform.api("POST", f"/api/v1/problems/{a}/stop/", setter, expect=(202,))
    stopped = platform.wait_run(setter, a, "stopped", 120)
    assert stopped["number"] == 2
    assert leftovers(platform.docker, platform.prefix, a) == []
    dash_a = platform.api("GET", f"/api/v1/problems/{a}/dashboard/", setter)
    assert dash_a["services"] == [], dash_a["services"]
    # Nothing of either problem remains.
    assert leftovers(platform.docker, platform.prefix, b) == []
    # The hospital still connected hears that the run was stopped and is done: exit 0, saying so
    # (the coordinator is stopped first and tells it through its selector; `--follow` would wait).
    platform.wait(f"{staying.name} to exit", lambda: staying.code() is not None, 60, interval=1.0)
    assert staying.code() == 0, _tail(staying.log)
    assert "the run was stopped" in _tail(staying.log), _tail(staying.log)
    lap("A stopped through the API: no container, network or volume left")
    print(f"[e2e-docker] timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
