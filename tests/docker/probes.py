"""Connection probes run inside containers: can this container open a TCP connection there?

Every Fedota image has Python, so a probe is a few lines of it run with `exec`.
"""

from __future__ import annotations

import json
from typing import Any

# [[host, port], ...] as argv[1]; prints [[connected, why], ...].
REACH = (
    "import json, socket, sys\n"
    "out = []\n"
    "for host, port in json.loads(sys.argv[1]):\n"
    "    try:\n"
    "        socket.create_connection((host, port), timeout=4).close(); out.append([True, 'connected'])\n"
    "    except OSError as exc:\n"
    "        out.append([False, f'{type(exc).__name__} {exc}'])\n"
    "print(json.dumps(out))\n"
)


def exec_python(container: Any, *argv: str) -> tuple[int, str]:
    """`python <argv>` inside the running container: (exit code, output)."""
    result = container.exec_run(["python", *argv])
    return int(result.exit_code), result.output.decode(errors="replace").strip()


def reach(container: Any, targets: list[tuple[str, int]]) -> list[tuple[bool, str]]:
    """For each (host, port): whether `container` can connect to it, and what happened."""
    code, out = exec_python(container, "-c", REACH, json.dumps(targets))
    assert code == 0, f"the probe failed in {container.name}: {out}"
    return [(bool(ok), str(why)) for ok, why in json.loads(out.splitlines()[-1])]


def ip_on(container: Any, network: str) -> str:
    """The container's address on one of its networks."""
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])
