"""gRPC plumbing shared by every service: channel options, health, errors."""

from __future__ import annotations

import sys
from concurrent import futures
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedota_common.payload import MAX_FRAME

# Large payloads travel in chunks, so frames stay small; keepalives notice a
# vanished peer (a killed client, a cut cable) within seconds.
OPTIONS = [
    ("grpc.max_send_message_length", MAX_FRAME),
    ("grpc.max_receive_message_length", MAX_FRAME),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    # Each stream reads ahead a fixed 4 MiB. gRPC's default BDP probing grows
    # the window to tens of MiB on a fast link, and a stream the receiver is
    # not reading yet (an upload waiting for the selector's fold slot) then
    # parks that much in the receiver per client. 4 MiB per round trip still
    # moves 80 MB/s per stream at 50 ms.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 4 << 20),
]

# A long-lived channel between the platform's own services (a selector's to its
# coordinator) and its reconnecting, for a peer that went away and comes back. gRPC's
# defaults wait up to 2 minutes between attempts, give each attempt 20 s (a killed
# container's address answers nothing: the attempt hangs that long) and look the name up
# again at most every 30 s (a restarted container can get another address): a selector
# then took up to 60 s to see its restarted coordinator. On the platform's own network a
# connection takes milliseconds, so 5 s an attempt is plenty. Clients keep gRPC's
# defaults: they open a new channel for every attempt, and a slow link needs the time.
INTERNAL_CHANNEL_OPTIONS = [
    *OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.min_reconnect_backoff_ms", 5_000),  # gRPC's name for the shortest time given to one attempt
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
]

# Deadlines for calls that are not long-lived streams.
UNARY_DEADLINE = 30.0
# Transfers scale with payload size; this bounds a 1 GB transfer on a slow link.
TRANSFER_DEADLINE = 3600.0


def make_server(max_workers: int) -> grpc.Server:
    """A threaded gRPC server with our options."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=OPTIONS,
        maximum_concurrent_rpcs=max_workers,
    )


def bind(server: grpc.Server, listen: str, tls: tuple[bytes, bytes] | None = None) -> str | None:
    """Bind `listen` (port 0 picks one); return the address peers should dial, None on failure.

    `tls` is (certificate chain PEM, private key PEM): the port then speaks TLS only.
    """
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    if port == 0:
        return None
    host = listen.rsplit(":", 1)[0]
    return f"{'127.0.0.1' if host in ('0.0.0.0', '[::]', '') else host}:{port}"


def bind_with_health(
    server: grpc.Server, listen: str, health_listen: str, tls: tuple[bytes, bytes] | None
) -> tuple[str, str] | None:
    """Bind the service port (TLS unless `tls` is None) and a plaintext health port.

    Health checks (the images' HEALTHCHECK, the spawners) come from the service's own
    machine and need no certificate, so `health_listen` should be on loopback. Returns
    (address, health address), or None after printing why to stderr.
    """
    try:
        address = bind(server, listen, tls)
    except RuntimeError as exc:  # grpc: unusable certificate or key
        print(f"error: cannot serve TLS on {listen}: {exc}", file=sys.stderr)
        return None
    health_address = bind(server, health_listen)
    if address is None or health_address is None:
        print(f"error: cannot listen on {listen} and {health_listen}", file=sys.stderr)
        return None
    return address, health_address


def add_health(server: grpc.Server, *services: str) -> health.HealthServicer:
    """Register grpc.health.v1 and mark the server and `services` SERVING."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", *services):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


def channel(target: str, root_certificates: bytes | None = None, *, internal: bool = False) -> grpc.Channel:
    """A channel with our options: TLS trusting only `root_certificates` when given, else plaintext.

    `internal`: a long-lived channel between the platform's services, which reconnects briskly.
    """
    options = INTERNAL_CHANNEL_OPTIONS if internal else OPTIONS
    if root_certificates is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options=options)


def check_health(target: str, timeout: float = 2.0) -> bool:
    """True when the server at `target` reports SERVING."""
    with channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            res = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(res.status == health_pb2.HealthCheckResponse.SERVING)


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End an RPC with a status; typed NoReturn so callers need no dead code."""
    context.abort(code, message)
    raise AssertionError("grpc context.abort returned")
