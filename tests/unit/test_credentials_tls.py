"""Per-problem CA and TLS on both links, participant lists at the selector, and the coordinator's roster poller."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client_image.main import Settings as ClientSettings
from client_image.main import _trust
from client_image.runner import ClientError
from coordinator import main as coordinator_main
from coordinator.hub import Hub
from coordinator.main import Settings as CoordinatorSettings
from coordinator.report import Target
from coordinator.roster import RosterError, RosterPoller, parse_roster
from coordinator.servicer import CoordinatorServicer
from fedota_common.fab import App
from fedota_common.grpcutil import add_health, bind, channel, check_health, make_server
from fedota_common.pki import issue_server_cert, make_ca
from fedota_common.settings import SettingsError
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.coordinator.v1 import coordinator_pb2_grpc
from selector.auth import RosterAuthenticator
from selector.core import SelectorCore, SelectorError
from selector.main import Settings as SelectorSettings
from selector.upstream import CoordinatorLink


def _credential(participant: int, secret: str = "s3cret") -> tuple[str, str]:
    credential = f"fdp_{participant}_{secret}"
    return credential, hashlib.sha256(credential.encode()).hexdigest()


def _roster(*pairs: tuple[int, str]) -> cpb.Participants:
    return cpb.Participants(allowed=[cpb.AllowedParticipant(participant=str(p), credential_sha256=d) for p, d in pairs])


# ---- certificates and TLS ------------------------------------------------------------------------


def test_server_certificate_is_signed_by_the_problem_ca_for_the_dialled_host() -> None:
    ca_cert, ca_key = make_ca("Fedota problem 7")
    cert_pem, _ = issue_server_cert(ca_cert, ca_key, ["203.0.113.5", "fl.example.org"])
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_cert.encode())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["203.0.113.5"]
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    other_ca, _ = make_ca("Fedota problem 8")
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other_ca.encode()))


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[str, str, str]]:
    """A gRPC server (health only) serving TLS with a problem CA's certificate for 127.0.0.1."""
    ca_cert, ca_key = make_ca("Fedota problem 1")
    cert, key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1"])
    server = make_server(4)
    add_health(server)
    address = bind(server, "127.0.0.1:0", (cert.encode(), key.encode()))
    assert address is not None
    server.start()
    yield address, ca_cert, make_ca("Fedota problem 2")[0]
    server.stop(0)


def _serving(ch: grpc.Channel) -> bool:
    try:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_only_a_client_trusting_the_problem_ca_gets_through(tls_server: tuple[str, str, str]) -> None:
    address, ca_cert, other_ca = tls_server
    with channel(address, ca_cert.encode()) as ch:
        assert _serving(ch)
    with channel(address, other_ca.encode()) as ch:
        assert not _serving(ch), "a certificate from another problem's CA was accepted"
    with channel(address) as ch:
        assert not _serving(ch), "plaintext reached a TLS port"


# What a selector needs besides its own certificate: the CA its coordinator's must chain to, and the token.
_UPSTREAM = {"FEDOTA_COORDINATOR_CA": "-----BEGIN CA", "FEDOTA_SELECTOR_TOKEN": "t0ken"}


