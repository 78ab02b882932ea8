"""The whole platform as deploy/swarm/stack.yml runs it, on a single-node swarm (this engine).

`docker stack deploy` starts PostgreSQL, Redis, the website (which migrates), the Celery
worker (FEDOTA_SPAWNER=swarm, the engine's socket) and beat from the images
scripts/build-images.sh built, with Swarm secrets made for the run. Once every service
is healthy, a problem setter (made with `manage.py shell` in the web task's container)
publishes a problem on the built-in tabular app through the HTTP API; the worker inside
the stack starts its coordinator and selector as Swarm services, which become healthy,
and the coordinator reaches the website through the node's host-mode port. Stopped
through the API, the problem's services go. `docker stack rm` removes the platform but
not its volumes: a second deploy on them finds the setter, the problem and its FAB.
Then everything is removed.

The module makes the engine a swarm manager when it is in no swarm, and leaves the swarm
at its end only then (test_swarm_spawner's fixture). Run it alone with
`flock /tmp/fedota-swarm.lock .venv/bin/python -m pytest -q -s tests/docker/test_swarm_stack.py`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.docker import test_swarm_spawner
from tests.docker.compose import IMAGES, MAX_SELECTORS, PASSWORD, SETTER, Site, _free_on_loopback, wait
from tests.docker.conftest import leftovers, require_images, unavailable
from tests.docker.probes import exec_python, reach
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
STACK_FILE = REPO / "deploy" / "swarm" / "stack.yml"
SERVICES = ("postgres", "redis", "web", "worker", "beat")
VOLUMES = ("postgres-data", "redis-data", "fedota-var")
SECRETS = {
    "django_secret_key": "FEDOTA_DJANGO_SECRET_KEY_SECRET",
    "database_url": "FEDOTA_DATABASE_URL_SECRET",
    "postgres_password": "FEDOTA_POSTGRES_PASSWORD_SECRET",
}

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

# The engine as a Swarm manager, left again at the end only if this module made it one.
swarm = test_swarm_spawner.swarm


@dataclass
class SwarmStack(Site):
    """The platform deployed as the stack `name` by `docker stack deploy`, with the settings `environ`."""

    name: str
    docker: Any
    environ: dict[str, str] = field(repr=False)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=self.environ)

    def deploy(self) -> None:
        done = self.cli("stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), self.name)
        assert done.returncode == 0, f"docker stack deploy failed:\n{done.stdout}\n{done.stderr}"
        # Every option of the file is one Swarm applies: the CLI names those it would drop.
        assert "Ignoring" not in done.stdout + done.stderr, done.stdout + done.stderr

    def containers(self, service: str) -> list[Any]:
        """The running containers of the stack service's tasks (raw listing: no inspect races)."""
        label = f"com.docker.swarm.service.name={self.name}_{service}"
        return self.docker.api.containers(filters={"label": label, "status": "running"})

    def container(self, service: str) -> Any:
        (found,) = self.containers(service)
        return self.docker.containers.get(found["Id"])

    def healthy(self) -> bool:
        for service in SERVICES:
            running = self.containers(service)
            if len(running) != 1:
                return False
            state = self.docker.api.inspect_container(running[0]["Id"])["State"]
            if (state.get("Health") or {}).get("Status") != "healthy":
                return False
        return True

    def explain(self) -> str:
        tasks = self.cli("stack", "ps", "--no-trunc", "--format", "{{.Name}} {{.CurrentState}} {{.Error}}", self.name)
        out = [tasks.stdout[-4000:], tasks.stderr[-500:]]
        for service in ("web", "worker"):
            logs = self.cli("service", "logs", "--tail", "20", "--no-task-ids", f"{self.name}_{service}", timeout=60)
            out.append(f"--- {service}\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        return "\n".join(out)

    def make_setter(self) -> None:
        """The verified problem setter SETTER with PASSWORD, made in the web task's container."""
        code, out = exec_python(
            self.container("web"),
            "manage.py",
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model\n"
            "from webserver.accounts.models import Profile\n"
            f"u = get_user_model().objects.create_user(username={SETTER!r}, email='{SETTER}@example.org', "
            f"password={PASSWORD!r})\n"
            "Profile.objects.create(user=u, role='setter', organisation='Oncology Lab', email_verified=True)\n",
        )
        assert code == 0, out

    def remove(self) -> None:
        """`docker stack rm`, and until its services, task containers and network are gone."""
        done = self.cli("stack", "rm", self.name)
        assert done.returncode == 0, done.stderr
        namespace = {"label": f"com.docker.stack.namespace={self.name}"}

        def gone() -> bool:
            return not (
                self.docker.services.list(filters=namespace)
                or self.docker.api.containers(all=True, filters=namespace)
                or self.docker.networks.list(filters=namespace)
            )

        wait("the stack's services, containers and network to go", gone, 120, self.explain)


def _remove(collection: Any, name: str) -> None:
    """Remove the volume or secret `name` of docker-py's `collection` (NotFound: gone already)."""
    collection.get(name).remove()


def _port_base() -> int:
    # The first problem (id 1 in a new database) publishes its selectors at base + 8.
    for _ in range(50):
        base = random.randrange(13000, 20000, MAX_SELECTORS)
        if _free_on_loopback(range(base + MAX_SELECTORS, base + 2 * MAX_SELECTORS)):
            return base
    pytest.fail("no free block of selector ports")


@contextlib.contextmanager
def swarm_stack(client: Any, prefix: str) -> Iterator[SwarmStack]:
    """The stack's settings and secrets, made for this run; everything of it removed afterwards."""
    from webserver.spawner.swarm import SwarmSpawner

    require_images(client, (*IMAGES, "fedota/coordinator:latest", "fedota/selector:latest"))
    name = f"{prefix}stack"
    port = free_port()
    password = secrets.token_urlsafe(24)
    values = {
        "django_secret_key": secrets.token_urlsafe(50),
        "postgres_password": password,
        "database_url": f"postgres://fedota:{password}@postgres:5432/fedota",
    }
    environ = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    environ.update(
        {
            "FEDOTA_PLATFORM_NODE": client.info()["Name"],
            "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "FEDOTA_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "FEDOTA_WEB_PORT": str(port),
            # Loopback: this machine only, at the Docker host gateway.
            "FEDOTA_SELECTOR_HOST": "127.0.0.1",
            "FEDOTA_SELECTOR_PORT_BASE": str(_port_base()),
            # Everything the worker starts carries this session's label: the conftest's
            # and the swarm fixture's final checks find whatever is left behind.
            "FEDOTA_DOCKER_PREFIX": prefix,
            "FEDOTA_DOCKER_COORDINATOR_MEMORY": "1g",
            "FEDOTA_DOCKER_SELECTOR_MEMORY": "512m",
            "WEB_CONCURRENCY": "2",
            **{variable: f"{name}_{secret}" for secret, variable in SECRETS.items()},
        }
    )
    made = SwarmStack(f"http://127.0.0.1:{port}", name, client, environ)
    try:
        for secret in SECRETS:
            client.secrets.create(
                name=f"{name}_{secret}", data=values[secret].encode(), labels={"fedota.install": prefix}
            )
        yield made
    finally:
        # Whatever a failed test left: the problems the worker started, the stack, its
        # volumes (once no container holds them) and the secrets; each step tried.
        spawner = SwarmSpawner(client=client, prefix=prefix)

        def stop_problems() -> None:
            for problem_id in spawner.problems():
                spawner.stop(problem_id)

        def remove_stack() -> None:
            if client.services.list(filters={"label": f"com.docker.stack.namespace={name}"}):
                made.remove()

        steps: list[tuple[str, Callable[[], object]]] = [("stop problems", stop_problems), ("stack rm", remove_stack)]
        steps += [(v, functools.partial(_remove, client.volumes, f"{name}_{v}")) for v in VOLUMES]
        steps += [(s, functools.partial(_remove, client.secrets, f"{name}_{s}")) for s in SECRETS]
        failed = []
        for what, step in steps:
            try:
                SwarmSpawner._retry(step, what)  # again while in use; gone already is fine
            except Exception as exc:
                failed.append(f"{what}: {exc}")
        if failed and sys.exc_info()[0] is None:  # never hide the test's own failure
            raise AssertionError("cleaning up the stack failed:\n" + "\n".join(failed))
        for line in failed:
            print(f"[stack] cleanup: {line}")


def test_the_stack_runs_the_platform_which_runs_problems_on_the_swarm(
    swarm: Any, docker_prefix: str, tmp_path: Path
) -> None:
    from scripts.make_demo_data import make_breast_cancer

    began = time.monotonic()

    def lap(what: str) -> None:
        print(f"[stack] {time.monotonic() - began:6.1f} s  {what}")

    contract = json.loads((make_breast_cancer(tmp_path / "demo", 1, seed=0) / "contract.json").read_text())
    with swarm_stack(swarm, docker_prefix) as stack:
        stack.deploy()
        lap("deployed")
        wait("every service of the stack to be healthy", stack.healthy, 360, stack.explain, interval=3.0)
        lap("every service healthy")
        # Each service on the platform node (the worker: a manager), with DNS round-robin
        # endpoints; the web's port in host mode; nothing secret in any spec.
        node = f"node.hostname == {stack.environ['FEDOTA_PLATFORM_NODE']}"
        for service in SERVICES:
            spec = swarm.services.get(f"{stack.name}_{service}").attrs["Spec"]
            constraints = spec["TaskTemplate"]["Placement"]["Constraints"]
            assert node in constraints and ("node.role == manager" in constraints) == (service == "worker"), spec
            assert spec["EndpointSpec"]["Mode"] == "dnsrr"
            ports = [(p["PublishMode"], p["PublishedPort"]) for p in spec["EndpointSpec"].get("Ports") or []]
            assert ports == ([("host", int(stack.environ["FEDOTA_WEB_PORT"]))] if service == "web" else []), ports
            env = "\n".join(spec["TaskTemplate"]["ContainerSpec"].get("Env") or [])
            assert "postgres://" not in env and "DJANGO_SECRET_KEY=" not in env and "PASSWORD=" not in env, env
        for service in ("web", "worker"):
            env = "\n".join(
                swarm.services.get(f"{stack.name}_{service}").attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
            )
            assert "DATABASE_URL_FILE=/run/secrets/database_url" in env, env
            assert "DJANGO_SECRET_KEY_FILE=/run/secrets/django_secret_key" in env, env
        # The files are the images' user's alone.
        code, out = exec_python(
            stack.container("web"),
            "-c",
            "import os; s = os.stat('/run/secrets/database_url'); print(os.getuid(), s.st_uid, oct(s.st_mode & 0o777))",
        )
        assert code == 0 and out.split() == ["10001", "10001", "0o400"], out

        stack.make_setter()
        token = stack.token(SETTER)
        problem = stack.api(
            "POST",
            "/api/v1/problems/",
            token,
            {
                "title": "Swarm stack",
                "description": "Published to the platform running as a Swarm stack.",
                "contract": contract,
                "app_template": "tabular",
                "run_config": {"rounds": 3, "num_selectors": 1, "min_clients": 2, "clients_per_round": 0},
                "join_policy": "approval",
            },
            expect=201,
        )
        problem_id = int(problem["id"])
        stack.api("POST", f"/api/v1/problems/{problem_id}/publish/", token, expect=201)

        def running() -> bool:
            runs = stack.api("GET", f"/api/v1/problems/{problem_id}/runs/", token)
            status = runs[0]["status"] if runs else "none"
            assert status not in ("failed", "stopped", "finished"), f"the run is {status}: {runs[0]['status_detail']}"
            return status == "running"

        wait("the worker to start the problem on the swarm", running, 240, stack.explain, interval=2.0)
        lap("the problem's run is running")

        # Swarm services of this installation and problem, each with a running, healthy task.
        labels = {"label": [f"fedota.install={docker_prefix}", f"fedota.problem={problem_id}"]}
        services = {s.name: s for s in swarm.services.list(filters=labels)}
        base = f"{docker_prefix}-p{problem_id}"
        assert sorted(services) == [f"{base}-coordinator", f"{base}-selector-0"], sorted(services)
        for service in services.values():
            (task,) = [t for t in service.tasks() if t["DesiredState"] == "running"]
            assert task["Status"]["State"] == "running", task["Status"]
            container = task["Status"]["ContainerStatus"]["ContainerID"]
            health = swarm.api.inspect_container(container)["State"]["Health"]["Status"]
            assert health == "healthy", (service.name, health)
        # A coordinator reports to the website through the platform node's host-mode port.
        coordinator = swarm.containers.get(
            services[f"{base}-coordinator"].tasks(filters={"desired-state": "running"})[0]["Status"]["ContainerStatus"][
                "ContainerID"
            ]
        )
        port = int(stack.url.rsplit(":", 1)[1])
        ((reported, why),) = reach(coordinator, [("host.docker.internal", port)])
        assert reported, f"the coordinator cannot reach the website at host.docker.internal:{port}: {why}"

        stack.api("POST", f"/api/v1/problems/{problem_id}/stop/", token, expect=202)

        def problem_gone() -> bool:
            left = test_swarm_spawner._swarm_leftovers(swarm, docker_prefix, problem_id)
            return not left and not leftovers(swarm, docker_prefix, problem_id)

        wait("the stopped problem's services, secrets, network and volume to go", problem_gone, 120, stack.explain)
        lap("the stopped problem is gone")

        # The stack goes; its volumes stay, and a new deploy on them has the same data.
        stack.remove()
        lap("stack removed")
        kept = {v.name for v in swarm.volumes.list(filters={"label": f"com.docker.stack.namespace={stack.name}"})}
        assert kept == {f"{stack.name}_{v}" for v in VOLUMES}, kept
        stack.deploy()
        wait("every service of the stack to be healthy again", stack.healthy, 360, stack.explain, interval=3.0)
        lap("deployed again and healthy")
        token = stack.token(SETTER)
        again = stack.api("GET", f"/api/v1/problems/{problem_id}/", token)
        assert again["title"] == "Swarm stack", again
        code, out = exec_python(
            stack.container("web"),
            "manage.py",
            "shell",
            "-c",
            f"from webserver.problems.models import Problem; print(Problem.objects.get(pk={problem_id}).fab.size)",
        )
        assert code == 0 and int(out.splitlines()[-1]) > 0, out
        stack.remove()
        lap("stack removed again")
    lap("volumes and secrets removed")


REQUIRED = ("FEDOTA_PLATFORM_NODE", "DOCKER_GID", "FEDOTA_PUBLIC_URL", "DJANGO_ALLOWED_HOSTS", "FEDOTA_SELECTOR_HOST")


def test_a_missing_setting_stops_the_deploy_naming_it(tmp_path: Path) -> None:
    """`docker stack config` (what deploy reads first, no swarm needed) names each required setting left out,
    and takes the values given as they are (a hyphen in a `${A:?message}` once made the message's end A's value)."""
    import shutil

    if (
        not shutil.which("docker")
        or subprocess.run(["docker", "stack", "config", "--help"], capture_output=True).returncode
    ):
        unavailable("no docker CLI with `docker stack config` here")
    given = {name: f"value-of-{name.lower()}" for name in REQUIRED} | {"DOCKER_GID": "990"}
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}

    def config(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        command = ["docker", "stack", "config", "-c", str(STACK_FILE)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env={**base, **environ})

    whole = config(given)
    assert whole.returncode == 0, whole.stderr
    for name, value in given.items():
        assert value in whole.stdout, f"{name}={value} is not in the stack as given:\n{whole.stdout}"
    assert "user: 10001:990" in whole.stdout
    for name in REQUIRED:
        missing = config({k: v for k, v in given.items() if k != name})
        assert missing.returncode != 0, f"the stack deploys without {name}"
        assert f"required variable {name} is missing a value: set {name} to " in missing.stderr, missing.stderr
