"""The docker spawner against a real engine: what it starts, how it is locked down, and
that stop and the reconciler leave nothing behind."""

from __future__ import annotations

import hashlib
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedota_common.fab import load_app
from tests.docker.conftest import leftovers
from tests.docker.probes import exec_python, reach
from webserver.spawner.base import RunSpec, SpawnError
from webserver.spawner.docker import DockerSpawner, container_url

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def fab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    app = load_app(REPO / "apps" / "tabular")
    path = tmp_path_factory.mktemp("fab") / "tabular.fab"
    path.write_bytes(app.content)
    return path, app.sha256


@pytest.fixture
def spawner(docker_client: Any, docker_prefix: str) -> Iterator[DockerSpawner]:
    made = DockerSpawner(client=docker_client, prefix=docker_prefix, coordinator_memory="2g", selector_memory="1g")
    yield made
    for problem_id in made.problems():
        made.stop(problem_id)


def _ports(count: int) -> tuple[int, ...]:
    # Below the kernel's ephemeral ports (32768 up): a restarted selector publishes its port
    # again, which an outgoing connection's local end could have taken meanwhile.
    first = random.randrange(13000, 20000, 8)
    return tuple(range(first, first + count))


def _spec(
    fab: tuple[Path, str], problem_id: int, *, selectors: int = 2, ports: tuple[int, ...] | None = None
) -> RunSpec:
    return RunSpec(
        problem_id=problem_id,
        run_id=problem_id * 10,
        run_number=1,
        fab_path=fab[0],
        fab_sha256=fab[1],
        run_config={"num-server-rounds": 1},
        num_selectors=selectors,
        round_timeout=30.0,
        min_clients=1,
        report_url="http://127.0.0.1:9/internal/v1/runs/1/",
        service_token="service-token",
        selector_token="selector-token",
        selector_ports=_ports(selectors) if ports is None else ports,
    )