def test_a_selector_will_not_serve_plaintext_unless_told(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--tls-cert and --tls-key.*--insecure"):
        SelectorSettings.from_env(_UPSTREAM, ["--coordinator", "c:1"])
    insecure = SelectorSettings.from_env({}, ["--coordinator", "c:1", "--insecure"])
    assert insecure.insecure and insecure.tls() is None and insecure.coordinator_trust() is None
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    from_files = SelectorSettings.from_env(
        {"FEDOTA_TLS_CERT": str(cert), "FEDOTA_TLS_KEY": str(key), **_UPSTREAM}, ["--coordinator", "c:1"]
    )
    assert from_files.tls() == (cert.read_bytes(), key.read_bytes())
    inline = SelectorSettings.from_env(
        {"FEDOTA_TLS_CERT": "-----BEGIN X", "FEDOTA_TLS_KEY": "-----BEGIN Y", **_UPSTREAM}, ["--coordinator", "c:1"]
    )
    assert inline.tls() == (b"-----BEGIN X", b"-----BEGIN Y")
    assert inline.coordinator_trust() == b"-----BEGIN CA"


def test_a_selector_will_not_dial_its_coordinator_in_plaintext_or_without_a_token_unless_told() -> None:
    own = {"FEDOTA_TLS_CERT": "-----BEGIN X", "FEDOTA_TLS_KEY": "-----BEGIN Y"}
    with pytest.raises(SettingsError) as err:
        SelectorSettings.from_env(own, ["--coordinator", "c:1"])
    assert "--coordinator-ca (FEDOTA_COORDINATOR_CA), or --insecure" in str(err.value)
    assert "--selector-token (FEDOTA_SELECTOR_TOKEN), or --insecure" in str(err.value)
    with pytest.raises(SettingsError, match="--selector-token"):
        SelectorSettings.from_env({**own, "FEDOTA_COORDINATOR_CA": "-----BEGIN CA"}, ["--coordinator", "c:1"])


def test_a_coordinator_will_not_serve_plaintext_or_admit_tokenless_selectors_unless_told(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("FEDOTA_TLS_CERT", "FEDOTA_TLS_KEY", "FEDOTA_INSECURE", "FEDOTA_SELECTOR_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert coordinator_main.main(["--app", "apps/tabular", "--selector-token", "t0ken"]) == 2
    err = capsys.readouterr().err
    assert "the coordinator serves selectors over TLS" in err
    assert "give --tls-cert and --tls-key (FEDOTA_TLS_CERT / FEDOTA_TLS_KEY), or --insecure" in err

    cert = {"FEDOTA_APP": "a", "FEDOTA_TLS_CERT": "-----BEGIN X", "FEDOTA_TLS_KEY": "-----BEGIN Y"}
    with pytest.raises(SettingsError, match=r"--selector-token \(FEDOTA_SELECTOR_TOKEN\), or --insecure"):
        CoordinatorSettings.from_env(cert, [])
    assert CoordinatorSettings.from_env({**cert, "FEDOTA_SELECTOR_TOKEN": "t0ken"}, []).tls() == (
        b"-----BEGIN X",
        b"-----BEGIN Y",
    )

    # --insecure is allowed, and said out loud on every start (here one that then fails on its app).
    insecure = CoordinatorSettings.from_env({"FEDOTA_APP": str(tmp_path / "no-app")}, ["--insecure"])
    assert insecure.tls() is None and insecure.selector_token == ""
    assert coordinator_main.run(replace(insecure, state_dir=tmp_path / "state")) == 2
    assert "warning: INSECURE: selectors connect over plaintext gRPC and need no token" in capsys.readouterr().err


# ---- selectors and their coordinator over TLS ----------------------------------------------------


TOKEN = "run-token"


@pytest.fixture(scope="module")
def tls_coordinator() -> Iterator[tuple[str, Hub, str, str]]:
    """A coordinator's gRPC service on TLS, its certificate issued by a problem CA for 127.0.0.1.

    Yields (address, hub, that CA, another problem's CA).
    """
    ca_cert, ca_key = make_ca("Fedota problem 1")
    cert, key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1"])
    app = App(b"fab", hashlib.sha256(b"fab").hexdigest(), "a:app", "a:app", {}, "app", "1.0.0")
    hub = Hub()
    server = make_server(8)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(hub, app, 1, "{}", TOKEN), server)
    add_health(server)
    address = bind(server, "127.0.0.1:0", (cert.encode(), key.encode()))
    assert address is not None
    server.start()
    yield address, hub, ca_cert, make_ca("Fedota problem 2")[0]
    server.stop(0)


def _link(address: str, selector_id: str, token: str, ca: str | None) -> CoordinatorLink:
    core = SelectorCore(selector_id, RosterAuthenticator())
    link = CoordinatorLink(core, address, token, ca.encode() if ca is not None else None)
    core.upstream = link
    link.start()
    return link


def _errors(caplog: pytest.LogCaptureFixture, message: str, within: float = 10.0) -> list[logging.LogRecord]:
    end = time.monotonic() + within
    while time.monotonic() < end:
        found = [r for r in caplog.records if r.levelno >= logging.ERROR and r.getMessage() == message]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_a_selector_with_the_problem_ca_and_the_token_attaches_over_tls(
    tls_coordinator: tuple[str, Hub, str, str],
) -> None:
    address, hub, ca, _ = tls_coordinator
    link = _link(address, "sel-good", TOKEN, ca)
    try:
        assert link.connected.wait(10), "the selector did not attach over TLS"
        assert link.core.run is not None and link.core.run.fab_sha256 == hashlib.sha256(b"fab").hexdigest()
        assert "sel-good" in hub.selectors
        assert link.fetch_fab() == b"fab"
    finally:
        link.stop()
    assert not check_health(address, timeout=2), "plaintext reached the coordinator's TLS port"


def test_a_selector_trusting_another_problems_ca_is_refused_and_says_why(
    tls_coordinator: tuple[str, Hub, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    address, hub, _, other_ca = tls_coordinator
    link = _link(address, "sel-other-ca", TOKEN, other_ca)
    try:
        (record, *_) = _errors(caplog, "TLS to the coordinator failed; retrying")
        assert "not signed by the CA this selector trusts" in record.reason  # type: ignore[attr-defined]
        assert not link.connected.is_set() and "sel-other-ca" not in hub.selectors
        # It keeps retrying (0.2, 0.4, 0.8, 1.6 s apart) without repeating the error each time.
        time.sleep(3.5)
        assert len(_errors(caplog, "TLS to the coordinator failed; retrying")) == 1
    finally:
        link.stop()


def test_a_plaintext_selector_cannot_reach_a_tls_coordinator(tls_coordinator: tuple[str, Hub, str, str]) -> None:
    address, hub, _, _ = tls_coordinator
    link = _link(address, "sel-plain", TOKEN, None)
    try:
        assert not link.connected.wait(3), "a plaintext selector attached to a TLS coordinator"
        assert "sel-plain" not in hub.selectors
    finally:
        link.stop()


def test_a_selector_with_the_wrong_token_is_refused_even_over_tls(
    tls_coordinator: tuple[str, Hub, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    address, hub, ca, _ = tls_coordinator
    link = _link(address, "sel-bad-token", "not-the-token", ca)
    try:
        assert _errors(caplog, "coordinator refused this selector's token")
        assert not link.connected.is_set() and "sel-bad-token" not in hub.selectors
    finally:
        link.stop()


def test_a_client_without_the_problem_ca_refuses_to_connect(capsys: pytest.CaptureFixture[str]) -> None:
    settings = ClientSettings.from_env({}, ["--selector", "h:1"])
    with pytest.raises(ClientError, match="join bundle has no CA certificate"):
        _trust(settings, {"selectors": ["h:1"]})
    assert _trust(settings, {"ca_certificate": "-----BEGIN CERTIFICATE-----\nx"}) == b"-----BEGIN CERTIFICATE-----\nx"
    assert _trust(ClientSettings.from_env({}, ["--insecure"]), {}) is None
    assert "INSECURE" in capsys.readouterr().err


# ---- the selector's participant list -------------------------------------------------------------


def test_no_list_yet_means_retry_later() -> None:
    auth = RosterAuthenticator()
    with pytest.raises(SelectorError) as err:
        auth.check(_credential(1)[0])
    assert err.value.code == "UNAVAILABLE"


def test_only_the_listed_credential_of_a_participant_is_admitted() -> None:
    auth = RosterAuthenticator()
    good, digest = _credential(1)
    auth.update(_roster((1, digest)))
    assert auth.check(good) == "1"
    assert auth.check("fdp_1_wrong-secret") is None
    assert auth.check(_credential(2)[0]) is None  # another problem's participant, or nobody
    assert auth.check("garbage") is None
    assert auth.refused == 3


def test_an_update_withdraws_revoked_and_replaced_credentials() -> None:
    auth = RosterAuthenticator()
    one, d1 = _credential(1)
    _, d2 = _credential(2)
    _, d3 = _credential(3)
    assert auth.update(_roster((1, d1), (2, d2), (3, d3))) == set()
    _, d2_new = _credential(2, "rotated")
    # 1 revoked (gone), 2 downloaded a new bundle (hash changed), 3 unchanged.
    assert auth.update(_roster((2, d2_new), (3, d3))) == {"1", "2"}
    assert not auth.admits("1") and auth.admits("2") and auth.admits("3")
    assert auth.check(one) is None


def test_an_open_list_admits_anyone() -> None:
    auth = RosterAuthenticator()
    auth.update(cpb.Participants(open=True))
    assert auth.check("fdp_9_x") == "9" and auth.check("anything") == ""


def test_an_unknown_credential_asks_for_a_fresh_list_once() -> None:
    fresh, digest = _credential(5)
    asked = []
    auth = RosterAuthenticator(refresh_wait=2.0)

    def refresh() -> None:
        asked.append(1)
        # The coordinator answers from another thread, as over the Attach stream.
        threading.Timer(0.1, lambda: auth.update(_roster((5, digest)))).start()

    auth.refresh = refresh
    auth.update(_roster())
    assert auth.check(fresh) == "5" and asked == [1]
    auth.refresh = lambda: None
    auth.refresh_wait = 0.1
    assert auth.check("fdp_6_nope") is None


def test_a_source_guessing_credentials_is_throttled() -> None:
    auth = RosterAuthenticator(max_failures=3, window=60)
    good, digest = _credential(1)
    auth.update(_roster((1, digest)))
    for _ in range(3):
        assert auth.check("fdp_1_guess", "ipv4:10.0.0.9") is None
    with pytest.raises(SelectorError) as err:
        auth.check(good, "ipv4:10.0.0.9")
    assert err.value.code == "RESOURCE_EXHAUSTED" and "too many refused credentials" in str(err.value)
    assert auth.check(good, "ipv4:10.0.0.10") == "1"  # other sources are unaffected


# ---- the coordinator's side ------------------------------------------------------------------------


def test_roster_documents_are_checked() -> None:
    digest = "a" * 64
    assert parse_roster({"participants": [{"participant": "4", "credential_sha256": digest}]}) == _roster((4, digest))
    for bad in (
        [],
        {"participants": {}},
        {"participants": [{"participant": 4, "credential_sha256": digest}]},
        {"participants": [{"participant": "4", "credential_sha256": "xyz"}]},
    ):
        with pytest.raises(RosterError):
            parse_roster(bad)


def test_the_hub_hands_the_list_to_every_selector_and_to_late_ones() -> None:
    hub = Hub()
    early = hub.attach("s1", [])
    _, digest = _credential(1)
    assert hub.set_participants(_roster((1, digest)))
    assert not hub.set_participants(_roster((1, digest)))  # unchanged: nothing sent
    assert early.outbox.get_nowait().participants == _roster((1, digest))
    late = hub.attach("s2", [])
    assert late.outbox.get_nowait().participants == _roster((1, digest))
    # A selector that asked waits for an answer, so an unchanged list is sent again.
    assert not hub.set_participants(_roster((1, digest)), resend=True)
    assert early.outbox.get_nowait().participants == _roster((1, digest))


class _Website(http.server.BaseHTTPRequestHandler):
    doc: Any = {"participants": []}
    token = "service-token"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        ok = self.path == "/internal/v1/runs/1/participants" and self.headers["Authorization"] == f"Bearer {self.token}"
        body = json.dumps(self.doc if ok else {"detail": "no"}).encode()
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_poller_keeps_the_last_list_while_the_website_is_down() -> None:
    _, digest = _credential(3)
    _Website.doc = {"participants": [{"participant": "3", "credential_sha256": digest}]}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Website)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/internal/v1/runs/1/"
    hub = Hub()
    poller = RosterPoller(Target(url, "service-token"), hub)
    assert poller.poll_once() and hub.participants == _roster((3, digest))
    assert not RosterPoller(Target(url, "wrong"), Hub()).poll_once()
    server.shutdown()
    server.server_close()
    assert not poller.poll_once()
    assert hub.participants == _roster((3, digest)), "the last list must stay in force"
