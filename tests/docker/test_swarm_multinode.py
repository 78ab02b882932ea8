"""The swarm spawner on a swarm of three engines on this one machine (issue 17 part 3's harness).

This engine is the manager, advertised on its `docker0` address; two more engines run in
containers of the project's Debian base image with Debian's docker.io, join as workers and
get the selector image by `docker save | docker load`. They run with every capability the
host has, not `--privileged` (the host itself lacks CAP_SYS_RESOURCE, which --privileged
asks for), and with the host's cgroup hierarchy mounted read-write under a cgroup parent
of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fedota_common.fab import load_app
from fedota_common.pki import issue_server_cert, make_ca
from tests.docker.conftest import unavailable
from tests.docker.joining import readable
from tests.docker.test_arm64_client import _bundle
from tests.docker.test_swarm_spawner import APP, _last_round, _nothing_left, _rounds, _until, free_ports
from webserver.spawner.addresses import interface_ipv4
from webserver.spawner.base import RunSpec
from webserver.spawner.swarm import SwarmSpawner

NODE_IMAGE = "fedota/swarm-node:test"
# The Debian base the images were built from (scripts/build-base-image.sh picks one of these).
BASE_IMAGES = ("fedota/base:bookworm", "python:3.11-slim-bookworm")
NODE_DOCKERFILE = """FROM {base}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
    docker.io iptables ca-certificates && rm -rf /var/lib/apt/lists/*
VOLUME /var/lib/docker
ENTRYPOINT ["dockerd"]
"""
# Every capability the host has (CapBnd here lacks CAP_SYS_RESOURCE).
CAPS = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE "
    "AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ"
).split()
WORKERS = 2
ROUNDS = 80
CLIENT_DELAY = 0.5

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def _docker(*args: str, stdin: bytes | None = None, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], input=stdin, capture_output=True, timeout=timeout)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr.decode(errors='replace')}"
    return done.stdout.decode().strip()


def _node_exec(node: str, *args: str, timeout: float = 120) -> str:
    return _docker("exec", node, "docker", *args, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(docker_client: Any, docker_prefix: str) -> Iterator[dict[str, Any]]:
    """A three-node swarm: this engine (manager) and two engines in containers (workers)."""
    gateway = interface_ipv4("docker0")
    if not gateway:
        unavailable("no docker0 address for the swarm's manager to advertise")
    swarm = docker_client.info()["Swarm"]
    made = False
    if swarm.get("LocalNodeState") != "active":
        _docker("swarm", "init", "--advertise-addr", gateway)
        made = True
    elif swarm.get("NodeAddr") != gateway or not swarm.get("ControlAvailable"):
        unavailable(f"the engine is in a swarm advertised on {swarm.get('NodeAddr')}; workers need {gateway}")
    present = {tag for image in docker_client.images.list() for tag in image.tags}
    base = next((image for image in BASE_IMAGES if image in present), None)
    if base is None:
        unavailable(f"no Debian base image ({' or '.join(BASE_IMAGES)}; scripts/build-base-image.sh)")
    # Debian's docker.io from its mirror (the first build needs it; later ones come from the cache).
    dockerfile = NODE_DOCKERFILE.format(base=base).encode()
    _docker("build", "--network", "host", "-t", NODE_IMAGE, "-", stdin=dockerfile, timeout=600)
    token = _docker("swarm", "join-token", "-q", "worker")
    names = [f"{docker_prefix}-node-{i}" for i in range(WORKERS)]
    try:

        def start(name: str) -> None:
            caps = [arg for cap in CAPS for arg in ("--cap-add", cap)]
            _docker(
                "run", "-d", "--name", name, "--hostname", name, "--label", f"fedota.install={docker_prefix}",
                *caps, "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--security-opt", "systempaths=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                NODE_IMAGE, f"--cgroup-parent=/{name}",
            )  # fmt: skip
            _until(
                lambda: subprocess.run(["docker", "exec", name, "docker", "info"], capture_output=True).returncode == 0,
                60,
            )
            _node_exec(name, "swarm", "join", "--token", token, f"{gateway}:2377")
            image = subprocess.run(["docker", "save", "fedota/selector:latest"], capture_output=True, check=True).stdout
            _docker("exec", "-i", name, "docker", "load", stdin=image, timeout=300)

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(start, names))
        addresses = {name: _docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name) for name in names}
        yield {"client": docker_client, "nodes": names, "addresses": addresses, "gateway": gateway}
    finally:
        for name in names:
            subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=120)
            _remove_cgroups(name)
        ids = _docker("node", "ls", "-q", "--filter", "role=worker").split()
        for node_id in ids:
            hostname = _docker("node", "inspect", "-f", "{{.Description.Hostname}}", node_id)
            if hostname in names:
                subprocess.run(["docker", "node", "rm", "--force", node_id], capture_output=True, timeout=60)
        if made:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=60)


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


def _fingerprint(pem: str) -> str:
    """SHA-256 of the first certificate in `pem`, as TLS_REACH prints it."""
    first = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


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


def _remove_cgroups(name: str) -> None:
    """The (empty) cgroups a node's engine made under its cgroup parent, in every hierarchy."""
    for root in [*Path("/sys/fs/cgroup").glob(f"*/{name}"), Path("/sys/fs/cgroup") / name]:
        for folder, _dirs, _files in sorted(os.walk(root, topdown=False), key=lambda w: -len(w[0])):
            try:
                os.rmdir(folder)
            except OSError:
                pass


