"""The real `process` backend: the built-in tabular app's coordinator and selectors as processes."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from fedota_common.grpcutil import check_health
from tests.ports import free_port_pair
from webserver.spawner import RunSpec, SpawnError, selector_ports
from webserver.spawner.process import TAG_VAR, ProcessSpawner, _port_freed

PROBLEM = 4242


def _processes_of(spawner: ProcessSpawner, problem_id: int) -> list[int]:
    """Every process on the machine tagged with this spawner's problem (what /proc says, not the backend).

    The tag names the installation too: tests running at the same time (pytest-xdist
    workers, another checkout's test run) start their own problem 4242.
    """
    tag = f"{TAG_VAR}={spawner.tag(problem_id)}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and tag in environ:
            found.append(int(entry.name))
    return found


@pytest.fixture
def spawner(tmp_path: Path) -> Iterator[ProcessSpawner]:
    spawner = ProcessSpawner(tmp_path / "state")
    yield spawner
    spawner.stop(PROBLEM)


@pytest.fixture
def spec(tmp_path: Path, tabular_fab: bytes) -> RunSpec:
    fab = tmp_path / "tabular.fab"
    fab.write_bytes(tabular_fab)
    first = free_port_pair()
    base = first - (PROBLEM % 1000) * 8
    return RunSpec(
        problem_id=PROBLEM,
        run_id=1,
        run_number=1,
        fab_path=fab,
        fab_sha256=hashlib.sha256(tabular_fab).hexdigest(),
        run_config={"num-server-rounds": 2},
        num_selectors=2,
        round_timeout=30.0,
        min_clients=1,
        report_url="http://127.0.0.1:9/internal/v1/runs/1/",
        service_token="service-token",
        selector_token="-selector-token-may-begin-with-a-dash",
        selector_ports=selector_ports(PROBLEM, 2, base=base),
    )


def test_services_come_up_on_the_problems_ports_and_stop_leaves_nothing(spawner: ProcessSpawner, spec: RunSpec) -> None:
    states = spawner.start(spec)

    assert [(s.role, s.index) for s in states] == [("coordinator", 0), ("selector", 0), ("selector", 1)]
    assert all(s.health == "healthy" for s in states), states
    selectors = [s.address for s in states if s.role == "selector"]
    assert selectors == [f"127.0.0.1:{port}" for port in spec.selector_ports]
    assert all(check_health(address) for address in selectors)
    assert spawner.problems() == {PROBLEM}
    assert _processes_of(spawner, PROBLEM)

    spawner.stop(PROBLEM)

    assert _processes_of(spawner, PROBLEM) == []
    assert spawner.status(PROBLEM) == []
    assert spawner.problems() == set()
    assert not any(check_health(address, timeout=0.5) for address in selectors)

    # The next run comes up where participants' join bundles point: the same ports.
    again = spawner.start(replace(spec, run_id=2, run_number=2))
    assert [s.address for s in again if s.role == "selector"] == selectors
    assert all(s.health == "healthy" for s in again), again


def test_services_serve_metrics_on_loopback_only_when_asked_and_a_restart_serves_them_again(
    tmp_path: Path, spec: RunSpec
) -> None:
    import time
    import urllib.request

    spec = replace(spec, num_selectors=1, selector_ports=spec.selector_ports[:1])
    quiet = ProcessSpawner(tmp_path / "quiet")
    try:
        assert [s.metrics for s in quiet.start(spec)] == ["", ""]
    finally:
        quiet.stop(PROBLEM)

    served = ProcessSpawner(tmp_path / "served", metrics=True)
    try:
        states = {s.role: s for s in served.start(spec)}
        for role, state in states.items():
            assert state.metrics.startswith("127.0.0.1:"), state
            with urllib.request.urlopen(f"http://{state.metrics}/metrics", timeout=5) as resp:
                assert f"fedota_{role}_".encode() in resp.read()
        # A killed selector serves nothing; restarted, it serves again (on a port of its own).
        os.killpg(int(states["selector"].handle), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (dead := next(s for s in served.status(PROBLEM) if s.role == "selector")).health != "exited":
            assert time.monotonic() < deadline, dead
            time.sleep(0.1)
        assert dead.metrics == ""
        again = served.restart(PROBLEM, "selector", 0)
        with urllib.request.urlopen(f"http://{again.metrics}/metrics", timeout=5) as resp:
            assert b"fedota_selector_" in resp.read()
    finally:
        served.stop(PROBLEM)


def test_a_killed_selector_shows_as_exited(spawner: ProcessSpawner, spec: RunSpec) -> None:
    states = spawner.start(replace(spec, num_selectors=1, selector_ports=spec.selector_ports[:1]))
    selector = next(s for s in states if s.role == "selector")

    os.killpg(int(selector.handle), signal.SIGKILL)

    def selector_health() -> str:
        return next(s for s in spawner.status(PROBLEM) if s.role == "selector").health

    import time

    deadline = time.monotonic() + 10
    while selector_health() != "exited" and time.monotonic() < deadline:
        time.sleep(0.1)
    after = {(s.role, s.index): s for s in spawner.status(PROBLEM)}
    assert after["selector", 0].health == "exited"
    assert "killed" in after["selector", 0].detail or "exited" in after["selector", 0].detail
    assert after["coordinator", 0].health == "healthy"


def test_a_broken_fab_fails_with_the_coordinators_error(spawner: ProcessSpawner, spec: RunSpec, tmp_path: Path) -> None:
    broken = tmp_path / "broken.fab"
    broken.write_bytes(b"this is not a zip file")

    with pytest.raises(SpawnError) as caught:
        spawner.start(replace(spec, fab_path=broken))

    message = str(caught.value)
    assert "coordinator exited with code 2" in message
    assert "not a valid zip file" in message
    assert _processes_of(spawner, PROBLEM) == []


def test_a_selector_port_in_use_is_named(spawner: ProcessSpawner, spec: RunSpec) -> None:
    port = spec.selector_ports[1]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(SpawnError, match=f"port {port}"):
            spawner.start(spec)
    assert _processes_of(spawner, PROBLEM) == []


def test_selector_ports_are_fixed_per_problem() -> None:
    assert selector_ports(3, 2, base=17000) == (17024, 17025)
    assert selector_ports(3, 2, base=17000) == selector_ports(3, 2, base=17000)
    assert selector_ports(1003, 1, base=17000) == (17024,)
    with pytest.raises(SpawnError, match="1 to 8 selectors"):
        selector_ports(3, 9, base=17000)


def test_services_run_at_the_configured_niceness(tmp_path: Path, spec: RunSpec) -> None:
    niced = ProcessSpawner(tmp_path / "niced", niceness=7)
    try:
        states = niced.start(replace(spec, num_selectors=1, selector_ports=spec.selector_ports[:1]))
        for state in states:
            # Field 19 of /proc/<pid>/stat is the nice value.
            fields = Path(f"/proc/{state.handle}/stat").read_text().rsplit(")", 1)[-1].split()
            assert int(fields[16]) == 7, (state.role, fields[16])
            # Each service leads its own session, which the scheduler shares the CPU by first:
            # the session's niceness is set too, or the website gets no priority over it.
            group = Path(f"/proc/{state.handle}/autogroup")
            if Path("/proc/sys/kernel/sched_autogroup_enabled").exists():
                assert group.read_text().split()[-2:] == ["nice", "7"], (state.role, group.read_text())
    finally:
        niced.stop(PROBLEM)


def test_both_links_speak_tls_with_the_problems_ca_and_secrets_stay_off_command_lines(
    spawner: ProcessSpawner, spec: RunSpec, tmp_path: Path
) -> None:
    import time

    from fedota_common.pki import issue_server_cert, make_ca

    ca_cert, ca_key = make_ca(f"Fedota problem {PROBLEM}")
    selector_cert, selector_key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1"])
    coordinator_cert, coordinator_key = issue_server_cert(ca_cert, ca_key, spawner.coordinator_hosts(PROBLEM))
    tls_spec = replace(
        spec,
        num_selectors=1,
        selector_ports=spec.selector_ports[:1],
        tls_cert_pem=selector_cert,
        tls_key_pem=selector_key,
        coordinator_tls_cert_pem=coordinator_cert,
        coordinator_tls_key_pem=coordinator_key,
        ca_cert_pem=ca_cert,
    )

    states = spawner.start(tls_spec)

    assert all(s.health == "healthy" for s in states), states  # asked on the plaintext loopback health ports
    coordinator = next(s for s in states if s.role == "coordinator")
    assert not check_health(coordinator.address, timeout=1), "plaintext reached the coordinator"
    log = tmp_path / "state" / f"problem_{PROBLEM}" / "run_001" / "logs" / "selector_0.log"
    deadline = time.monotonic() + 30
    while "run info received" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "run info received" in log.read_text(), "the selector did not attach to its coordinator over TLS"
    for pid in _processes_of(spawner, PROBLEM):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert spec.selector_token.encode() not in cmdline and b"PRIVATE KEY" not in cmdline


def test_a_restart_waits_briefly_for_its_port_and_then_blames_the_holder() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    # Held throughout: not free, after the wait.
    assert not _port_freed("127.0.0.1", port, wait=0.3)
    # Released during the wait (a killed service's sockets closing): free.
    threading.Timer(0.3, holder.close).start()
    assert _port_freed("127.0.0.1", port, wait=5.0)
