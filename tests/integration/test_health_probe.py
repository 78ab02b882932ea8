"""The health probe the spawners and the images' HEALTHCHECK run inside a container.

`python -m fedota_common.healthprobe`, standard library only (not grpc, numpy or Flower: a
check runs every few seconds beside every service). It must ask the question `check_health`
asks: exit 0 when the server answers SERVING, non-zero when it answers anything else, does
not speak gRPC, answers nothing, or nothing listens.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health, health_pb2

from fedota_common.grpcutil import add_health, bind, check_health, make_server
from fedota_common.healthprobe import check, status_of
from tests.ports import free_port
from webserver.spawner.docker import PROBE
from webserver.spawner.kubernetes import PROBE as KUBERNETES_PROBE

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


def _run(command: list[str], env: dict[str, str] | None = None) -> int:
    """`command` as a container runs it (its `python` this interpreter, the repo on the path)."""
    assert command[0] == "python"
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *command[1:]], env=env, cwd="/", capture_output=True).returncode


def _spawner_probe(port: int) -> int:
    # The spawners' command names the images' health port; here the test server's instead.
    assert PROBE == KUBERNETES_PROBE and PROBE[-1] == "9093"
    return _run([*PROBE[:-1], str(port)])


def _image_probe(dockerfile: str, port: int) -> int:
    return _run(_healthcheck(dockerfile), {"FEDOTA_HEALTH_LISTEN": f"127.0.0.1:{port}"})


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


def test_the_probes_import_neither_grpc_nor_numpy_nor_flower() -> None:
    # What made them costly: half a CPU-second a check importing grpc, every few seconds.
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['probe', '{free_port()}']\n"
        "try:\n    runpy.run_module('fedota_common.healthprobe', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(' '.join(m for m in ('grpc', 'numpy', 'flwr') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the probe loaded {out.stdout.strip()}"


def _listener(behaviour: str) -> tuple[int, threading.Event]:
    """A loopback TCP server that is not a gRPC server: it closes at once, or says nothing."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        if behaviour == "close":
            conn.close()
        else:
            done.wait(10)
            conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], done


def test_the_probe_fails_what_is_not_a_grpc_server_and_keeps_to_its_timeout() -> None:
    port, done = _listener("close")
    assert not check(port)
    port, done = _listener("silent")
    t0 = time.monotonic()
    assert not check(port, timeout=0.5)
    assert time.monotonic() - t0 < 5
    done.set()


def test_the_response_status_is_read_from_the_protobuf_message() -> None:
    assert (
        status_of(health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString())
        == 1
    )
    assert status_of(b"") == 0  # UNKNOWN: the field's default is not sent
    assert (
        status_of(health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING).SerializeToString())
        == 2
    )
