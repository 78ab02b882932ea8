"""Free loopback ports for tests that start real servers."""

from __future__ import annotations

import os
import random
import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A port p with p and p+1 both free on loopback (a problem's first two selectors).

    Below the kernel's ephemeral ports and selector_port_base()'s ranges: a test that
    kills a server and starts it again on its port must not find the port taken
    meanwhile by some outgoing connection's local end.
    """
    for _ in range(200):
        port = random.randrange(12000, 20990)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports on loopback in 12000-20990")


def selector_port_base() -> int:
    """A FEDOTA_SELECTOR_PORT_BASE for a test whose problems' selectors run as processes.

    Problem p's selectors listen on base + (p % 1000) * 8 + index (webserver/spawner).
    Random (another test run may share the machine), below the kernel's ephemeral ports
    (free_port's), and under pytest-xdist from a range of its own per worker: every
    worker's test database numbers its problems from 1, so two random bases 8 * k apart
    would put two workers' problems p and p + k on the same ports. Two thirds of a
    worker's range are headroom: up to 8000 / (12 * workers) problems (222 for three
    workers) never reach the next worker's ports.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    span = 8000 // workers
    low = 21000 + worker * span
    return random.randrange(low, low + span // 3, 8)
