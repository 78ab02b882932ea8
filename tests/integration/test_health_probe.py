"""The health probes the Docker spawner and the images' HEALTHCHECK run inside a container.

Both are one-line Pythons that import grpc and grpc_health only (not fedota_common, which
loads numpy and Flower). They must ask the question `check_health` asks: exit 0 when the
server answers SERVING, non-zero when it answers anything else or nothing listens.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health, health_pb2

from fedota_common.grpcutil import add_health, bind, check_health, make_server
from tests.ports import free_port
from webserver.spawner.docker import PROBE

REPO = Path(__file__).resolve().parents[2]


def _healthcheck(dockerfile: str) -> list[str]:
    """The exec-form command of a Dockerfile's HEALTHCHECK."""
    text = (REPO / dockerfile).read_text()
    match = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", text, re.MULTILINE)
    assert match, f"{dockerfile} has no exec-form HEALTHCHECK"
    command: list[str] = json.loads(match.group(1))
    return command


@pytest.fixture
def served() -> Iterator[tuple[int, health.HealthServicer]]:
    """A plaintext gRPC health service on loopback: (its port, its servicer)."""
    server = make_server(4)
    servicer = add_health(server, "protos.selector.v1.Selector")
    address = bind(server, "127.0.0.1:0")
    assert address is not None
    server.start()
    yield int(address.rsplit(":", 1)[1]), servicer
    server.stop(grace=None)


def _spawner_probe(port: int) -> int:
    return subprocess.run([sys.executable, "-c", PROBE.format(port=port)], capture_output=True).returncode


def _image_probe(dockerfile: str, port: int) -> int:
    command = _healthcheck(dockerfile)
    assert command[0] == "python"
    env = {**os.environ, "FEDOTA_HEALTH_LISTEN": f"127.0.0.1:{port}"}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True).returncode


DOCKERFILES = ["coordinator/Dockerfile", "selector/Dockerfile"]


def test_the_probes_pass_a_serving_server(served: tuple[int, health.HealthServicer]) -> None:
    port, _ = served
    assert check_health(f"127.0.0.1:{port}")
    assert _spawner_probe(port) == 0
    assert [_image_probe(f, port) for f in DOCKERFILES] == [0, 0]


def test_the_probes_fail_a_server_not_serving(served: tuple[int, health.HealthServicer]) -> None:
    port, servicer = served
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert not check_health(f"127.0.0.1:{port}")
    assert _spawner_probe(port) != 0
    assert all(_image_probe(f, port) != 0 for f in DOCKERFILES)


def test_the_probes_fail_when_nothing_listens() -> None:
    port = free_port()
    assert not check_health(f"127.0.0.1:{port}", timeout=1.0)
    assert _spawner_probe(port) != 0
    assert all(_image_probe(f, port) != 0 for f in DOCKERFILES)


def test_the_probes_import_neither_numpy_nor_flower() -> None:
    # What made them slow: fedota_common.grpcutil imports numpy and Flower.
    code = (
        "import sys\n"
        "try:\n    exec(compile(sys.stdin.read(), 'probe', 'exec'))\nexcept BaseException:\n    pass\n"
        "print(' '.join(m for m in ('numpy', 'flwr', 'fedota_common') if m in sys.modules))"
    )
    for probe in [PROBE.format(port=free_port())] + [_healthcheck(f)[2] for f in DOCKERFILES]:
        out = subprocess.run([sys.executable, "-c", code], input=probe, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "", f"the probe loaded {out.stdout.strip()}"
