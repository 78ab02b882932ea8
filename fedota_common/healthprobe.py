"""The containers' health check: grpc.health.v1 `Check("")` over plaintext HTTP/2, standard library only.

    python -m fedota_common.healthprobe [PORT]     (default: FEDOTA_HEALTH_LISTEN's port, else 9093)

Exits 0 when the server on 127.0.0.1:PORT answers SERVING, 1 when it answers anything else,
answers nothing within 2 s, or nothing listens. It asks what `grpcutil.check_health` asks,
without importing grpc: a check that imports grpc costs about half a CPU-second, and Docker
and Swarm run one per container every few seconds, which on a small machine with a few
dozen problems took more CPU than the problems themselves (bench/README.md, the swarm
bench). This one costs a Python start and one loopback exchange.

The exchange: the HTTP/2 client preface and an empty SETTINGS frame; the request's
HEADERS (HPACK literals, never indexed, so no table is kept); a DATA frame with the gRPC
message (an empty HealthCheckRequest: 5 bytes of framing). The answer is read until the
DATA frame on the request's stream, whose message is a HealthCheckResponse: field 1,
`status`, SERVING = 1. Response headers are not decoded: an error answers with trailers
only, and no DATA means not SERVING.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time

DEFAULT_PORT = 9093
TIMEOUT = 2.0
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
STREAM = 1
SERVING = 1


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK header field without indexing, its name a literal too (RFC 7541 6.2.2)."""
    out = b"\x00"
    for text in (name.encode(), value.encode()):
        if len(text) >= 127:
            raise ValueError("header too long for a one-byte length")
        out += bytes([len(text)]) + text
    return out


def request(port: int) -> bytes:
    """Everything the probe sends: preface, SETTINGS, the Check call's HEADERS and DATA."""
    headers = b"".join(
        _literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    message = b"\x00" + struct.pack(">I", 0)  # not compressed, 0 bytes: HealthCheckRequest(service="")
    return (
        PREFACE
        + _frame(SETTINGS, 0, 0)
        + _frame(HEADERS, END_HEADERS, STREAM, headers)
        + _frame(DATA, END_STREAM, STREAM, message)
    )


def status_of(message: bytes) -> int:
    """The `status` field of a serialized HealthCheckResponse (0, UNKNOWN, when absent)."""
    status, at = 0, 0
    while at < len(message):
        key, at = _varint(message, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(message, at)
            if field == 1:
                status = value
        elif wire == 2:
            length, at = _varint(message, at)
            at += length
        elif wire == 5:
            at += 4
        elif wire == 1:
            at += 8
        else:
            raise ValueError(f"wire type {wire} in a HealthCheckResponse")
    return status


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _read(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        out += chunk
    return out


def check(port: int, host: str = "127.0.0.1", timeout: float = TIMEOUT) -> bool:
    """Does the gRPC server at host:port answer SERVING to Check("") within `timeout` s?"""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request(port))
            body = b""
            while True:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                head = _read(sock, 9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
                payload = _read(sock, length)
                if kind == SETTINGS and not flags & ACK:
                    sock.sendall(_frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    sock.sendall(_frame(PING, ACK, 0, payload))
                elif kind == GOAWAY or (kind == RST_STREAM and stream == STREAM):
                    return False
                elif kind == DATA and stream == STREAM:
                    body += payload
                    if len(body) >= 5 and len(body) >= 5 + int.from_bytes(body[1:5], "big"):
                        return body[0] == 0 and status_of(body[5 : 5 + int.from_bytes(body[1:5], "big")]) == SERVING
                    if flags & END_STREAM:
                        return False
                elif kind == HEADERS and stream == STREAM and flags & END_STREAM:
                    return False  # trailers before any message: an error status
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        port = args[0]
    else:
        port = os.environ.get("FEDOTA_HEALTH_LISTEN", f":{DEFAULT_PORT}").rsplit(":", 1)[1]
    if not port.isdigit():
        print(f"error: the health port must be a number, not {port!r}", file=sys.stderr)
        return 2
    return 0 if check(int(port)) else 1


if __name__ == "__main__":
    sys.exit(main())