def test_start_runs_the_problem_locked_down_on_its_own_network(
    spawner: DockerSpawner, docker_client: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    spec = _spec(fab, 101)
    states = spawner.start(spec)

    assert [(s.role, s.index, s.health) for s in states] == [
        ("coordinator", 0, "healthy"),
        ("selector", 0, "healthy"),
        ("selector", 1, "healthy"),
    ]
    assert [s.address for s in states[1:]] == [f"127.0.0.1:{port}" for port in spec.selector_ports]
    network = f"{docker_prefix}-p101"
    for state in states:
        container = docker_client.containers.get(state.handle)
        labels = container.labels
        assert labels["fedota.problem"] == "101" and labels["fedota.role"] == state.role
        assert labels["fedota.install"] == docker_prefix
        host = container.attrs["HostConfig"]
        assert list(container.attrs["NetworkSettings"]["Networks"]) == [network]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Privileged"] is False
        assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["PidsLimit"] > 0
        assert host["CpuShares"] == 256  # below the website's 1024: pages first when both want the CPU
        # The engine restarts a crashed selector; a coordinator's exit is the reconciler's to judge.
        assert host["RestartPolicy"]["Name"] == ("on-failure" if state.role == "selector" else "no")
        mounts = container.attrs["Mounts"]
        assert not any("docker.sock" in (m.get("Source") or "") for m in mounts)
        code, uid = exec_python(container, "-c", "import os; print(os.getuid())")
        assert code == 0 and uid.strip() == "10001"
        # The root filesystem refuses writes; /tmp is a tmpfs.
        code, out = exec_python(container, "-c", "open('/app/x', 'w')")
        assert code != 0 and "Read-only file system" in out
        if state.role == "coordinator":
            published = {k: v for k, v in container.attrs["NetworkSettings"]["Ports"].items() if v}
            assert not published, "the coordinator must not be published on the host"
            assert [m["Destination"] for m in mounts] == ["/state"]
            assert [m["Name"] for m in mounts] == [f"{docker_prefix}-p101-state"]
        else:
            bound = container.attrs["NetworkSettings"]["Ports"]["9092/tcp"]
            assert [(b["HostIp"], int(b["HostPort"])) for b in bound] == [("127.0.0.1", int(state.address[10:]))]

    assert spawner.problems() == {101}
    assert [s.health for s in spawner.status(101)] == ["healthy"] * 3

    spawner.stop(101)
    assert leftovers(docker_client, docker_prefix, 101) == []
    assert spawner.status(101) == [] and spawner.problems() == set()
    spawner.stop(101)  # idempotent


def test_problems_cannot_reach_each_others_coordinator(
    spawner: DockerSpawner, docker_client: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    spawner.start(_spec(fab, 201, selectors=1))
    spawner.start(_spec(fab, 202, selectors=1))
    selector_a = docker_client.containers.get(f"{docker_prefix}-p201-selector-0")
    coordinator_a = docker_client.containers.get(f"{docker_prefix}-p201-coordinator")
    coordinator_b = docker_client.containers.get(f"{docker_prefix}-p202-coordinator")
    ip_b = coordinator_b.attrs["NetworkSettings"]["Networks"][f"{docker_prefix}-p202"]["IPAddress"]
    ip_a = coordinator_a.attrs["NetworkSettings"]["Networks"][f"{docker_prefix}-p201"]["IPAddress"]

    # Control: within a problem the selector reaches its coordinator by name. Across problems
    # the name does not resolve, and the address is not routed.
    probed = reach(selector_a, [(coordinator_a.name, 9091), (coordinator_b.name, 9091), (ip_b, 9091)])
    assert probed[0][0], probed
    assert not probed[1][0] and "gaierror" in probed[1][1], probed
    assert not probed[2][0], f"problem 201's selector reached problem 202's coordinator at {ip_b}"
    # And the other way round.
    selector_b = docker_client.containers.get(f"{docker_prefix}-p202-selector-0")
    ((ok, _),) = reach(selector_b, [(ip_a, 9091)])
    assert not ok, f"problem 202's selector reached problem 201's coordinator at {ip_a}"

    spawner.stop(201)
    # Stopping one problem leaves the other running.
    assert [s.health for s in spawner.status(202)] == ["healthy", "healthy"]
    spawner.stop(202)
    assert leftovers(docker_client, docker_prefix, 201) == leftovers(docker_client, docker_prefix, 202) == []


def test_metrics_are_served_on_the_problems_network_only(
    docker_client: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    """With metrics on, each service serves Prometheus text on its address on the problem's
    network: the host's Prometheus scrapes it there; it is not published, and another problem's
    containers do not reach it."""
    import urllib.request

    served = DockerSpawner(
        client=docker_client, prefix=docker_prefix, coordinator_memory="2g", selector_memory="1g", metrics=True
    )
    quiet = DockerSpawner(client=docker_client, prefix=docker_prefix, coordinator_memory="2g", selector_memory="1g")
    try:
        states = served.start(_spec(fab, 261, selectors=1))
        other = quiet.start(_spec(fab, 262, selectors=1))
        assert [s.metrics for s in other] == ["", ""]
        network = f"{docker_prefix}-p261"
        for state in states:
            container = docker_client.containers.get(state.handle)
            ip = container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
            assert state.metrics == f"{ip}:9094", state
            with urllib.request.urlopen(f"http://{state.metrics}/metrics", timeout=10) as resp:
                assert f"fedota_{state.role}_".encode() in resp.read()
            assert not container.attrs["NetworkSettings"]["Ports"].get("9094/tcp"), "metrics must not be published"
        stranger = docker_client.containers.get(f"{docker_prefix}-p262-selector-0")
        probed = reach(stranger, [(s.metrics.split(":")[0], 9094) for s in states])
        assert not any(ok for ok, _ in probed), f"problem 262 reached problem 261's metrics: {probed}"
    finally:
        served.stop(261)
        quiet.stop(262)
    assert leftovers(docker_client, docker_prefix, 261) == leftovers(docker_client, docker_prefix, 262) == []


def test_services_on_the_hosts_loopback_are_out_of_reach(
    spawner: DockerSpawner, docker_client: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    """The platform's database and broker listen on loopback: no problem container reaches them."""
    import socket

    from webserver.spawner.addresses import host_gateway

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        spawner.start(_spec(fab, 251, selectors=1))
        for name in ("coordinator", "selector-0"):
            container = docker_client.containers.get(f"{docker_prefix}-p251-{name}")
            hosts = ("host.docker.internal", "127.0.0.1", host_gateway() or "172.17.0.1")
            probed = reach(container, [(host, port) for host in hosts])
            reached = [host for host, (ok, _) in zip(hosts, probed, strict=True) if ok]
            assert not reached, f"{name} reached the host's loopback service through {reached} port {port}"
    spawner.stop(251)


def test_a_taken_port_fails_the_start_naming_it_and_leaves_no_container(
    spawner: DockerSpawner, docker_client: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    ports = _ports(1)
    spawner.start(_spec(fab, 301, selectors=1, ports=ports))
    with pytest.raises(SpawnError, match=f"port {ports[0]}"):
        spawner.start(_spec(fab, 302, selectors=1, ports=ports))
    assert not docker_client.containers.list(all=True, filters={"label": ["fedota.problem=302"]})
    assert [s.health for s in spawner.status(301)] == ["healthy", "healthy"]
    spawner.stop(301)
    spawner.stop(302)


def test_a_missing_image_is_named(docker_client: Any, docker_prefix: str, fab: tuple[Path, str]) -> None:
    spawner = DockerSpawner(client=docker_client, prefix=docker_prefix, coordinator_image="fedota/missing:nope")
    with pytest.raises(SpawnError, match=r"fedota/missing:nope is not on this Docker engine.*build-images"):
        spawner.start(_spec(fab, 401))
    assert leftovers(docker_client, docker_prefix, 401) == []


def test_a_crashing_coordinator_fails_the_start_with_its_log(
    spawner: DockerSpawner, docker_client: Any, docker_prefix: str, fab: tuple[Path, str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.fab"
    broken.write_bytes(b"not a zip")
    spec = _spec(fab, 501, selectors=1)
    spec = RunSpec(**{**spec.__dict__, "fab_path": broken})
    with pytest.raises(SpawnError, match="coordinator exited with code"):
        spawner.start(spec)
    assert not docker_client.containers.list(all=True, filters={"label": [f"fedota.install={docker_prefix}"]})
    spawner.stop(501)


def test_status_reports_a_killed_container_as_exited(
    spawner: DockerSpawner, docker_client: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    spawner.start(_spec(fab, 601, selectors=1))
    subprocess.run(["docker", "kill", f"{docker_prefix}-p601-selector-0"], check=True, capture_output=True)
    states = {s.role: s for s in spawner.status(601)}
    assert states["selector"].health == "exited" and states["selector"].exit_code == 137
    assert "killed" in states["selector"].detail
    assert states["coordinator"].health == "healthy"
    spawner.stop(601)


def test_container_url_points_loopback_at_the_host_gateway() -> None:
    assert container_url("http://127.0.0.1:8000/internal/v1/runs/3/") == (
        "http://host.docker.internal:8000/internal/v1/runs/3/"
    )
    assert container_url("http://localhost/x") == "http://host.docker.internal/x"
    assert container_url("https://fl.example.org/internal/") == "https://fl.example.org/internal/"


# ---- through the run lifecycle (database + real engine) -----------------------------------------


@pytest.fixture
def platform(
    settings: Any, db: Any, spawner: DockerSpawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile

    from scripts.make_demo_data import breast_cancer_contract
    from webserver.accounts.models import Profile
    from webserver.problems import lifecycle, tasks
    from webserver.problems.models import Problem, ProblemState

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FEDOTA_SELECTOR_PORT_BASE = random.randrange(22000, 29000, 8)
    monkeypatch.setattr(lifecycle, "get_spawner", lambda: spawner)
    enqueued: list[tuple[str, tuple[Any, ...]]] = []
    for task in (tasks.publish, tasks.stop):
        monkeypatch.setattr(task, "delay", lambda *args, _n=task.name: enqueued.append((_n, args)))
        monkeypatch.setattr(task, "delay_on_commit", lambda *args, _n=task.name: enqueued.append((_n, args)))
    owner = get_user_model().objects.create_user(username="owner", password="x" * 20)
    Profile.objects.create(user=owner, role="setter", email_verified=True)
    content = load_app(REPO / "apps" / "tabular").content
    problem = Problem(
        owner=owner,
        title="Breast cancer",
        contract=breast_cancer_contract([f"f{i}" for i in range(30)]),
        app_template="tabular",
        fab_sha256=hashlib.sha256(content).hexdigest(),
        fab_name="tabular.fab",
        run_config={"rounds": 3, "num_selectors": 1},
        state=ProblemState.PUBLISHED,
    )
    problem.fab.save("tabular.fab", ContentFile(content), save=False)
    problem.save()
    return {"owner": owner, "problem": problem, "enqueued": enqueued}


def _started_at(client: Any, name: str) -> tuple[str, str]:
    container = client.containers.get(name)
    return container.id, container.attrs["State"]["StartedAt"]


def _wait_healthy(spawner: DockerSpawner, problem_id: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = spawner.status(problem_id)
        if all(s.health == "healthy" for s in states):
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


def test_reconcile_restarts_only_what_was_killed_and_removes_orphans(
    platform: dict[str, Any], spawner: DockerSpawner, docker_client: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    from webserver.problems import lifecycle
    from webserver.problems.models import RunStatus

    problem, owner = platform["problem"], platform["owner"]
    problem.run_config = {"rounds": 3, "num_selectors": 2}
    problem.save(update_fields=["run_config"])
    name = f"{docker_prefix}-p{problem.pk}"
    run = lifecycle.run_start(problem=problem, user=owner)
    lifecycle.run_launch(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.backend) == (RunStatus.RUNNING, "docker"), run.status_detail
    platform["enqueued"].clear()  # the start's own publish
    services = [f"{name}-coordinator", f"{name}-selector-0", f"{name}-selector-1"]
    before = {n: _started_at(docker_client, n) for n in services}
    port = docker_client.containers.get(f"{name}-selector-1").ports["9092/tcp"][0]["HostPort"]

    # Killed from outside: the engine's restart policy does not apply, the reconciler does.
    subprocess.run(["docker", "kill", f"{name}-selector-1"], check=True, capture_output=True)
    # Meanwhile something runs for a problem that does not exist: an orphan.
    spawner.start(_spec(fab, 99_999, selectors=1))

    report = lifecycle.infrastructure_reconcile(spawner=spawner)
    assert report.restarted == [run.pk] and report.relaunched == [] and report.orphans_removed == [99_999]
    assert leftovers(docker_client, docker_prefix, 99_999) == []
    assert platform["enqueued"] == []  # the run was not launched again
    _wait_healthy(spawner, problem.pk)
    after = {n: _started_at(docker_client, n) for n in services}
    # Only selector 1 started again: the same container (its port, network, certificate), a new start.
    assert after[f"{name}-coordinator"] == before[f"{name}-coordinator"]
    assert after[f"{name}-selector-0"] == before[f"{name}-selector-0"]
    assert after[f"{name}-selector-1"][0] == before[f"{name}-selector-1"][0]
    assert after[f"{name}-selector-1"][1] != before[f"{name}-selector-1"][1]
    assert docker_client.containers.get(f"{name}-selector-1").ports["9092/tcp"][0]["HostPort"] == port
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and [r["service"] for r in run.restarts] == ["selector 1"]

    # The coordinator, likewise, alone and in place (its state volume holds its checkpoints).
    subprocess.run(["docker", "kill", f"{name}-coordinator"], check=True, capture_output=True)
    assert lifecycle.infrastructure_reconcile(spawner=spawner).restarted == [run.pk]
    _wait_healthy(spawner, problem.pk)
    again = {n: _started_at(docker_client, n) for n in services}
    assert again[f"{name}-coordinator"][0] == before[f"{name}-coordinator"][0]
    assert again[f"{name}-coordinator"][1] != before[f"{name}-coordinator"][1]
    assert again[f"{name}-selector-0"] == before[f"{name}-selector-0"]
    assert again[f"{name}-selector-1"] == after[f"{name}-selector-1"]

    # A selector that is gone altogether cannot be restarted as it was: the run is launched whole.
    docker_client.containers.get(f"{name}-selector-0").remove(force=True)
    report = lifecycle.infrastructure_reconcile(spawner=spawner)
    assert report.relaunched == [run.pk]
    run.refresh_from_db()
    assert run.status == RunStatus.STARTING and run.status_detail == "launched again: selector 0 is gone"
    assert platform["enqueued"] == [("problems.publish", (run.pk,))]
    lifecycle.run_launch(run_id=run.pk)  # what the enqueued publish task does
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING
    assert docker_client.containers.get(f"{name}-coordinator").id != before[f"{name}-coordinator"][0]

    lifecycle.run_stop(problem=problem, user=owner)
    lifecycle.run_teardown(problem_id=problem.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.STOPPED
    assert leftovers(docker_client, docker_prefix, problem.pk) == []


# Kills every process of the container but its init: the service dies on its own, as in a crash
# (not `docker kill`, which the engine treats as a deliberate stop).
CRASH = (
    "import os\n"
    "for p in os.listdir('/proc'):\n"
    "    if p.isdigit() and int(p) not in (1, os.getpid()):\n"
    "        try: os.kill(int(p), 9)\n"
    "        except OSError: pass\n"
)


def test_the_engine_restarts_a_crashed_selector_but_never_a_coordinator(
    spawner: DockerSpawner, docker_client: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    """A coordinator exits non-zero when its run failed too; restarting it would run the ServerApp again."""
    spawner.start(_spec(fab, 701, selectors=1))
    selector = docker_client.containers.get(f"{docker_prefix}-p701-selector-0")
    coordinator = docker_client.containers.get(f"{docker_prefix}-p701-coordinator")
    for container in (selector, coordinator):
        container.exec_run(["python", "-c", CRASH])

    deadline = time.monotonic() + 30
    while True:
        selector.reload()
        coordinator.reload()
        if selector.attrs["RestartCount"] >= 1 and selector.status == "running":
            break
        assert time.monotonic() < deadline, (selector.status, selector.attrs["RestartCount"])
        time.sleep(0.5)
    time.sleep(2)
    coordinator.reload()
    assert coordinator.status == "exited" and coordinator.attrs["RestartCount"] == 0
    states = {s.role: s for s in spawner.status(701)}
    assert states["coordinator"].health == "exited" and states["coordinator"].exit_code != 0
    # What the reconciler counts against the run's restart budget.
    assert states["selector"].restarts == selector.attrs["RestartCount"] >= 1
    spawner.stop(701)
