"""Why a selector could not be reached, in words a data holder can act on.

gRPC reports every connection failure as UNAVAILABLE (or DEADLINE_EXCEEDED) with
a detail string; the cause sits inside it. `classify` names the cause, and
`Attempts` keeps the last one per address so the final error lists every
address tried, what failed there, and what to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from fedota_common.hosts import is_loopback

REFUSED = "connection refused"
TIMED_OUT = "timed out"
NO_NAME = "name does not resolve"
NO_ROUTE = "no route to the address"
TLS_NAME = "TLS name mismatch"
CERTIFICATE = "certificate problem"
OTHER = "no connection"

_PATTERNS = (
    (TLS_NAME, ("hostname verification", "peer name", "not in peer certificate", "hostname mismatch")),
    (CERTIFICATE, ("certificate", "ssl", "tls handshake", "tsi_", "handshake failed")),
    (REFUSED, ("connection refused", "econnrefused")),
    (NO_NAME, ("dns resolution", "errors resolving", "domain name not found", "name or service not known")),
    (NO_ROUTE, ("no route to host", "network is unreachable", "host is unreachable")),
    (TIMED_OUT, ("deadline exceeded", "timed out", "timeout")),
)


def classify(code: grpc.StatusCode | None, details: str) -> str:
    """The kind of failure (one of the constants above) behind a failed call's status."""
    text = (details or "").lower()
    for kind, needles in _PATTERNS:
        if any(needle in text for needle in needles):
            return kind
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TIMED_OUT
    return OTHER


def in_container() -> bool:
    """Does this client run inside a container (Docker or Podman)?"""
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def _host(target: str) -> str:
    host = target.rsplit(":", 1)[0] if target.count(":") == 1 or target.startswith("[") else target
    return host.strip("[]")


@dataclass
class Attempts:
    """The last failure at each selector address, for the data holder's error message."""

    targets: list[str]
    local_only: bool = False
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)

    def record(self, target: str, code: grpc.StatusCode | None, details: str) -> tuple[str, bool]:
        """Note a failure at `target`: (its kind, whether this kind is new for that address)."""
        kind = classify(code, details)
        new = self.failures.get(target, ("", ""))[0] != kind
        self.failures[target] = (kind, details)
        return kind, new

    def report(self, waited: float, headline: str = "") -> str:
        """Which addresses were tried, what failed at each, and what to check."""
        first = headline or f"could not reach a selector within {waited:.0f} s"
        lines = [f"{first}. Addresses tried (from the join bundle):"]
        for target in self.targets:
            kind, details = self.failures.get(target, ("not tried", ""))
            lines.append(f"  {target}: {kind}" + (f" ({details})" if details else ""))
        lines.append("What to check:")
        lines.extend(f"  - {hint}" for hint in self.hints())
        return "\n".join(lines)

    def hints(self) -> list[str]:
        kinds = {kind for kind, _ in self.failures.values()}
        hosts = {_host(t) for t in self.targets}
        hints: list[str] = []
        if any(is_loopback(h) for h in hosts) and in_container():
            hints.append(
                "127.0.0.1 inside a container is the container itself, not the server: the server must announce "
                "an address containers can reach (its operator sets FEDOTA_SELECTOR_HOST), then download a new "
                "join bundle"
            )
        if self.local_only:
            hints.append(
                "this platform announces its selectors for its own machine only (no FEDOTA_SELECTOR_HOST or public "
                "FEDOTA_PUBLIC_URL is set on the server): from another machine they cannot be reached. Ask the "
                "platform's operator to set FEDOTA_SELECTOR_HOST to the server's public name or IP address, then "
                "download a new join bundle"
            )
        if REFUSED in kinds:
            hints.append(
                "connection refused: nothing accepts connections at that address and port. Is a run of the problem "
                "going on (the problem page shows it)? Is the address this server's? The client waits up to "
                "--max-join-wait seconds (FEDOTA_MAX_JOIN_WAIT) for a run to start"
            )
        if TIMED_OUT in kinds or NO_ROUTE in kinds:
            hints.append(
                "no answer: a firewall on the way (yours, the server's or your network's) may drop traffic to the "
                "selector ports listed above, or the address is not reachable from this machine"
            )
        if NO_NAME in kinds:
            hints.append("the name does not resolve here: check this machine's DNS (in a container, the container's)")
        if TLS_NAME in kinds:
            hints.append(
                "the selector's certificate does not name the address dialled: the server's operator must set "
                "FEDOTA_SELECTOR_HOST to the address in the join bundle (or the reverse) and start a new run; then "
                "download a new join bundle"
            )
        if CERTIFICATE in kinds:
            hints.append(
                "the selector's certificate is not signed by the problem's CA in your join bundle: download a new "
                "join bundle from the problem page (this one may come from another installation), and make sure "
                "nothing else (a proxy) answers at that address"
            )
        if not hints:
            hints.append("that the server is up and that this machine can reach it; download a new join bundle")
        return hints
