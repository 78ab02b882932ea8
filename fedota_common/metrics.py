"""Prometheus metrics of the coordinator and the selector, and the HTTP endpoint that serves them.

Each service builds one `CoordinatorMetrics` or `SelectorMetrics` in `main()`, with a
registry of its own (tests build as many as they like, none shares state), and serves it
with `serve()` on `--metrics-listen` (FEDOTA_METRICS_LISTEN): plain HTTP/1.1, which is what
Prometheus scrapes. The gRPC health port cannot carry it (HTTP/2, gRPC only), and the
selector's client port is public: the metrics port is a third one, off unless set, meant for
the platform's network only. docs/metrics.md lists every name.

Labels are bounded: a rejection's reason is one of `REASONS` (anything else counts as
"other"), never free text, so a hostile client cannot grow the number of series.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from fedota_common.settings import Key

# Why replies are refused, as `RejectedReply.reason` and the selector's claim checks name it.
REASONS = (
    "malformed",
    "weight",
    "dtype",
    "shape",
    "missing-array",
    "extra-array",
    "not-finite",
    "not-numeric",
    "too-large",
    "stalled",
    "bad-upload",
    "not-selected",
    "already-answered",
    "round-closed",
    "other",
)
_KNOWN = frozenset(REASONS)
# Rounds last from well under a second (a test app) to an hour (a large model on slow links).
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def reason_label(reason: str) -> str:
    """The `reason` label for a rejection: one of `REASONS`, whatever text came in."""
    return reason if reason in _KNOWN else "other"


def _registry() -> CollectorRegistry:
    """A registry with the process's own numbers (CPU, memory, start time: restarts show as its resets)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class CoordinatorMetrics:
    """What a coordinator counts: rounds, their duration, rejected replies, its selectors and clients."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else _registry()
        r = self.registry
        self.rounds = Counter("fedota_coordinator_rounds_completed", "Rounds this process completed", registry=r)
        self.round_seconds = Histogram(
            "fedota_coordinator_round_duration_seconds",
            "Seconds from a round's first instruction to its last reply",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "fedota_coordinator_replies_rejected",
            "Replies refused at the coordinator, by reason",
            ["reason"],
            registry=r,
        )
        self.clients = Gauge("fedota_coordinator_clients_connected", "Clients checked in at any selector", registry=r)
        self.selectors = Gauge("fedota_coordinator_selectors_connected", "Selectors attached", registry=r)
        self.attempt = Gauge(
            "fedota_coordinator_run_attempt",
            "This process's attempt at the run (1: first start; more: restarts)",
            registry=r,
        )
        self.received = Counter(
            "fedota_coordinator_received_bytes", "Result content bytes received from selectors", registry=r
        )
        self.sent = Counter("fedota_coordinator_sent_bytes", "Instruction content bytes sent to selectors", registry=r)
        for reason in REASONS:
            self.rejected.labels(reason)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason_label(reason)).inc()

    def round_finished(self, seconds: float) -> None:
        self.rounds.inc()
        self.round_seconds.observe(max(0.0, seconds))

    def watch(self, clients: Callable[[], float], selectors: Callable[[], float]) -> None:
        """Read the connected clients and selectors at each scrape."""
        self.clients.set_function(clients)
        self.selectors.set_function(selectors)


class SelectorMetrics:
    """What a selector counts: its clients, bytes to and from them, tasks, results and rejected replies."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else _registry()
        r = self.registry
        self.clients = Gauge("fedota_selector_clients_connected", "Clients with a live session here", registry=r)
        self.coordinator = Gauge(
            "fedota_selector_coordinator_connected", "1 while the link to the coordinator is up", registry=r
        )
        self.received = Counter(
            "fedota_selector_received_bytes", "Result content bytes received from clients (PushResult)", registry=r
        )
        self.sent = Counter(
            "fedota_selector_sent_bytes", "Instruction content bytes sent to clients (PullTask)", registry=r
        )
        self.tasks = Counter("fedota_selector_tasks", "Tasks handed to this selector's clients", registry=r)
        self.results = Counter("fedota_selector_results", "Client replies taken (folded or passed on)", registry=r)
        self.rejected = Counter(
            "fedota_selector_replies_rejected", "Replies refused at the selector, by reason", ["reason"], registry=r
        )
        for reason in REASONS:
            self.rejected.labels(reason)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason_label(reason)).inc()

    def watch(self, clients: Callable[[], float], coordinator: Callable[[], float]) -> None:
        """Read the connected clients and the coordinator link at each scrape."""
        self.clients.set_function(clients)
        self.coordinator.set_function(coordinator)


class MetricsServer:
    """The HTTP server of `serve()`: where it listens, and how to stop it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, address: str) -> None:
        self._server = server
        self._thread = thread
        self.address = address

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def serve(listen: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve `registry` at http://`listen`/metrics (port 0 picks one) in a daemon thread.

    Raises OSError when the address cannot be bound. `address` of the result is the one a
    scraper on this machine dials (a wildcard host reads 127.0.0.1).
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise OSError(f"{listen!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"
    server, thread = start_http_server(int(port), addr=host, registry=registry)
    bound = server.server_port
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    return MetricsServer(server, thread, f"{shown}:{bound}")


# The setting every service that serves metrics takes (coordinator, selector).
LISTEN = Key(
    "metrics-listen",
    str,
    "",
    "address:port serving Prometheus metrics over HTTP at /metrics, for the platform's network only, "
    "on a port of its own (empty: off; port 0 picks one; docs/metrics.md)",
)


def start(listen: str, registry: CollectorRegistry) -> MetricsServer | None:
    """`serve` at `listen` (the LISTEN setting), or None when it is empty (metrics off).

    A service that was asked for metrics and cannot serve them does not start: it says
    why on stderr and exits with status 2, as for any other bad setting.
    """
    if not listen:
        return None
    try:
        return serve(listen, registry)
    except OSError as exc:
        print(f"error: cannot serve metrics on {listen}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
