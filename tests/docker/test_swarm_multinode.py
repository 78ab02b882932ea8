"""The platform on a swarm of three engines on this one machine (issue 17 part 3).

The website (gunicorn, a Celery worker and beat, as tests/docker/test_e2e_docker.py runs
them, with FEDOTA_SPAWNER=swarm) publishes two problems through its API; hospitals join
and run the `docker run` line their page shows; the problems' services land on more than
one node and are isolated across nodes; a node running a selector is lost mid-run, Swarm
reschedules the selector, its client joins again and the run ends with at most one round
short of a result.

This engine is the manager, advertised on its `docker0` address; two more engines run in
containers of the project's Debian base image with Debian's docker.io, join as workers and
get the selector image by `docker save | docker load`. They run with every capability the
host has, not `--privileged` (the host itself lacks CAP_SYS_RESOURCE, which --privileged
asks for), and with the host's cgroup hierarchy mounted read-write under a cgroup parent
of their own.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import unavailable
from tests.docker.joining import readable
from tests.docker.swarm_nodes import ClusterUnavailable, swarm_cluster
from tests.docker.test_e2e_docker import _tail
from tests.docker.test_swarm_spawner import _nothing_left
from webserver.spawner.swarm import SwarmSpawner

WORKERS = 2
# A trains tests/apps/counting, paced by its clients (CLIENT_DELAY s a round) until the lost
# node's selector is back, so that the run outlasts the reschedule (up to 180 s) on any
# machine: the built-in app's pace (0.4 to 0.7 s a round) once ended all its rounds
# first. Then `.no-delay` in the data folders lets the rest of the rounds run at once.
ROUNDS = 120
CLIENT_DELAY = 2.0
COUNTING = Path(__file__).resolve().parents[1] / "apps" / "counting"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(docker_client: Any, docker_prefix: str) -> Iterator[dict[str, Any]]:
    """A three-node swarm: this engine (manager) and two engines in containers (workers)."""
    try:
        with swarm_cluster(docker_client, docker_prefix, WORKERS) as made:
            yield made
    except ClusterUnavailable as exc:
        unavailable(str(exc))


# [[host, port], ...] as argv[1]; prints [[SHA-256 of the certificate the server showed, or "", why], ...].
# A TLS handshake, not a TCP connection: this machine's network accepts a TCP connection to any
# address it routes outside (a catch-all), which is where an overlay address goes from a
# container that has no route to it.
TLS_REACH = (
    "import hashlib, json, socket, ssl, sys\n"
    "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
    "ctx.set_alpn_protocols(['h2'])\n"
    "out = []\n"
    "for host, port in json.loads(sys.argv[1]):\n"
    "    try:\n"
    "        with socket.create_connection((host, port), timeout=4) as raw, ctx.wrap_socket(raw) as tls:\n"
    "            out.append([hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest(), 'handshake'])\n"
    "    except (OSError, ssl.SSLError) as exc:\n"
    "        out.append(['', f'{type(exc).__name__} {exc}'])\n"
    "print(json.dumps(out))\n"
)


def _address_on(client: Any, service: str, network: str) -> str:
    """The address of the service's running task container (on this engine) on `network`."""
    (found,) = client.api.containers(filters={"label": [f"com.docker.swarm.service.name={service}"]})
    return str(client.api.inspect_container(found["Id"])["NetworkSettings"]["Networks"][network]["IPAddress"])


