"""Selector entry point (`fedota-selector`, `python -m selector`)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedota_common import chunkwire, payload, tracing
from fedota_common import metrics as metrics_lib
from fedota_common import tls as tlsconf
from fedota_common.grpcutil import add_health, bind_with_health, make_server
from fedota_common.metrics import SelectorMetrics
from fedota_common.replies import FLOWER, ReplyPolicy, reply_policy
from fedota_common.settings import Key, SettingsError, load, positive_float, service_main
from protos.coordinator.v1 import coordinator_pb2 as cpb
from selector.auth import RosterAuthenticator
from selector.core import SelectorCore
from selector.servicer import FabSource, SelectorServicer
from selector.upstream import CoordinatorLink

log = logging.getLogger("selector")

# Seconds a stopping selector waits for its coordinator to say the run is over.
STOP_WAIT = 2.0

SELECTOR_TOKEN = Key("selector-token", str, "", "the run's token presented to the coordinator", secret=True)
COORDINATOR_CA = Key(
    "coordinator-ca",
    str,
    "",
    "CA certificate the coordinator's certificate must be signed by (the problem's): a PEM file, or the PEM text itself",
    secret=True,
)
KEYS = [
    Key("coordinator", str, required=True, help="host:port of the problem's coordinator"),
    Key("listen", str, "0.0.0.0:9092", "address:port clients dial (port 0 picks one)"),
    Key("selector-id", str, "", "name of this selector (default: hostname-pid)"),
    SELECTOR_TOKEN,
    Key("heartbeat-interval", positive_float, 5.0, "seconds between client heartbeats"),
    Key("max-clients", int, 256, "connected clients served at once"),
    Key(
        "max-buffered-results",
        int,
        1,
        "client replies buffered for folding at once (each holds one model in memory; others wait)",
    ),
    Key(
        "reply-policy",
        reply_policy,
        reply_policy(FLOWER),
        "flower: replies the platform's rules refuse are passed on unfolded, for the coordinator's policy "
        "to judge; strict: they are rejected here (set it like the coordinator's)",
    ),
    Key("state-file", Path, None, "write {address, health, pid} here once listening"),
    tlsconf.CERT,
    tlsconf.KEY,
    COORDINATOR_CA,
    tlsconf.insecure_key("plaintext gRPC to clients and to the coordinator, no token needed"),
    Key("health-listen", str, "127.0.0.1:0", "plaintext loopback address for health checks (port 0 picks one)"),
    metrics_lib.LISTEN,
    tracing.OTLP_ENDPOINT,
    tracing.TRACE_FILE,
    Key("log-level", str, "INFO", "log level"),
]


@dataclass(frozen=True)
class Settings:
    coordinator: str
    listen: str
    selector_id: str
    selector_token: str
    heartbeat_interval: float
    max_clients: int
    max_buffered_results: int
    reply_policy: ReplyPolicy
    state_file: Path | None
    tls_cert: str
    tls_key: str
    coordinator_ca: str
    insecure: bool
    health_listen: str
    metrics_listen: str
    otlp_endpoint: str
    trace_file: str
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str], argv: Sequence[str] | None = None) -> Settings:
        values = load("fedota-selector", "Hold data-holder clients for one problem.", KEYS, argv, environ)
        values["otlp_endpoint"] = tracing.otlp_endpoint(values["otlp_endpoint"], environ)
        if not values["selector_id"]:
            values["selector_id"] = f"{socket.gethostname()}-{os.getpid()}"
        tlsconf.check(
            [
                tlsconf.unless_insecure(
                    values,
                    [tlsconf.CERT, tlsconf.KEY],
                    "the selector serves clients over TLS (the website issues its certificate per problem)",
                ),
                tlsconf.unless_insecure(
                    values, [COORDINATOR_CA], "the selector checks its coordinator's TLS certificate against the CA"
                ),
                tlsconf.unless_insecure(
                    values, [SELECTOR_TOKEN], "the selector presents the run's token to its coordinator"
                ),
            ]
        )
        return cls(**values)

    def tls(self) -> tuple[bytes, bytes] | None:
        """(certificate PEM, key PEM), read from files unless given as PEM text; None when insecure."""
        return tlsconf.server_pair(self.tls_cert, self.tls_key, self.insecure)

    def coordinator_trust(self) -> bytes | None:
        """The CA certificate (PEM) the coordinator is verified against; None (plaintext) when insecure."""
        return None if self.insecure else tlsconf.pem(self.coordinator_ca, f"--{COORDINATOR_CA.name}")


def run(settings: Settings, stop: threading.Event | None = None) -> int:
    # Each batch of instructions is a span under the coordinator's round (selector/core.py).
    tracing.configure("fedota-selector", endpoint=settings.otlp_endpoint, trace_file=settings.trace_file)
    try:
        server_tls = settings.tls()
        coordinator_ca = settings.coordinator_trust()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Contents go without a hash of their own only when both links authenticate every record.
    payload.send_digests(server_tls is None or coordinator_ca is None)
    if server_tls is None:
        tlsconf.warn_insecure(log, "clients and the coordinator are reached over plaintext gRPC")
    auth = RosterAuthenticator()
    core = SelectorCore(
        settings.selector_id,
        auth,
        heartbeat_interval=settings.heartbeat_interval,
        max_buffered_results=settings.max_buffered_results,
        reply_policy=settings.reply_policy,
    )
    link = CoordinatorLink(core, settings.coordinator, settings.selector_token, coordinator_ca)
    core.upstream = link
    metrics = SelectorMetrics()
    core.on_reject = metrics.reject
    metrics.watch(lambda: len(core.sessions), lambda: float(link.connected.is_set()))
    auth.refresh = lambda: link.send(cpb.SelectorMessage(roster_request=cpb.RosterRequest()))
    # Each connected client holds one RPC (and thread) for its stream, and one more while it
    # pulls a task or pushes a result: with one slot per client, a round that reached every
    # client at once refused the transfers beyond the first 16 (RESOURCE_EXHAUSTED) and those
    # tasks failed. The pool starts threads only as calls need them.
    server = make_server(2 * settings.max_clients + 16)
    chunkwire.add_selector_servicer(SelectorServicer(core, FabSource(core, link.fetch_fab), metrics=metrics), server)
    add_health(server, "protos.selector.v1.Selector")
    bound = bind_with_health(server, settings.listen, settings.health_listen, server_tls)
    if bound is None:
        return 2
    address, health_address = bound
    metrics_server = metrics_lib.start(settings.metrics_listen, metrics.registry)
    metrics_address = metrics_server.address if metrics_server else ""
    server.start()
    if settings.state_file is not None:
        settings.state_file.parent.mkdir(parents=True, exist_ok=True)
        settings.state_file.write_text(
            json.dumps(
                {
                    "address": address,
                    "health": health_address,
                    "metrics": metrics_address,
                    "tls": server_tls is not None,
                    "pid": os.getpid(),
                }
            )
        )
    log.info(
        "selector listening",
        extra={
            "address": address,
            "health": health_address,
            "metrics": metrics_address,
            "tls": server_tls is not None,
            "coordinator": settings.coordinator,
            "coordinator_tls": coordinator_ca is not None,
            "selector": settings.selector_id,
            "reply_policy": settings.reply_policy.name,
        },
    )
    link.start()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(settings.heartbeat_interval):
        core.expire_idle(settings.heartbeat_interval * 4)
    # The website stops a run's coordinator and selectors together: when the coordinator says
    # the run was stopped, clients exit instead of looking for another selector.
    if link.connected.is_set() and not core.finished:
        core.ended_event.wait(STOP_WAIT)
    # Delivered while server.stop()'s grace lets the clients' streams run.
    core.going_away("this selector is shutting down; the run may go on at another selector")
    link.stop()
    server.stop(grace=1.0).wait()
    if metrics_server is not None:
        metrics_server.stop()
    log.info("selector stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return service_main("selector", Settings.from_env, run, argv)


if __name__ == "__main__":
    sys.exit(main())
