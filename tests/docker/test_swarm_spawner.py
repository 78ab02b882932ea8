"""The swarm spawner against a real Docker Swarm (this engine, made a single-node swarm if
it is in none): what it starts and how, that real clients train through it, that Swarm
brings back only a killed selector, that the coordinator is restarted only when asked,
and that stop leaves nothing behind.

The module makes the engine a swarm manager (`docker swarm init --advertise-addr
127.0.0.1`) when it is not one already, and leaves the swarm at its end only then.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from fedota_common.fab import load_app
from fedota_common.pki import issue_server_cert, make_ca
from tests.docker import test_docker_spawner
from tests.docker.conftest import leftovers, unavailable
from tests.docker.joining import readable
from tests.docker.probes import exec_python
from tests.docker.test_arm64_client import _bundle
from webserver.spawner.base import RunSpec, SpawnError
from webserver.spawner.swarm import SwarmSpawner

REPO = Path(__file__).resolve().parents[2]
# Every round adds 1 to the model, after `client-delay` seconds per client (paces the run
# while the test kills things; a `.no-delay` file in a client's data folder lifts it).
APP = REPO / "tests" / "apps" / "counting"
ROUNDS = 60
CLIENT_DELAY = 0.5

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

# The docker backend's tests' problem in the database, over this module's `spawner`.
platform = test_docker_spawner.platform


@pytest.fixture(scope="module")
def swarm(docker_client: Any, docker_prefix: str) -> Iterator[Any]:
    """The engine as a Swarm manager; left again at the end only if this module made it one."""
    swarm = docker_client.info()["Swarm"]
    made = False
    if swarm.get("LocalNodeState") != "active":
        init = subprocess.run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], capture_output=True, text=True, timeout=60
        )
        if init.returncode != 0:
            unavailable(f"the engine cannot become a swarm manager: {init.stderr.strip()}")
        made = True
    elif not swarm.get("ControlAvailable"):
        unavailable("the engine is a swarm worker, not a manager")
    try:
        yield docker_client
        left = _swarm_leftovers(docker_client, docker_prefix)
        assert not left, f"the swarm tests left these behind: {left}"
    finally:
        if made:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=60)


def _swarm_leftovers(client: Any, prefix: str, problem_id: int | None = None) -> list[str]:
    labels = [f"fedota.install={prefix}"] + ([f"fedota.problem={problem_id}"] if problem_id is not None else [])
    found = [f"service {s.name}" for s in client.services.list(filters={"label": labels})]
    found += [f"secret {s.name}" for s in client.secrets.list(filters={"label": labels})]
    return found


def _nothing_left(client: Any, prefix: str, problem_id: int) -> None:
    """No service, secret, network, volume or container of the problem is left (containers go last)."""
    assert _swarm_leftovers(client, prefix, problem_id) == []
    _until(lambda: leftovers(client, prefix, problem_id) == [], 30, lambda: leftovers(client, prefix, problem_id))


def _until(done: Callable[[], bool], timeout: float, show: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {show()}"
        time.sleep(0.5)


def _spawner_here(swarm: Any, docker_prefix: str, **options: Any) -> SwarmSpawner:
    """A spawner with small limits whose selectors run on this node, where the clients here dial their ports
    (the swarm may have others)."""
    here = f"node.id=={swarm.info()['Swarm']['NodeID']}"
    return SwarmSpawner(
        client=swarm,
        prefix=docker_prefix,
        coordinator_memory="1g",
        selector_memory="512m",
        selector_constraints=(here,),
        **options,
    )


@pytest.fixture
def spawner(swarm: Any, docker_prefix: str) -> Iterator[SwarmSpawner]:
    made = _spawner_here(swarm, docker_prefix)
    yield made
    for problem_id in made.problems():
        made.stop(problem_id)


@pytest.fixture(scope="module")
def fab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    app = load_app(APP)
    path = tmp_path_factory.mktemp("fab") / "counting.fab"
    path.write_bytes(app.content)
    return path, app.sha256


def free_ports(count: int) -> tuple[int, ...]:
    """Ports nothing on this machine listens on now (a fixed or random one was taken once)."""
    held = [socket.socket() for _ in range(count)]
    try:
        for sock in held:
            sock.bind(("0.0.0.0", 0))
        return tuple(sock.getsockname()[1] for sock in held)
    finally:
        for sock in held:
            sock.close()


def _spec(
    fab: tuple[Path, str], problem_id: int, spawner: SwarmSpawner, *, selectors: int = 2, clients: int = 1
) -> RunSpec:
    """A TLS run with certificates as the website issues them, but no website: its selectors admit any client."""
    ca_cert, ca_key = make_ca(f"Fedota problem {problem_id}")
    selector_cert, selector_key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1"])
    coordinator_cert, coordinator_key = issue_server_cert(ca_cert, ca_key, spawner.coordinator_hosts(problem_id))
    return RunSpec(
        problem_id=problem_id,
        run_id=problem_id * 10,
        run_number=1,
        fab_path=fab[0],
        fab_sha256=fab[1],
        run_config={"num-server-rounds": ROUNDS, "min-available-nodes": clients, "client-delay": CLIENT_DELAY},
        num_selectors=selectors,
        round_timeout=60.0,
        min_clients=clients,
        report_url="",
        service_token="",
        selector_token=f"selector-token-{problem_id}",
        selector_ports=free_ports(selectors),
        tls_cert_pem=selector_cert,
        tls_key_pem=selector_key,
        coordinator_tls_cert_pem=coordinator_cert,
        coordinator_tls_key_pem=coordinator_key,
        ca_cert_pem=ca_cert,
    )


def _task_containers(client: Any, service: str) -> list[Any]:
    """The containers of a service's tasks on this engine, newest first (raw listing: no inspect races)."""
    found = client.api.containers(all=True, filters={"label": [f"com.docker.swarm.service.name={service}"]})
    return sorted(found, key=lambda c: c["Created"], reverse=True)


