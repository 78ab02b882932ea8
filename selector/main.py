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

from fedota_common.grpcutil import add_health, bind, make_server
from fedota_common.settings import Key, SettingsError, boolean, load, positive_float, service_main
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.selector.v1 import selector_pb2_grpc
from selector.auth import RosterAuthenticator
from selector.core import SelectorCore
from selector.servicer import FabSource, SelectorServicer
from selector.upstream import CoordinatorLink

log = logging.getLogger("selector")

KEYS = [
    Key("coordinator", str, required=True, help="host:port of the problem's coordinator"),
    Key("listen", str, "0.0.0.0:9092", "address:port clients dial (port 0 picks one)"),
    Key("selector-id", str, "", "name of this selector (default: hostname-pid)"),
    Key("selector-token", str, "", "token presented to the coordinator"),
    Key("heartbeat-interval", positive_float, 5.0, "seconds between client heartbeats"),
    Key("max-clients", int, 256, "connected clients served at once"),
    Key(
        "max-buffered-results",
        int,
        1,
        "client replies buffered for folding at once (each holds one model in memory; others wait)",
    ),
    Key("state-file", Path, None, "write {address, health, pid} here once listening"),
    Key("tls-cert", str, "", "server certificate chain: a PEM file, or the PEM text itself"),
    Key("tls-key", str, "", "the certificate's private key: a PEM file, or the PEM text itself"),
    Key("insecure", boolean, False, "serve clients over plaintext gRPC (local development only)"),
    Key("health-listen", str, "127.0.0.1:0", "plaintext loopback address for health checks (port 0 picks one)"),
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
    state_file: Path | None
    tls_cert: str
    tls_key: str
    insecure: bool
    health_listen: str
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str], argv: Sequence[str] | None = None) -> Settings:
        values = load("fedota-selector", "Hold data-holder clients for one problem.", KEYS, argv, environ)
        if not values["selector_id"]:
            values["selector_id"] = f"{socket.gethostname()}-{os.getpid()}"
        if not values["insecure"] and not (values["tls_cert"] and values["tls_key"]):
            raise SettingsError(
                "invalid settings:\n  the selector serves clients over TLS: give --tls-cert and --tls-key "
                "(FEDOTA_TLS_CERT / FEDOTA_TLS_KEY; the website issues them per problem), or --insecure "
                "for local development"
            )
        return cls(**values)

    def tls(self) -> tuple[bytes, bytes] | None:
        """(certificate PEM, key PEM), read from files unless given as PEM text; None when insecure."""
        if self.insecure:
            return None
        return _pem(self.tls_cert, "--tls-cert"), _pem(self.tls_key, "--tls-key")


def _pem(value: str, flag: str) -> bytes:
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{flag}: cannot read {value}: {exc}") from exc


def run(settings: Settings, stop: threading.Event | None = None) -> int:
    try:
        tls = settings.tls()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if tls is None:
        warning = "INSECURE: clients connect over plaintext gRPC (--insecure); use it for local development only"
        print(f"warning: {warning}", file=sys.stderr, flush=True)
        log.warning(warning)
    auth = RosterAuthenticator()
    core = SelectorCore(
        settings.selector_id,
        auth,
        heartbeat_interval=settings.heartbeat_interval,
        max_buffered_results=settings.max_buffered_results,
    )
    link = CoordinatorLink(core, settings.coordinator, settings.selector_token)
    core.upstream = link
    auth.refresh = lambda: link.send(cpb.SelectorMessage(roster_request=cpb.RosterRequest()))
    # Each connected client holds one thread for its stream, plus transfers.
    server = make_server(settings.max_clients + 16)
    selector_pb2_grpc.add_SelectorServicer_to_server(SelectorServicer(core, FabSource(core, link.fetch_fab)), server)
    add_health(server, "protos.selector.v1.Selector")
    try:
        address = bind(server, settings.listen, tls)
    except RuntimeError as exc:  # grpc: unusable certificate or key
        print(f"error: cannot serve TLS on {settings.listen}: {exc}", file=sys.stderr)
        return 2
    # Health checks (the image's HEALTHCHECK, the spawner) come from this machine only and
    # need no certificate: a plaintext port on loopback.
    health_address = bind(server, settings.health_listen)
    if address is None or health_address is None:
        print(f"error: cannot listen on {settings.listen} and {settings.health_listen}", file=sys.stderr)
        return 2
    server.start()
    if settings.state_file is not None:
        settings.state_file.parent.mkdir(parents=True, exist_ok=True)
        settings.state_file.write_text(
            json.dumps({"address": address, "health": health_address, "tls": tls is not None, "pid": os.getpid()})
        )
    log.info(
        "selector listening",
        extra={
            "address": address,
            "health": health_address,
            "tls": tls is not None,
            "coordinator": settings.coordinator,
            "selector": settings.selector_id,
        },
    )
    link.start()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(settings.heartbeat_interval):
        core.expire_idle(settings.heartbeat_interval * 4)
    link.stop()
    server.stop(grace=1.0).wait()
    log.info("selector stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return service_main("selector", Settings.from_env, run, argv)


if __name__ == "__main__":
    sys.exit(main())
