"""What a data holder reads when the client cannot reach any selector (client_image/reach.py).

The detail strings are grpc 1.7x's own, captured from real failed calls.
"""

from __future__ import annotations

import grpc
import pytest

from client_image import reach
from client_image.reach import Attempts, classify

REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:52537: "
    "Failed to connect to remote host: Connection refused"
)
NO_NAME = (
    "errors resolving no-such-host.invalid:17000: [field:hostname lookup error:address lookup failed for "
    "no-such-host.invalid:17000: Domain name not found]"
)
TLS_NAME = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:45383: Custom verification check "
    "failed with error: UNAUTHENTICATED: Hostname Verification Check failed."
)
WRONG_CA = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:45383: Tls handshake failed "
    "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
    "unable to get local issuer certificate: OK"
)


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        (grpc.StatusCode.UNAVAILABLE, REFUSED, reach.REFUSED),
        (grpc.StatusCode.UNAVAILABLE, NO_NAME, reach.NO_NAME),
        (grpc.StatusCode.UNAVAILABLE, TLS_NAME, reach.TLS_NAME),
        (grpc.StatusCode.UNAVAILABLE, WRONG_CA, reach.CERTIFICATE),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", reach.TIMED_OUT),
        (grpc.StatusCode.UNAVAILABLE, "... connect: No route to host (113)", reach.NO_ROUTE),
        (grpc.StatusCode.UNAVAILABLE, "something new", reach.OTHER),
    ],
)
def test_classify_names_the_cause(code: grpc.StatusCode, details: str, kind: str) -> None:
    assert classify(code, details) == kind


def test_report_lists_every_address_with_its_failure_and_what_to_check() -> None:
    attempts = Attempts(["172.17.0.1:17008", "fl.example.org:17009", "10.1.2.3:17010"])
    assert attempts.record("172.17.0.1:17008", grpc.StatusCode.UNAVAILABLE, REFUSED) == (reach.REFUSED, True)
    assert attempts.record("172.17.0.1:17008", grpc.StatusCode.UNAVAILABLE, REFUSED) == (reach.REFUSED, False)
    attempts.record("fl.example.org:17009", grpc.StatusCode.UNAVAILABLE, TLS_NAME)
    text = attempts.report(120)
    assert text.startswith("could not reach a selector within 120 s")
    assert f"172.17.0.1:17008: connection refused ({REFUSED})" in text
    assert "fl.example.org:17009: TLS name mismatch" in text
    assert "10.1.2.3:17010: not tried" in text
    assert "Is a run of the problem going on" in text
    assert "FEDOTA_SELECTOR_HOST" in text  # what the operator must set for a name mismatch
    assert "a firewall" not in text  # no hint for a failure that did not happen


def test_report_for_a_local_only_platform_and_a_loopback_address_in_a_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reach, "in_container", lambda: True)
    attempts = Attempts(["127.0.0.1:17008"], local_only=True)
    attempts.record("127.0.0.1:17008", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    text = attempts.report(30)
    assert "127.0.0.1 inside a container is the container itself" in text
    assert "for its own machine only" in text
    assert "a firewall" in text
