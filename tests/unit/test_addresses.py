"""The Docker host gateway, whatever the engine reports (webserver/spawner/addresses.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedota_common.hosts import is_loopback
from webserver.spawner import addresses
from webserver.spawner.addresses import bridge_gateway, hosts_file_address, interface_ipv4


def test_the_gateway_listed_by_ipam_wins() -> None:
    attrs = {"IPAM": {"Config": [{"Subnet": "10.9.0.0/16", "Gateway": "10.9.0.254"}]}, "Options": {}}
    assert bridge_gateway(attrs) == "10.9.0.254"


def test_without_an_ipam_gateway_the_bridge_interface_says(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker.io 20.10 started as a plain dockerd: IPAM lists only the subnet.
    attrs = {
        "IPAM": {"Driver": "default", "Options": None, "Config": [{"Subnet": "10.9.0.0/16"}]},
        "Options": {"com.docker.network.bridge.name": "fdtbr0"},
    }
    seen: list[str] = []

    def interface(name: str) -> str | None:
        seen.append(name)
        return "10.9.0.7"

    monkeypatch.setattr(addresses, "interface_ipv4", interface)
    assert bridge_gateway(attrs) == "10.9.0.7"
    assert seen == ["fdtbr0"]
    # No such interface here (the engine runs elsewhere): docker's default, the subnet's first address.
    monkeypatch.setattr(addresses, "interface_ipv4", lambda name: None)
    assert bridge_gateway(attrs) == "10.9.0.1"
    assert bridge_gateway({"IPAM": {"Config": []}}) is None


def test_loopback_is_any_name_for_this_machine_itself() -> None:
    for host in ("127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("172.17.0.1", "fl.example.org", "10.0.0.1", ""):
        assert not is_loopback(host), host


def test_host_docker_internal_is_read_from_the_hosts_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n# 10.0.0.9 host.docker.internal\n172.18.0.1\thost.docker.internal\n")
    assert hosts_file_address("host.docker.internal", hosts) == "172.18.0.1"
    assert hosts_file_address("other", hosts) is None
    assert hosts_file_address("host.docker.internal", tmp_path / "missing") is None


def test_the_loopback_interface_has_its_address() -> None:
    assert interface_ipv4("lo") == "127.0.0.1"
    assert interface_ipv4("no-such-interface") is None