def _reach(cluster: dict[str, Any], node: str, service: str, targets: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """For each (host, port): the fingerprint of the TLS server the service's task container, on
    `node`, finds there ("" if none), and what happened."""
    if node in cluster["nodes"]:
        engine = ["docker", "exec", node, "docker"]
    else:
        engine = ["docker"]
    listed = subprocess.run(
        [*engine, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(listed) == 1, f"{service} on {node}: {listed}"
    done = subprocess.run(
        [*engine, "exec", listed[0], "python", "-c", TLS_REACH, json.dumps(targets)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [(str(seen), str(why)) for seen, why in json.loads(done.stdout.splitlines()[-1])]


def test_two_problems_published_on_the_website_spread_over_nodes_and_survive_a_lost_node(
    cluster: dict[str, Any], docker_prefix: str, tmp_path: Path
) -> None:
    """Issue 17 part 3: the website's API, the bundles' `docker run` lines, a node lost mid-run."""
    from fedota_common.fab import load_app
    from scripts.make_demo_data import make_breast_cancer
    from tests.docker.test_e2e_docker import HOLDERS, SETTER, running_platform

    client = cluster["client"]
    # Host-mode ports open on the selector's own node only: the bundles list every node.
    hosts = [cluster["gateway"], *cluster["addresses"].values()]
    environ = {
        "FEDOTA_SELECTOR_HOST": ",".join(hosts),
        # Unencrypted: this kernel drops encrypted overlay traffic between nodes (docs/swarm.md).
        "FEDOTA_SWARM_ENCRYPTED": "0",
        "FEDOTA_DOCKER_COORDINATOR_MEMORY": "1g",
        "FEDOTA_DOCKER_SELECTOR_MEMORY": "512m",
    }
    demo = make_breast_cancer(tmp_path / "demo", 3, seed=0)
    readable(tmp_path)
    contract = json.loads((demo / "contract.json").read_text())
    data = [demo / "clients" / f"hospital_{i}" for i in range(3)]
    spawner = SwarmSpawner(client=client, prefix=docker_prefix)
    (tmp_path / "platform").mkdir()
    with running_platform(client, docker_prefix, tmp_path / "platform", spawner="swarm", environ=environ) as site:
        try:
            setter = site.token(SETTER)

            def publish(title: str, run_config: dict[str, Any], fab: bytes | None = None) -> int:
                fields = {
                    "title": title,
                    "description": "Tell malignant from benign tumours.",
                    "contract": contract,
                    "run_config": run_config,
                    "join_policy": "approval",
                }
                if fab is None:
                    made = site.api("POST", "/api/v1/problems/", setter, {**fields, "app_template": "tabular"}, (201,))
                else:
                    form = {
                        name: value if isinstance(value, str) else json.dumps(value) for name, value in fields.items()
                    }
                    made = site.api("POST", "/api/v1/problems/", setter, form, (201,), files={"fab": ("app.fab", fab)})
                site.api("POST", f"/api/v1/problems/{made['id']}/publish/", setter, expect=(201,))
                return int(made["id"])

            # A: two hospitals on two selectors, long enough to lose a node in the middle. B: one.
            a = publish(
                "Across nodes A",
                {
                    "rounds": ROUNDS,
                    "num_selectors": 2,
                    "min_clients": 2,
                    "clients_per_round": 0,
                    "round_timeout": 120,
                    "app_config": {"client-delay": CLIENT_DELAY},
                },
                load_app(COUNTING).content,
            )
            b = publish("Across nodes B", {"rounds": 3, "num_selectors": 1, "min_clients": 1, "round_timeout": 120})
            site.wait_run(setter, a, "running", 300)
            site.wait_run(setter, b, "running", 300)
            placed = {**spawner.nodes(a), **spawner.nodes(b)}
            print(f"[multinode] placed: {placed}")
            assert len(set(placed.values())) > 1, placed
            coordinator = spawner.service_name(a, "coordinator")
            selectors = [spawner.service_name(a, "selector", i) for i in range(2)]
            assert placed[coordinator] not in cluster["nodes"]  # on the manager, with its volume

            # Isolation across nodes: B's selector, wherever it runs, reaches neither A's
            # coordinator's name nor its address; A's own selectors reach it from their nodes.
            ours = _address_on(client, coordinator, spawner.network_name(a))
            seen_ours = []
            for name in selectors:
                ((seen, why),) = _reach(cluster, placed[name], name, [(coordinator, 9091)])
                assert seen, f"{name} on {placed[name]} does not reach its coordinator: {why}"
                seen_ours.append(seen)
            stranger = spawner.service_name(b, "selector", 0)
            probed = _reach(cluster, placed[stranger], stranger, [(coordinator, 9091), (ours, 9091)])
            print(f"[multinode] {stranger} on {placed[stranger]} probing problem {a}'s coordinator: {probed}")
            assert "gaierror" in probed[0][1], probed
            assert probed[1][0] not in seen_ours, f"{stranger} reached problem {a}'s coordinator at {ours}"

            # The hospitals join and run the line their page shows, with their two paths filled in.
            clients = []
            for i, (problem_id, holder) in enumerate([(a, HOLDERS[0]), (a, HOLDERS[1]), (b, HOLDERS[2])]):
                token = site.token(holder)
                asked = site.api(
                    "POST",
                    f"/api/v1/problems/{problem_id}/participants/",
                    token,
                    {"site_name": f"Site {i}"},
                    expect=(201,),
                )
                site.api("POST", f"/api/v1/participants/{asked['id']}/approve/", setter)
                bundle = dict(site.api("POST", f"/api/v1/participants/{asked['id']}/bundle/", token))
                ports = site.selector_ports(problem_id, 2 if problem_id == a else 1)
                assert bundle["selectors"] == [f"{h}:{p}" for p in ports for h in hosts], bundle["selectors"]
                shown = site.shown_docker_run(holder, problem_id)
                clients.append(site.start_client(problem_id, bundle, data[i], f"{docker_prefix}-mn-client-{i}", shown))

            def rounds(problem_id: int) -> list[dict[str, Any]]:
                return list(site.api("GET", f"/api/v1/problems/{problem_id}/dashboard/", setter)["rounds"])

            site.wait("A's third round", lambda: len(rounds(a)) >= 3, 300, problems=(a,))

            # The node of one of A's selectors is lost: its engine's container is removed.
            lost = next(placed[name] for name in selectors if placed[name] in cluster["nodes"])
            moved = [name for name in selectors if placed[name] == lost]
            lost_at = len(rounds(a))
            started = time.monotonic()
            subprocess.run(["docker", "rm", "-f", "-v", lost], capture_output=True, timeout=120)

            def rescheduled() -> bool:
                now = spawner.nodes(a)
                states = {spawner.service_name(a, s.role, s.index): s for s in spawner.status(a)}
                return all(now.get(name) not in (None, lost) and states[name].health == "healthy" for name in moved)

            site.wait("A's selector on the lost node to run elsewhere", rescheduled, 180, problems=(a,))
            print(
                f"[multinode] {moved} rescheduled from {lost} in {time.monotonic() - started:.1f} s "
                f"(lost after round {lost_at}): {spawner.nodes(a)}"
            )
            assert len(rounds(a)) < ROUNDS, "A ended before its selector came back: the test proves nothing"
            for folder in data[:2]:
                (folder / ".no-delay").touch()

            def finished(problem_id: int, total: int) -> bool:
                run = site.latest_run(setter, problem_id)
                if run["status"] in ("failed", "stopped"):
                    raise AssertionError(f"problem {problem_id}'s run {run['status']}: {run['status_detail']}")
                return run["status"] == "finished" and len(rounds(problem_id)) == total

            site.wait("A to finish", lambda: finished(a, ROUNDS), 600, interval=2.0, problems=(a,))
            site.wait("B to finish", lambda: finished(b, 3), 120, problems=(b,))
            done = rounds(a)
            assert [r["round"] for r in done] == list(range(1, ROUNDS + 1)), done
            # At most one round without both hospitals' training around the loss (every round
            # asks both: clients_per_round 0).
            short = [r["round"] for r in done if int(r["clients"]) < 2]
            print(f"[multinode] node lost after round {lost_at}; rounds short of a result: {short}")
            assert len(short) <= 1, short
            for one in clients:
                site.wait(f"{one.name} to end", lambda c=one: c.code() is not None, 120)
                assert one.code() == 0, _tail(one.log)
        finally:
            for problem_id in spawner.problems():
                spawner.stop(problem_id)
    for problem_id in (a, b):
        _nothing_left(client, docker_prefix, problem_id)
