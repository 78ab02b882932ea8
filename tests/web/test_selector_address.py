"""The address join bundles announce for the selectors: one a data holder's client can actually dial.

A loopback address is useless to a client container (127.0.0.1 there is the container
itself), so it is never announced while this machine has a Docker bridge; a platform
with a public name announces that.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from webserver.participation import services
from webserver.spawner import addresses
from webserver.spawner.addresses import selector_host, selector_hosts

pytestmark = [pytest.mark.web, pytest.mark.django_db]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(addresses, "host_gateway", lambda: "172.17.0.1")
    return "172.17.0.1"


@pytest.mark.parametrize(
    ("configured", "public_url", "expected"),
    [
        ("fl.example.org", "http://127.0.0.1:8000", "fl.example.org"),
        ("203.0.113.7", "https://fedota.example.org", "203.0.113.7"),
        # Unset: the name data holders reach the website at is this server's.
        ("", "https://fedota.example.org", "fedota.example.org"),
        # This machine only: the Docker host gateway, which client containers and processes here both reach.
        ("", "http://127.0.0.1:8000", "172.17.0.1"),
        ("127.0.0.1", "http://localhost:8000", "172.17.0.1"),
        ("localhost", "https://fedota.example.org", "172.17.0.1"),
    ],
)
def test_selector_host(settings: Any, gateway: str, configured: str, public_url: str, expected: str) -> None:
    settings.FEDOTA_SELECTOR_HOST = configured
    settings.FEDOTA_PUBLIC_URL = public_url
    assert selector_host() == expected


def test_without_docker_loopback_is_all_there_is(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(addresses, "host_gateway", lambda: None)
    settings.FEDOTA_SELECTOR_HOST = ""
    settings.FEDOTA_PUBLIC_URL = "http://127.0.0.1:8000"
    assert selector_host() == "127.0.0.1"


def _bundle_and_panel(users: dict[str, Any], make_problem: Callable[..., Any]) -> tuple[dict[str, Any], str]:
    problem = make_problem(users["owner"])
    participant = services.participant_request(
        problem=problem, user=users["participant"], site_name="General Hospital", contact_email="gh@example.org"
    )
    services.participant_approve(participant=participant, by=users["owner"])
    client = Client()
    client.force_login(users["participant"])
    page = client.get(reverse("problem-detail", args=[problem.pk])).content.decode()
    # As a reader sees it: no tags, entities decoded, spaces collapsed.
    page = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())
    response = client.post(reverse("participant-bundle", args=[participant.pk]))
    assert response.status_code == 200
    return json.loads(response.content), page


def test_a_local_platform_announces_the_gateway_and_says_so(
    settings: Any, gateway: str, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    settings.FEDOTA_SELECTOR_HOST = "127.0.0.1"  # what .env.example used to say
    settings.FEDOTA_PUBLIC_URL = "http://127.0.0.1:8000"
    bundle, page = _bundle_and_panel(users, make_problem)
    assert [s.rsplit(":", 1)[0] for s in bundle["selectors"]] == ["172.17.0.1"]
    assert bundle["selectors_local_only"] is True
    assert f"The client dials the problem's selectors at {bundle['selectors'][0]}" in page
    assert "for its own machine only" in page and "FEDOTA_SELECTOR_HOST" in page
    assert bundle["docker_run"] in page


def test_a_public_platform_announces_its_name(
    settings: Any, gateway: str, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    settings.FEDOTA_SELECTOR_HOST = ""
    settings.FEDOTA_PUBLIC_URL = "https://fedota.example.org"
    bundle, page = _bundle_and_panel(users, make_problem)
    assert [s.rsplit(":", 1)[0] for s in bundle["selectors"]] == ["fedota.example.org"]
    assert bundle["selectors_local_only"] is False
    assert "for its own machine only" not in page


@pytest.mark.parametrize(
    ("value", "wrong"),
    [
        ("https://fl.example.org", "https://fl.example.org"),
        ("fl.example.org:17000", "fl.example.org:17000"),
        ("fl.example.org/x", "fl.example.org/x"),
        ("a b", "a b"),
        ("node-1.example.org, node-2.example.org:17000", "node-2.example.org:17000"),
    ],
)
def test_a_selector_host_that_is_not_a_host_is_refused_at_start(tmp_path: Any, value: str, wrong: str) -> None:
    environ = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "FEDOTA_VAR_DIR": str(tmp_path / "var"),
        "FEDOTA_SELECTOR_HOST": value,
    }
    done = subprocess.run(
        [sys.executable, "-c", "import webserver.settings"], env=environ, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode != 0
    assert f"FEDOTA_SELECTOR_HOST={value!r}: {wrong!r} must be a host name or an IP address alone" in done.stderr


def test_an_ipv6_selector_host_is_bracketed_in_endpoints(
    settings: Any, gateway: str, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    from webserver.problems.lifecycle import selector_endpoints

    settings.FEDOTA_SELECTOR_HOST = "2001:db8::7"
    problem = make_problem(users["owner"])
    assert all(e.startswith("[2001:db8::7]:") for e in selector_endpoints(problem))


def test_several_selector_hosts_list_each_selector_at_each_and_the_certificate_names_them_all(
    settings: Any, gateway: str, users: dict[str, Any], make_problem: Callable[..., Any], tmp_path: Path
) -> None:
    """A swarm's selectors publish their ports on their own node only: clients try every node."""
    from cryptography import x509

    from webserver.problems import lifecycle

    settings.FEDOTA_SELECTOR_HOST = "node-1.example.org,203.0.113.8,127.0.0.1"
    settings.FEDOTA_STATE_DIR = tmp_path / "state"
    assert selector_hosts() == ["node-1.example.org", "203.0.113.8"]  # loopback means this machine only
    assert selector_host() == "node-1.example.org"
    problem = make_problem(users["owner"])
    ports = lifecycle.problem_selector_ports(problem)
    endpoints = lifecycle.selector_endpoints(problem)
    assert endpoints == [f"{host}:{port}" for port in ports for host in ("node-1.example.org", "203.0.113.8")]
    bundle, _page = _bundle_and_panel(users, make_problem)
    assert len(bundle["selectors"]) == 2 * len(ports) and bundle["selectors_local_only"] is False
    run = lifecycle.run_start(problem=problem, user=users["owner"])
    spec = lifecycle.build_run_spec(run, service_token="s", selector_token="t")
    names = x509.load_pem_x509_certificate(spec.tls_cert_pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {str(n.value) for n in names.value} >= {"node-1.example.org", "203.0.113.8"}
