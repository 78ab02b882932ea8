"""A client that reaches no selector says which addresses it tried, what failed and what to check.

The real client (`python -m client_image`) with a join bundle, against real sockets on
this machine: a port nothing listens on, and a real TLS server (the problem's CA, a
certificate for another name) where the selector should be. Nothing is faked: what fails
is the connection itself, as it would at a data holder's site.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedota_common.grpcutil import add_health, make_server
from fedota_common.pki import issue_server_cert, make_ca
from tests.e2e.conftest import ENV, REPO

pytestmark = pytest.mark.e2e

CA_CERT, CA_KEY = make_ca("Fedota problem 7")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def wrong_name_selector() -> Iterator[str]:
    """A TLS server with a certificate of the problem's CA, but for another host than the one dialled."""
    cert, key = issue_server_cert(CA_CERT, CA_KEY, ["fl.example.org"])
    server = make_server(4)
    add_health(server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.encode(), cert.encode())]))
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def _join(tmp_path: Path, selectors: list[str], **bundle: object) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    doc = {
        "format": "fedota-join-bundle/1",
        "problem_id": 7,
        "selectors": selectors,
        "credential": "fdp_1_x",
        "ca_certificate": CA_CERT,
        "fab_sha256": "0" * 64,
        **bundle,
    }
    path = tmp_path / "fedota-join-7.json"
    path.write_text(json.dumps(doc))
    return subprocess.run(
        [sys.executable, "-m", "client_image", "--join-bundle", str(path), "--data-path", str(data)]
        + ["--cache-dir", str(tmp_path / "cache"), "--max-join-wait", "2"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_address_tried_is_listed_with_its_failure(tmp_path: Path, wrong_name_selector: str) -> None:
    refused = f"127.0.0.1:{_closed_port()}"
    done = _join(tmp_path, [refused, wrong_name_selector])
    err = done.stderr
    assert done.returncode == 4, err
    assert f"warning: cannot reach the selector at {refused}: connection refused" in err
    assert "could not reach a selector within 2 s" in err
    assert f"  {refused}: connection refused" in err
    assert f"  {wrong_name_selector}: TLS name mismatch" in err
    assert "What to check:" in err
    assert "Is a run of the problem going on" in err
    assert "certificate does not name the address dialled" in err and "FEDOTA_SELECTOR_HOST" in err


def test_a_bundle_for_the_servers_own_machine_says_so(tmp_path: Path) -> None:
    refused = f"172.17.0.1:{_closed_port()}"
    done = _join(tmp_path, [refused], selectors_local_only=True)
    assert done.returncode == 4, done.stderr
    assert "for its own machine only" in done.stderr
    assert "set FEDOTA_SELECTOR_HOST to the server's public name" in done.stderr


def test_a_bundle_with_malformed_selectors_is_refused_clearly(tmp_path: Path) -> None:
    done = _join(tmp_path, [["127.0.0.1:1", "127.0.0.1:2"]])  # type: ignore[list-item]
    assert done.returncode == 4, done.stderr
    assert "'selectors' must be a list of host:port strings" in done.stderr
    assert "Traceback" not in done.stderr
