"""Host names and addresses, shared by the website (what bundles announce) and the client
(why a selector address cannot be reached)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Is `host` this machine's loopback (127.0.0.0/8, ::1, localhost)?"""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