def _running_container(client: Any, service: str) -> Any:
    running = [c for c in _task_containers(client, service) if c["State"] == "running"]
    assert running, f"no running container of {service}"
    return client.containers.get(running[0]["Id"])


def _rounds(client: Any, service: str) -> list[dict[str, Any]]:
    """The coordinator's rounds.jsonl, read from its state volume through its newest container."""
    newest = _task_containers(client, service)[0]
    try:
        stream, _ = client.api.get_archive(newest["Id"], "/state/run_001/rounds.jsonl")
    except Exception:  # noqa: BLE001 - not written yet
        return []
    with tarfile.open(fileobj=BytesIO(b"".join(stream))) as archive:
        member = archive.extractfile("rounds.jsonl")
        assert member is not None
        return [json.loads(line) for line in member.read().decode().splitlines() if line.strip()]


def _last_round(client: Any, service: str) -> int:
    rounds = _rounds(client, service)
    return max((int(r["round"]) for r in rounds), default=0)


def test_a_run_trains_on_the_swarm_and_only_what_died_comes_back(
    spawner: SwarmSpawner, swarm: Any, docker_prefix: str, fab: tuple[Path, str], tmp_path: Path
) -> None:
    from scripts.make_demo_data import make_breast_cancer

    problem = 8101
    spec = _spec(fab, problem, spawner, selectors=2, clients=2)
    states = spawner.start(spec)
    assert [(s.role, s.index, s.health) for s in states] == [
        ("coordinator", 0, "healthy"),
        ("selector", 0, "healthy"),
        ("selector", 1, "healthy"),
    ]
    assert [s.address for s in states[1:]] == [f"127.0.0.1:{port}" for port in spec.selector_ports]
    coordinator = f"{docker_prefix}-p{problem}-coordinator"
    selectors = [f"{docker_prefix}-p{problem}-selector-{i}" for i in range(2)]

    # How the services are made: on the problem's own encrypted overlay network, which no
    # other container may join; limits, policies, health checks, host-mode ports.
    network = swarm.networks.get(f"{docker_prefix}-p{problem}")
    assert network.attrs["Driver"] == "overlay" and network.attrs["Scope"] == "swarm"
    assert network.attrs["Options"].get("encrypted") == "true" and network.attrs["Attachable"] is False
    for name in (coordinator, *selectors):
        service = swarm.services.get(name)
        spec_ = service.attrs["Spec"]
        task = spec_["TaskTemplate"]
        container = task["ContainerSpec"]
        assert spec_["Labels"]["fedota.install"] == docker_prefix and spec_["Labels"]["fedota.problem"] == str(problem)
        assert [n["Target"] for n in task["Networks"]] == [network.id]
        assert container["ReadOnly"] is True and container["CapabilityDrop"] == ["ALL"] and container["Init"] is True
        limits = task["Resources"]["Limits"]
        assert limits["MemoryBytes"] > 0 and limits["NanoCPUs"] > 0 and limits["Pids"] == 1024
        assert container["Healthcheck"]["Test"][:2] == ["CMD", "python"]
        assert spec_["EndpointSpec"]["Mode"] == "dnsrr"
        # No secret in the spec: the environment names files, the files are Swarm secrets.
        env = "\n".join(container["Env"])
        assert "BEGIN" not in env and spec.selector_token not in env and "FEDOTA_SELECTOR_TOKEN=" not in env
        assert "FEDOTA_SELECTOR_TOKEN_FILE=/run/secrets/selector-token" in env
        mounted = {s["File"]["Name"]: s["File"] for s in container["Secrets"]}
        assert all(f["UID"] == "10001" and f["Mode"] == 0o400 for f in mounted.values())
        if name == coordinator:
            assert task["RestartPolicy"]["Condition"] == "none"
            assert task["Placement"]["Constraints"] == [f"node.id=={spawner.node_id}"]
            assert sorted(mounted) == ["selector-token", "tls-cert", "tls-key"]
            assert "Ports" not in spec_["EndpointSpec"]
        else:
            assert task["RestartPolicy"]["Condition"] == "on-failure"
            assert task["Placement"]["Constraints"] == [f"node.id=={spawner.node_id}"]
            assert sorted(mounted) == ["ca-cert", "selector-token", "tls-cert", "tls-key"]
            (port,) = spec_["EndpointSpec"]["Ports"]
            assert port["PublishMode"] == "host" and port["TargetPort"] == 9092
    secrets = swarm.secrets.list(filters={"label": [f"fedota.install={docker_prefix}", f"fedota.problem={problem}"]})
    assert len(secrets) == 6  # both TLS pairs, the CA, the selector token (no website: no report token)
    # Inside: the images' user reads its secrets from files only it may read.
    selector = _running_container(swarm, selectors[0])
    code, out = exec_python(
        selector,
        "-c",
        "import os; s = os.stat('/run/secrets/selector-token'); "
        "print(os.getuid(), s.st_uid, oct(s.st_mode & 0o777), open('/run/secrets/selector-token').read())",
    )
    assert code == 0 and out.split() == ["10001", "10001", "0o400", spec.selector_token], out

    # Two hospitals' real clients join with a bundle listing both selectors, each its own first.
    demo = make_breast_cancer(tmp_path / "demo", 2, seed=0)
    readable(tmp_path)
    contract = json.loads((demo / "contract.json").read_text())
    data = [demo / "clients" / f"hospital_{i}" for i in range(2)]
    clients = []
    for i in range(2):
        endpoints = [f"127.0.0.1:{p}" for p in spec.selector_ports]
        bundle = _bundle(
            tmp_path / f"bundle-{i}",
            problem_id=problem,
            selectors=endpoints[i:] + endpoints[:i],
            credential=f"swarm-hospital-{i}",
            ca_certificate=spec.ca_cert_pem,
            fab_sha256=spec.fab_sha256,
            data_contract=contract,
        )
        name = f"{docker_prefix}-swarm-client-{i}"
        line = ["docker", "run", "--rm", "--name", name, "--label", f"fedota.install={docker_prefix}"]
        line += ["--label", f"fedota.problem={problem}", "--network", "host", "--read-only", "--tmpfs", "/tmp"]
        line += ["-v", f"{data[i]}:/data:ro", "-v", f"{bundle}:/join.json:ro", "fedota/client:latest"]
        log = (tmp_path / f"client-{i}.log").open("wb")
        clients.append(subprocess.Popen(line, stdout=log, stderr=subprocess.STDOUT))

    def client_logs() -> str:
        return "\n".join((tmp_path / f"client-{i}.log").read_text(errors="replace")[-1500:] for i in range(2))

    try:
        _until(lambda: _last_round(swarm, coordinator) >= 2, 120, client_logs)

        # A selector's task container is killed: Swarm replaces that task alone (restart policy).
        before = {name: _running_container(swarm, name).id for name in (coordinator, *selectors)}
        handles = {s.index: s.handle for s in spawner.status(problem) if s.role == "selector"}
        subprocess.run(["docker", "kill", before[selectors[1]]], check=True, capture_output=True)
        killed_at = _last_round(swarm, coordinator)

        def selector_back() -> bool:
            states = {(s.role, s.index): s for s in spawner.status(problem)}
            return states[("selector", 1)].health == "healthy" and states[("selector", 1)].restarts == 1

        _until(selector_back, 60, lambda: spawner.status(problem))
        after = {name: _running_container(swarm, name).id for name in (coordinator, *selectors)}
        assert after[coordinator] == before[coordinator] and after[selectors[0]] == before[selectors[0]]
        assert after[selectors[1]] != before[selectors[1]]
        states = {(s.role, s.index): s for s in spawner.status(problem)}
        # The same service (what the website records), on the same port.
        assert states[("selector", 1)].handle == handles[1]
        assert states[("selector", 1)].address == f"127.0.0.1:{spec.selector_ports[1]}"
        assert states[("selector", 0)].restarts == 0 and states[("coordinator", 0)].restarts == 0
        # Training goes on with both clients.
        _until(lambda: _last_round(swarm, coordinator) >= killed_at + 3, 90, client_logs)

        # The coordinator killed: Swarm leaves it (only the website knows a crash from a failed
        # run); restart() starts it again, on its node and volume, and the run resumes.
        subprocess.run(["docker", "kill", after[coordinator]], check=True, capture_output=True)
        _until(
            lambda: {s.role: s for s in spawner.status(problem)}["coordinator"].health == "exited",
            30,
            lambda: spawner.status(problem),
        )
        dead = {s.role: s for s in spawner.status(problem)}["coordinator"]
        assert dead.exit_code == 137 and "killed" in dead.detail
        time.sleep(2)
        assert {s.role: s for s in spawner.status(problem)}["coordinator"].health == "exited"
        stopped_at = _last_round(swarm, coordinator)
        restarted = spawner.restart(problem, "coordinator", 0)
        assert restarted.handle == dead.handle and restarted.health in ("starting", "healthy")
        _until(lambda: _last_round(swarm, coordinator) >= stopped_at + 2, 120, client_logs)
        # The selectors were not touched by the coordinator's restart.
        assert {name: _running_container(swarm, name).id for name in selectors} == {
            name: after[name] for name in selectors
        }

        # The rest of the run at full speed: it completes, and the clients end with it.
        for folder in data:
            (folder / ".no-delay").touch()
        for proc in clients:
            assert proc.wait(timeout=120) == 0, client_logs()
    finally:
        for i, proc in enumerate(clients):
            if proc.poll() is None:
                subprocess.run(["docker", "rm", "-f", f"{docker_prefix}-swarm-client-{i}"], capture_output=True)
                proc.wait(timeout=30)
    rounds = _rounds(swarm, coordinator)
    done = sorted({int(r["round"]) for r in rounds})
    assert done[-1] == ROUNDS and done == list(range(1, ROUNDS + 1)), done
    # It ends once it has told its selectors; finished, it is not restarted by Swarm.
    _until(
        lambda: {s.role: s for s in spawner.status(problem)}["coordinator"].health == "exited",
        60,
        lambda: spawner.status(problem),
    )
    time.sleep(2)
    final = {s.role: s for s in spawner.status(problem)}["coordinator"]
    assert final.health == "exited" and final.exit_code == 0, final

    spawner.stop(problem)
    _nothing_left(swarm, docker_prefix, problem)
    assert spawner.status(problem) == [] and problem not in spawner.problems()
    spawner.stop(problem)  # idempotent


