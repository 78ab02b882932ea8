"""Where data holders' clients dial the selectors, and the Docker host gateway it may fall back on.

A selector address that is loopback on the server reaches nothing from a data holder's
client container: inside a container 127.0.0.1 is the container itself. So the address
the join bundles carry is chosen in this order (see docs/joining.md):

1. `FEDOTA_SELECTOR_HOST`, unless it is a loopback address (an operator's public name or IP,
   or several, comma-separated: see selector_hosts);
2. the host of `FEDOTA_PUBLIC_URL` when `FEDOTA_SELECTOR_HOST` is unset, unless it is
   loopback: the name data holders already reach the website at is this server's (a
   loopback `FEDOTA_SELECTOR_HOST` means this machine only, so step 3);
3. this machine only: the Docker host gateway (docker0's address, 172.17.0.1 by
   default), which both a client container on this host (its default route) and a
   client process on this host (a local address) reach;
4. 127.0.0.1 when this machine has no Docker bridge (then no client container can run here either).

The gateway is read from the engine's bridge network (IPAM) when it lists one; Debian's
docker.io 20.10 started as a plain `dockerd` lists only the subnet, so then from the
bridge interface itself, from `host.docker.internal` in /etc/hosts (what a compose
service with `extra_hosts: host.docker.internal:host-gateway` sees), or as docker's
default, the subnet's first address.

`python -m webserver.spawner.addresses` prints the gateway (scripts/start.sh uses it).
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import socket
import struct
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fedota_common.hosts import is_loopback

BRIDGE_INTERFACE = "docker0"
HOST_GATEWAY_NAME = "host.docker.internal"
_SIOCGIFADDR = 0x8915


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of network interface `name` on this machine, or None (absent, no address, not Linux)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


def hosts_file_address(name: str, hosts_file: Path = Path("/etc/hosts")) -> str | None:
    """The IPv4 address /etc/hosts gives `name` (no DNS query: a missing name must not hang)."""
    try:
        lines = hosts_file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[1:]:
            try:
                if ipaddress.ip_address(fields[0]).version == 4:
                    return fields[0]
            except ValueError:
                continue
    return None


def bridge_gateway(network_attrs: dict[str, Any]) -> str | None:
    """The gateway of a Docker network from its inspect document: IPAM's, else its interface's.

    IPAM may list only the subnet (docker.io 20.10 as a plain dockerd); the bridge
    interface then carries the address, and failing that docker's default is the
    subnet's first address.
    """
    configs = (network_attrs.get("IPAM") or {}).get("Config") or []
    for config in configs:
        gateway = str(config.get("Gateway") or "").split("/")[0]
        if gateway and ":" not in gateway:
            return gateway
    interface = (network_attrs.get("Options") or {}).get("com.docker.network.bridge.name") or ""
    found = interface_ipv4(interface) if interface else None
    if found:
        return found
    for config in configs:
        try:
            subnet = ipaddress.ip_network(str(config.get("Subnet") or ""), strict=False)
        except ValueError:
            continue
        if subnet.version == 4 and subnet.num_addresses > 2:
            return str(subnet.network_address + 1)
    return None


def _engine_bridge_gateway(client: Any = None) -> str | None:
    try:
        import docker  # type: ignore[import-untyped]

        engine = client or docker.from_env(timeout=5)
        return bridge_gateway(engine.networks.get("bridge").attrs)
    except Exception:  # noqa: BLE001 - no engine, no socket, no bridge: no gateway from the engine
        return None


@functools.cache
def host_gateway() -> str | None:
    """The address this machine's Docker containers reach the host at, or None without Docker.

    Cached for the process: it changes only when the engine is reconfigured.
    """
    return interface_ipv4(BRIDGE_INTERFACE) or hosts_file_address(HOST_GATEWAY_NAME) or _engine_bridge_gateway() or None


def selector_hosts() -> list[str]:
    """Every host data holders' clients may dial the selectors at (join bundles, the selectors' certificates).

    `FEDOTA_SELECTOR_HOST` may name several, comma-separated: the machines a selector may
    run on when its port opens only on its own machine (a swarm's nodes with host-mode
    ports). A bundle lists each selector port at each of them and the client tries them
    in turn. Its loopback names are dropped (they mean this machine only, as below).
    """
    from django.conf import settings

    configured = [host.strip() for host in str(settings.FEDOTA_SELECTOR_HOST or "").split(",") if host.strip()]
    reachable = [host for host in configured if not is_loopback(host)]
    if reachable:
        return reachable
    public = urlsplit(settings.FEDOTA_PUBLIC_URL).hostname or ""
    if not configured and public and not is_loopback(public):
        return [public]
    return [host_gateway() or "127.0.0.1"]


def selector_host() -> str:
    """The first of selector_hosts(): the address a selector's service row shows."""
    return selector_hosts()[0]


def selector_host_is_local(host: str) -> bool:
    """Does `host` reach this machine only (loopback or the Docker host gateway)?"""
    return is_loopback(host) or host == host_gateway()


def main() -> int:
    gateway = host_gateway()
    if gateway is None:
        print(
            f"error: no Docker host gateway found: no {BRIDGE_INTERFACE} interface, no {HOST_GATEWAY_NAME} in "
            "/etc/hosts and no engine answering with a bridge network. Start the engine (scripts/docker-engine.sh).",
            file=sys.stderr,
        )
        return 1
    print(gateway)
    return 0


if __name__ == "__main__":
    sys.exit(main())
