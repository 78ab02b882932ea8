"""A swarm of several engines on this one machine: this engine as manager, the others in containers.

The workers are engines in containers of the project's Debian base image with Debian's
docker.io, joined to this engine's swarm (advertised on its `docker0` address) and given
images by `docker save | docker load`. They run with every capability the host has, not
`--privileged` (the host itself lacks CAP_SYS_RESOURCE, which --privileged asks for), and
with the host's cgroup hierarchy mounted read-write under a cgroup parent of their own.
Used by tests/docker/test_swarm_multinode.py and bench/spawn.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from webserver.spawner.addresses import interface_ipv4

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


class ClusterUnavailable(Exception):
    """This machine cannot make the swarm (no docker0 address, another swarm, no base image)."""


def _docker(*args: str, stdin: bytes | None = None, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], input=stdin, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode().strip()


def _node_exec(node: str, *args: str, timeout: float = 120) -> str:
    return _docker("exec", node, "docker", *args, timeout=timeout)


@contextmanager
def swarm_cluster(
    client: Any, prefix: str, workers: int = 2, images: tuple[str, ...] = ("fedota/selector:latest",)
) -> Iterator[dict[str, Any]]:
    """This engine (the manager, made one if it is in no swarm) and `workers` engines in containers.

    Yields {"client", "nodes": the workers' names (= hostnames), "addresses": each worker's
    address, "gateway": the manager's}. Everything made goes at the end; the swarm is left
    only if it was made here.
    """
    gateway = interface_ipv4("docker0")
    if not gateway:
        raise ClusterUnavailable("no docker0 address for the swarm's manager to advertise")
    swarm = client.info()["Swarm"]
    made = False
    if swarm.get("LocalNodeState") != "active":
        _docker("swarm", "init", "--advertise-addr", gateway)
        made = True
    elif swarm.get("NodeAddr") != gateway or not swarm.get("ControlAvailable"):
        raise ClusterUnavailable(
            f"the engine is in a swarm advertised on {swarm.get('NodeAddr')}; workers need {gateway}"
        )
    present = {tag for image in client.images.list() for tag in image.tags}
    base = next((image for image in BASE_IMAGES if image in present), None)
    if base is None:
        raise ClusterUnavailable(f"no Debian base image ({' or '.join(BASE_IMAGES)}; scripts/build-base-image.sh)")
    # Debian's docker.io from its mirror (the first build needs it; later ones come from the cache).
    dockerfile = NODE_DOCKERFILE.format(base=base).encode()
    _docker("build", "--network", "host", "-t", NODE_IMAGE, "-", stdin=dockerfile, timeout=600)
    token = _docker("swarm", "join-token", "-q", "worker")
    names = [f"{prefix}-node-{i}" for i in range(workers)]
    try:

        def start(name: str) -> None:
            caps = [arg for cap in CAPS for arg in ("--cap-add", cap)]
            _docker(
                "run", "-d", "--name", name, "--hostname", name, "--label", f"fedota.install={prefix}",
                *caps, "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
                "--security-opt", "systempaths=unconfined", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                NODE_IMAGE, f"--cgroup-parent=/{name}",
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while subprocess.run(["docker", "exec", name, "docker", "info"], capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the engine in {name} did not answer within 60 s")
                time.sleep(0.5)
            _node_exec(name, "swarm", "join", "--token", token, f"{gateway}:2377")
            for image in images:
                saved = subprocess.run(["docker", "save", image], capture_output=True, check=True).stdout
                _docker("exec", "-i", name, "docker", "load", stdin=saved, timeout=300)

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(start, names))
        addresses = {name: _docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name) for name in names}
        yield {"client": client, "nodes": names, "addresses": addresses, "gateway": gateway}
    finally:
        for name in names:
            subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=120)
            remove_cgroups(name)
        ids = _docker("node", "ls", "-q", "--filter", "role=worker").split()
        for node_id in ids:
            hostname = _docker("node", "inspect", "-f", "{{.Description.Hostname}}", node_id)
            if hostname in names:
                subprocess.run(["docker", "node", "rm", "--force", node_id], capture_output=True, timeout=60)
        if made:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=60)


def remove_cgroups(name: str) -> None:
    """The (empty) cgroups a node's engine made under its cgroup parent, in every hierarchy."""
    for root in [*Path("/sys/fs/cgroup").glob(f"*/{name}"), Path("/sys/fs/cgroup") / name]:
        for folder, _dirs, _files in sorted(os.walk(root, topdown=False), key=lambda w: -len(w[0])):
            try:
                os.rmdir(folder)
            except OSError:
                pass
