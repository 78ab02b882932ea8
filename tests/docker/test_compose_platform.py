"""The platform as docker-compose.yml runs it, and what a problem's containers can reach from there.

`docker-compose up` starts the real file (PostgreSQL, Redis, migrate, gunicorn, the
Celery worker and beat) from the images scripts/build-images.sh built, with a
throwaway .env. A problem setter (made with `manage.py shell` in the web
container) publishes a problem through the HTTP API; the worker, through the
host's Docker socket, starts its coordinator and selector on the problem's own
network. Then the isolation the security model promises is probed from inside
those containers: the platform's PostgreSQL and Redis, and the web and worker
containers, are out of reach by service name and by address, while the
website's published port (how coordinators report) stays reachable. The same
addresses, probed from the web container, answer: the probes can see a
service when it is reachable. Stopping the problem through the API removes its
containers. Then a data holder joins a second problem the way the website tells
them: the `docker run` line of the problem page, run as shown with only their data
folder and bundle paths filled in, with compose's defaults (no FEDOTA_SELECTOR_HOST)
connects and trains. The worker, stopped with compose, stays stopped; killed twice (its
process, then `docker kill`, which Docker's restart policy ignores), it comes back
healthy by itself and runs a task; the web container reports "healthy" from its
database-checking probe. `docker-compose down -v` removes the platform.

Run alone: `.venv/bin/pytest -q tests/docker/test_compose_platform.py -s` (about
three minutes). Needs docker-compose (scripts/docker-engine.sh installs it).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker.compose import PASSWORD, SETTER, Stack, compose_stack, health, wait
from tests.docker.conftest import leftovers
from tests.docker.probes import exec_python, ip_on, reach

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def stack(docker_client: Any, docker_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with compose_stack(docker_client, docker_prefix, tmp_path_factory.mktemp("compose")) as made:
        yield made


def test_problem_containers_cannot_reach_the_platforms_database_redis_or_services(
    stack: Stack, docker_client: Any, docker_prefix: str, tmp_path: Path
) -> None:
    from scripts.make_demo_data import make_breast_cancer

    contract = json.loads((make_breast_cancer(tmp_path / "demo", 1, seed=0) / "contract.json").read_text())
    token = stack.token(SETTER)
    problem = stack.api(
        "POST",
        "/api/v1/problems/",
        token,
        {
            "title": "Isolation probe",
            "description": "Probes the isolation of problem containers.",
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

    wait("the worker to start the problem's containers", running, 240, stack.logs, interval=2.0)
    network = f"{docker_prefix}-p{problem_id}"
    coordinator = docker_client.containers.get(f"{network}-coordinator")
    selector = docker_client.containers.get(f"{network}-selector-0")

    platform = stack.containers()
    platform_net = f"{stack.project}_default"
    addresses = {name: ip_on(platform[name], platform_net) for name in ("postgres", "redis", "web")}
    web_port = int(stack.url.rsplit(":", 1)[1])
    forbidden = [
        ("postgres", 5432),
        ("redis", 6379),
        (addresses["postgres"], 5432),
        (addresses["redis"], 6379),
        ("web", 8000),
        (addresses["web"], 8000),
        # Not published on the host either: through the host gateway there is nothing.
        ("host.docker.internal", 5432),
        ("host.docker.internal", 6379),
    ]
    # Control, from inside the platform: the same services answer there.
    inside = reach(platform["web"], [("postgres", 5432), ("redis", 6379), (addresses["postgres"], 5432)])
    assert [ok for ok, _ in inside] == [True, True, True], inside
    for container in (coordinator, selector):
        probed = reach(container, forbidden)
        reached = [f"{host}:{port} ({why})" for (host, port), (ok, why) in zip(forbidden, probed, strict=True) if ok]
        print(f"[compose] {container.name}: {probed}")
        assert not reached, f"{container.name} (problem {problem_id}) reached the platform's {reached}"
    # What a coordinator must reach: the website's published port, to report.
    ((reported, why),) = reach(coordinator, [("host.docker.internal", web_port)])
    assert reported, f"the coordinator cannot reach the website at host.docker.internal:{web_port}: {why}"
    # The problem network holds only the problem's own containers.
    attached = docker_client.networks.get(network).attrs["Containers"] or {}
    names = sorted(str(c["Name"]) for c in attached.values())
    assert names == [f"{network}-coordinator", f"{network}-selector-0"], names

    stack.api("POST", f"/api/v1/problems/{problem_id}/stop/", token, expect=202)
    wait(
        "the stopped problem's containers, network and volume to be removed",
        lambda: leftovers(docker_client, docker_prefix, problem_id) == [],
        120,
        stack.logs,
    )


def test_a_data_holder_joins_with_the_line_the_website_shows(
    stack: Stack, docker_client: Any, docker_prefix: str, tmp_path: Path
) -> None:
    """With compose's defaults (no FEDOTA_SELECTOR_HOST), the page's `docker run` line connects and trains."""
    from scripts.make_demo_data import make_breast_cancer
    from tests.docker.joining import filled_in, login, readable, shown_docker_run

    holder = "compose-hospital"
    stack.make_user(holder, "holder", "Hospital")
    demo = make_breast_cancer(tmp_path / "demo", 1, seed=0)
    readable(tmp_path)
    contract = json.loads((demo / "contract.json").read_text())
    setter = stack.token(SETTER)
    problem = stack.api(
        "POST",
        "/api/v1/problems/",
        setter,
        {
            "title": "Joined from the page",
            "description": "One hospital, two rounds.",
            "contract": contract,
            "app_template": "tabular",
            "run_config": {"rounds": 2, "num_selectors": 1, "min_clients": 1, "clients_per_round": 0},
            "join_policy": "open",
        },
        expect=201,
    )
    problem_id = int(problem["id"])
    stack.api("POST", f"/api/v1/problems/{problem_id}/publish/", setter, expect=201)

    def run_status() -> str:
        runs = stack.api("GET", f"/api/v1/problems/{problem_id}/runs/", setter)
        status = str(runs[0]["status"]) if runs else "none"
        assert status not in ("failed", "stopped"), f"the run is {status}: {runs[0]['status_detail']}"
        return status

    wait("the problem's run to be running", lambda: run_status() == "running", 240, stack.logs, interval=2.0)

    token = stack.token(holder)
    joined = stack.api(
        "POST", f"/api/v1/problems/{problem_id}/participants/", token, {"site_name": "Compose Hospital"}, expect=201
    )
    assert joined["status"] == "approved", joined
    bundle = stack.api("POST", f"/api/v1/participants/{joined['id']}/bundle/", token)
    # Not loopback: 127.0.0.1 inside the client container would be the container itself.
    assert not any(s.startswith(("127.", "localhost")) for s in bundle["selectors"]), bundle["selectors"]
    shown = shown_docker_run(login(stack.url, holder, PASSWORD), stack.url, problem_id)
    assert shown == bundle["docker_run"]

    name = f"{docker_prefix}-compose-client"
    line = filled_in(shown, problem_id, demo / "clients" / "hospital_0", bundle, tmp_path / "bundle")
    line[2:2] = ["--name", name, "--label", f"fedota.install={docker_prefix}"]
    try:
        done = subprocess.run(line, capture_output=True, text=True, timeout=420)
    finally:
        try:
            docker_client.containers.get(name).remove(force=True)
        except Exception:  # noqa: BLE001 - gone already (--rm): nothing to clean
            pass
    assert done.returncode == 0, f"{shlex.join(line)} exited with {done.returncode}:\n{done.stderr[-4000:]}"
    wait("the run to finish", lambda: run_status() == "finished", 120, stack.logs, interval=2.0)
    dash = stack.api("GET", f"/api/v1/problems/{problem_id}/dashboard/", setter)
    assert [r["round"] for r in dash["rounds"]] == [1, 2], dash["rounds"]
    assert {p["site"]: p["rounds"] for p in dash["participants"]} == {"Compose Hospital": 2}


# Run in the worker container: SIGKILL to the process docker-init started (celery), as a
# crash or the kernel's OOM killer would end it.
KILL_MAIN_PROCESS = (
    "import os, signal\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    if open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1] == '1':\n"
    "        os.kill(int(pid), signal.SIGKILL)\n"
)
# Its check runs every 30 s, the first 30 s after the start: healthy after 34 s on a quiet
# machine, 87 s with a load average of 10 on 2 cores (a ping timed out while it started).
WORKER_BACK_WITHIN = 180.0


def test_a_killed_worker_comes_back_healthy_and_runs_a_task(stack: Stack) -> None:
    import requests

    platform = stack.containers()
    web, worker = platform["web"], platform["worker"]
    assert health(web) == "healthy", stack.logs()
    probe = requests.get(stack.url + "/healthz", timeout=10)
    assert (probe.status_code, probe.text) == (200, "ok\n")

    # Stopped on purpose, it stays stopped: the watchdog leaves alone what compose stopped.
    stopped = stack.run("stop", "worker", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    time.sleep(5)  # longer than the watchdog's wait for a stop after a death
    worker.reload()
    assert worker.attrs["State"]["Status"] == "exited", worker.attrs["State"]
    assert stack.run("start", "worker", timeout=120).returncode == 0

    # A crash: the process dies, the engine's restart policy starts the container again.
    worker.reload()
    restarts = int(worker.attrs["RestartCount"])
    code, out = exec_python(worker, "-c", KILL_MAIN_PROCESS)
    assert code in (0, 137), out

    def restarted_by_docker() -> bool:
        worker.reload()
        return bool(worker.attrs["State"]["Running"]) and int(worker.attrs["RestartCount"]) > restarts

    wait("Docker to restart the crashed worker", restarted_by_docker, 60, stack.logs, interval=0.5)

    # `docker kill`: a manual stop for the engine, whatever the policy; the watchdog starts it.
    started = worker.attrs["State"]["StartedAt"]
    killed = time.monotonic()
    worker.kill()

    def running_again() -> bool:
        worker.reload()
        return bool(worker.attrs["State"]["Running"]) and worker.attrs["State"]["StartedAt"] != started

    wait("the killed worker to run again", running_again, 30, stack.logs, interval=0.5)
    back = time.monotonic() - killed
    wait("the worker to be healthy", lambda: health(worker) == "healthy", WORKER_BACK_WITHIN, stack.logs, 1.0)
    healthy = time.monotonic() - killed
    watchdog = platform["watchdog"].logs().decode(errors="replace")
    assert "started worker again" in watchdog, watchdog

    # It works: a task sent through the broker runs on it.
    code, task_id = exec_python(
        web,
        "manage.py",
        "shell",
        "-c",
        "from webserver.celery import app; print(app.send_task('problems.reconcile').id)",
    )
    assert code == 0, task_id
    task_id = task_id.splitlines()[-1]

    def task_ran() -> bool:
        return f"[{task_id}] succeeded" in worker.logs(tail=200).decode(errors="replace")

    wait("the restarted worker to run a task", task_ran, 60, stack.logs, interval=1.0)
    print(f"[compose] killed worker: running after {back:.1f} s, healthy after {healthy:.1f} s")
    assert health(web) == "healthy"