def _task_of(client: Any, service: str) -> str:
    """The id of the service's newest task."""
    tasks = client.services.get(service).tasks()
    return str(max(tasks, key=lambda t: t["CreatedAt"])["ID"])


def test_the_reconciler_restarts_only_what_died_removes_orphans_and_relaunches(
    platform: dict[str, Any], spawner: SwarmSpawner, swarm: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    """The run lifecycle (database, reconciler) over the swarm backend, as over the docker one."""
    from webserver.problems import lifecycle
    from webserver.problems.models import RunStatus

    problem, owner = platform["problem"], platform["owner"]
    problem.run_config = {"rounds": 3, "num_selectors": 2}
    problem.save(update_fields=["run_config"])
    name = f"{docker_prefix}-p{problem.pk}"
    services = [f"{name}-coordinator", f"{name}-selector-0", f"{name}-selector-1"]
    run = lifecycle.run_start(problem=problem, user=owner)
    # Meanwhile a problem the website does not know starts (an orphan): both wait for health at once.
    with ThreadPoolExecutor(1) as pool:
        orphan = pool.submit(spawner.start, _spec(fab, 99_998, spawner, selectors=1))
        lifecycle.run_launch(run_id=run.pk)
        orphan.result()
    run.refresh_from_db()
    assert (run.status, run.backend) == (RunStatus.RUNNING, "swarm"), run.status_detail
    platform["enqueued"].clear()  # the start's own publish
    before = {s: _task_of(swarm, s) for s in services}
    network = swarm.networks.get(name).id
    labels = {"label": [f"fedota.install={docker_prefix}", f"fedota.problem={problem.pk}"]}
    secrets_before = {s.id for s in swarm.secrets.list(filters=labels)}

    # The coordinator is killed.
    subprocess.run(["docker", "kill", _running_container(swarm, services[0]).id], check=True, capture_output=True)
    _until(lambda: spawner.status(problem.pk)[0].health == "exited", 30, lambda: spawner.status(problem.pk))

    report = lifecycle.infrastructure_reconcile(spawner=spawner)
    assert report.restarted == [run.pk] and report.relaunched == [] and report.orphans_removed == [99_998]
    _nothing_left(swarm, docker_prefix, 99_998)
    assert platform["enqueued"] == []  # restarted alone, not launched whole
    _until(
        lambda: all(s.health == "healthy" for s in spawner.status(problem.pk)), 60, lambda: spawner.status(problem.pk)
    )
    after = {s: _task_of(swarm, s) for s in services}
    # Only the coordinator has a new task; the selectors' are the ones they had.
    assert after[services[0]] != before[services[0]]
    assert [after[s] for s in services[1:]] == [before[s] for s in services[1:]]
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and [r["service"] for r in run.restarts] == ["coordinator"]

    # A selector whose service is gone cannot be restarted as it was: the run is launched whole,
    # with new services and secrets on the problem's same network.
    swarm.services.get(services[1]).remove()
    report = lifecycle.infrastructure_reconcile(spawner=spawner)
    assert report.relaunched == [run.pk]
    assert platform["enqueued"] == [("problems.publish", (run.pk,))]
    lifecycle.run_launch(run_id=run.pk)  # what the enqueued publish task does
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, run.status_detail
    assert swarm.networks.get(name).id == network
    secrets_after = {s.id for s in swarm.secrets.list(filters=labels)}
    assert secrets_after and secrets_after.isdisjoint(secrets_before)
    assert all(_task_of(swarm, s) not in after.values() for s in services)

    lifecycle.run_stop(problem=problem, user=owner)
    lifecycle.run_teardown(problem_id=problem.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.STOPPED
    _nothing_left(swarm, docker_prefix, problem.pk)


# GET argv[1] from inside a container: prints the body, or what went wrong.
SCRAPE = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
    "except Exception as exc:\n"
    "    print(f'no answer: {type(exc).__name__} {exc}')\n"
)


def test_metrics_reach_the_platforms_prometheus_on_the_problems_network_only(
    swarm: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    """With metrics on, every task serves them on its overlay address; the container named as the
    platform's Prometheus is connected to the problem's network for the problem's life (and let go at
    stop) and scrapes them there; a container on no problem network reaches none of them."""
    idle = ["python", "-c", "import time; time.sleep(900)"]
    labels = {"fedota.install": docker_prefix, "fedota.test": "prometheus-stand-in"}
    prometheus = swarm.containers.run(
        "fedota/selector:latest", entrypoint=idle, detach=True, name=f"{docker_prefix}-prometheus", labels=labels
    )
    stranger = swarm.containers.run(
        "fedota/selector:latest", entrypoint=idle, detach=True, name=f"{docker_prefix}-stranger", labels=labels
    )
    spawner = _spawner_here(swarm, docker_prefix, metrics=True, prometheus_container=prometheus.name)
    problem = 8104
    try:
        states = spawner.start(_spec(fab, problem, spawner, selectors=2))
        network = swarm.networks.get(f"{docker_prefix}-p{problem}")
        assert network.attrs["Attachable"] is True  # for the Prometheus container alone
        prometheus.reload()
        assert network.name in prometheus.attrs["NetworkSettings"]["Networks"]
        subnet = network.attrs["IPAM"]["Config"][0]["Subnet"]
        for state in states:
            address = state.metrics
            host = ipaddress.ip_address(address.rpartition(":")[0])
            assert address.endswith(":9094") and host in ipaddress.ip_network(subnet), (state, subnet)
            code, out = exec_python(prometheus, "-c", SCRAPE, f"http://{address}/metrics")
            assert code == 0 and f"fedota_{state.role}_" in out, (state, out[-2000:])
        # (Not a bare TCP probe: this machine's gateway accepts any connection to an address it routes.)
        for state in states:
            code, out = exec_python(stranger, "-c", SCRAPE, f"http://{state.metrics}/metrics")
            assert code == 0 and "fedota_" not in out, f"a container on no problem network scraped {state}: {out}"
        # Nothing of it is published on the node.
        for name in (f"{docker_prefix}-p{problem}-coordinator", f"{docker_prefix}-p{problem}-selector-0"):
            ports = swarm.services.get(name).attrs["Spec"].get("EndpointSpec", {}).get("Ports") or []
            assert all(p["TargetPort"] != 9094 for p in ports), ports

        spawner.stop(problem)
        prometheus.reload()
        assert network.name not in prometheus.attrs["NetworkSettings"]["Networks"]
        assert prometheus.status == "running"
        _nothing_left(swarm, docker_prefix, problem)
    finally:
        for problem_id in spawner.problems():
            spawner.stop(problem_id)
        for container in (prometheus, stranger):
            container.remove(force=True)


def test_bad_settings_fail_the_start_saying_what_to_fix(
    spawner: SwarmSpawner, swarm: Any, docker_prefix: str, fab: tuple[Path, str]
) -> None:
    spec = _spec(fab, 8301, spawner, selectors=1)
    unreachable = SwarmSpawner(manager="tcp://127.0.0.1:9", prefix=docker_prefix)
    with pytest.raises(SpawnError, match=r"cannot reach the Swarm manager at tcp://127.0.0.1:9 .*FEDOTA_SWARM_MANAGER"):
        unreachable.start(spec)

    no_coordinator = SwarmSpawner(client=swarm, prefix=docker_prefix, coordinator_image="fedota/missing:nope")
    with pytest.raises(SpawnError, match=r"fedota/missing:nope is not on the Swarm manager's engine.*build-images"):
        no_coordinator.start(spec)
    _nothing_left(swarm, docker_prefix, 8301)

    # The selector's image is looked for on the node Swarm gives its task.
    no_selector = SwarmSpawner(
        client=swarm, prefix=docker_prefix, selector_image="fedota/missing:nope", coordinator_memory="1g"
    )
    with pytest.raises(SpawnError, match=r"the image fedota/missing:nope is not on the node \S+, .*docker load"):
        no_selector.start(spec)
    # Nothing of the failed run stays running; what is left goes with stop.
    assert _swarm_leftovers(swarm, docker_prefix, 8301) == []
    no_selector.stop(8301)
    _nothing_left(swarm, docker_prefix, 8301)

    # A selector port another program holds on the node.
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        spec = RunSpec(**{**spec.__dict__, "selector_ports": (taken,)})
        with pytest.raises(SpawnError, match=f"port {taken}.*FEDOTA_SELECTOR_PORT_BASE"):
            spawner.start(spec)
    assert _swarm_leftovers(swarm, docker_prefix, 8301) == []
    spawner.stop(8301)
    _nothing_left(swarm, docker_prefix, 8301)


def test_the_swarm_backend_is_one_setting(settings: Any) -> None:
    """FEDOTA_SPAWNER=swarm gives this backend, built from the settings (it connects only when used)."""
    from webserver.spawner import get_spawner

    settings.FEDOTA_SPAWNER = "swarm"
    settings.FEDOTA_SWARM_MANAGER = "tcp://manager.example:2376"
    settings.FEDOTA_SWARM_ENCRYPTED = False
    settings.FEDOTA_SWARM_SELECTOR_CONSTRAINTS = ["node.labels.fedota-selectors==yes"]
    settings.FEDOTA_DOCKER_PREFIX = "fedota-x"
    made = get_spawner()
    assert isinstance(made, SwarmSpawner) and made.name == "swarm"
    assert (made.manager, made.encrypted, made.prefix) == ("tcp://manager.example:2376", False, "fedota-x")
    assert made.selector_constraints == ("node.labels.fedota-selectors==yes",)
    assert made.coordinator_hosts(7) == ["fedota-x-p7-coordinator"]
    with pytest.raises(SpawnError, match="use auto, process, docker, swarm"):
        get_spawner("swarms")