def test_selectors_spread_over_nodes_and_a_lost_node_s_selector_comes_back_elsewhere(
    cluster: dict[str, Any], docker_prefix: str, tmp_path: Path
) -> None:
    from scripts.make_demo_data import make_breast_cancer

    client = cluster["client"]
    # Unencrypted: this kernel drops encrypted overlay traffic between nodes (docs/swarm.md).
    spawner = SwarmSpawner(
        client=client, prefix=docker_prefix, coordinator_memory="1g", selector_memory="512m", encrypted=False
    )
    problem = 8501
    app = load_app(APP)
    fab = tmp_path / "counting.fab"
    fab.write_bytes(app.content)
    # Clients may find a selector on any node: the bundle lists every node's address for its port.
    hosts = [cluster["gateway"], *cluster["addresses"].values()]
    ca_cert, ca_key = make_ca(f"Fedota problem {problem}")
    selector_cert, selector_key = issue_server_cert(ca_cert, ca_key, hosts)
    coordinator_cert, coordinator_key = issue_server_cert(ca_cert, ca_key, spawner.coordinator_hosts(problem))
    ports = free_ports(2)
    spec = RunSpec(
        problem_id=problem,
        run_id=problem * 10,
        run_number=1,
        fab_path=fab,
        fab_sha256=app.sha256,
        run_config={"num-server-rounds": ROUNDS, "min-available-nodes": 2, "client-delay": CLIENT_DELAY},
        num_selectors=2,
        round_timeout=60.0,
        min_clients=2,
        report_url="",
        service_token="",
        selector_token="multinode-selector-token",
        selector_ports=ports,
        tls_cert_pem=selector_cert,
        tls_key_pem=selector_key,
        coordinator_tls_cert_pem=coordinator_cert,
        coordinator_tls_key_pem=coordinator_key,
        ca_cert_pem=ca_cert,
    )
    coordinator = f"{docker_prefix}-p{problem}-coordinator"
    selectors = [f"{docker_prefix}-p{problem}-selector-{i}" for i in range(2)]
    clients: list[subprocess.Popen[bytes]] = []
    try:
        spawner.start(spec)
        placed = spawner.nodes(problem)
        print(f"[multinode] placed: {placed}")
        assert len(set(placed.values())) > 1, placed
        assert placed[coordinator] not in cluster["nodes"]  # on the manager, with its volume

        # Isolation across nodes: another problem's selector, wherever it runs, reaches neither this
        # problem's coordinator's name nor its address; this problem's own selectors reach it from
        # their nodes (the control).
        other = SwarmSpawner(
            client=client, prefix=docker_prefix, coordinator_memory="1g", selector_memory="512m", encrypted=False
        )
        other_cert, other_key = issue_server_cert(ca_cert, ca_key, other.coordinator_hosts(problem + 1))
        other_spec = RunSpec(
            **{
                **spec.__dict__,
                "problem_id": problem + 1,
                "num_selectors": 1,
                "selector_ports": free_ports(1),
                "coordinator_tls_cert_pem": other_cert,
                "coordinator_tls_key_pem": other_key,
            }
        )
        other.start(other_spec)
        address = _address_on(client, coordinator, f"{docker_prefix}-p{problem}")
        ours = _fingerprint(coordinator_cert)
        for name in selectors:
            ((seen, why),) = _reach(cluster, placed[name], name, [(coordinator, 9091)])
            assert seen == ours, f"{name} on {placed[name]} does not reach its coordinator: {why}"
        stranger = f"{docker_prefix}-p{problem + 1}-selector-0"
        where = other.nodes(problem + 1)[stranger]
        probed = _reach(cluster, where, stranger, [(coordinator, 9091), (address, 9091)])
        print(f"[multinode] {stranger} on {where} probing problem {problem}'s coordinator: {probed}")
        assert "gaierror" in probed[0][1], probed
        assert probed[1][0] != ours, f"{stranger} on {where} reached problem {problem}'s coordinator at {address}"
        other.stop(problem + 1)

        demo = make_breast_cancer(tmp_path / "demo", 2, seed=0)
        readable(tmp_path)
        contract = json.loads((demo / "contract.json").read_text())
        data = [demo / "clients" / f"hospital_{i}" for i in range(2)]
        for i in range(2):
            mine, other = ports[i], ports[1 - i]
            endpoints = [f"{h}:{mine}" for h in hosts] + [f"{h}:{other}" for h in hosts]
            bundle = _bundle(
                tmp_path / f"bundle-{i}",
                problem_id=problem,
                selectors=endpoints,
                credential=f"multinode-hospital-{i}",
                ca_certificate=ca_cert,
                fab_sha256=app.sha256,
                data_contract=contract,
            )
            name = f"{docker_prefix}-multinode-client-{i}"
            line = ["docker", "run", "--rm", "--name", name, "--label", f"fedota.install={docker_prefix}"]
            line += ["--network", "host", "--read-only", "--tmpfs", "/tmp"]
            line += ["-v", f"{data[i]}:/data:ro", "-v", f"{bundle}:/join.json:ro", "fedota/client:latest"]
            log = (tmp_path / f"client-{i}.log").open("wb")
            clients.append(subprocess.Popen(line, stdout=log, stderr=subprocess.STDOUT))

        def client_logs() -> str:
            return "\n".join((tmp_path / f"client-{i}.log").read_text(errors="replace")[-1500:] for i in range(2))

        _until(lambda: _last_round(client, coordinator) >= 3, 180, client_logs)

        # The node of a selector is lost: its engine's container is removed.
        lost = next(node for name, node in placed.items() if name in selectors and node in cluster["nodes"])
        moved = [name for name, node in placed.items() if node == lost]
        lost_at = _last_round(client, coordinator)
        started = time.monotonic()
        subprocess.run(["docker", "rm", "-f", "-v", lost], capture_output=True, timeout=120)

        def rescheduled() -> bool:
            now = spawner.nodes(problem)
            states = {f"{docker_prefix}-p{problem}-{s.role}-{s.index}": s for s in spawner.status(problem)}
            return all(now.get(name) not in (None, lost) and states[name].health == "healthy" for name in moved)

        _until(rescheduled, 120, lambda: (spawner.nodes(problem), spawner.status(problem)))
        print(
            f"[multinode] {moved} rescheduled from {lost} in {time.monotonic() - started:.1f} s: {spawner.nodes(problem)}"
        )
        # Training goes on through the rescheduled selector's new node.
        _until(lambda: _last_round(client, coordinator) >= lost_at + 5, 180, client_logs)
        for folder in data:
            (folder / ".no-delay").touch()
        for proc in clients:
            assert proc.wait(timeout=180) == 0, client_logs()
        rounds = _rounds(client, coordinator)
        done = sorted({int(r["round"]) for r in rounds})
        assert done == list(range(1, ROUNDS + 1)), done
        # At most one round without both clients' results around the loss.
        short = [r["round"] for r in rounds if len(r.get("participants") or []) < 2]
        print(f"[multinode] node lost after round {lost_at}; rounds with fewer than 2 participants: {short}")
        assert len(short) <= 1, short
    finally:
        for i, proc in enumerate(clients):
            if proc.poll() is None:
                subprocess.run(["docker", "rm", "-f", f"{docker_prefix}-multinode-client-{i}"], capture_output=True)
                proc.wait(timeout=30)
        spawner.stop(problem)
        spawner.stop(problem + 1)
    _nothing_left(client, docker_prefix, problem)
    _nothing_left(client, docker_prefix, problem + 1)
