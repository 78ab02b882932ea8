"""What one hop costs: a content streamed over gRPC in chunks, CPU-seconds per GiB at each end.

    python bench/transport.py                        # 200 MiB over TLS, 1 MiB chunks, as the services do
    python bench/transport.py --plaintext            # the same without TLS
    python bench/transport.py --protobuf             # chunk parts through the generated classes (before chunkwire)

A server process streams `--mb` MiB to a client process as the selector serves a task
(`TaskPart` messages, each one chunk of 1 MiB, framed from views of the content and read
as views of the parts, `fedota_common.chunkwire`; with `--protobuf` built and parsed by the
generated classes, as before chunkwire), with the services' channel
options (`fedota_common.grpcutil.OPTIONS`) and, unless `--plaintext`, TLS with a certificate
from the project's own CA code. The client assembles the chunks as a client does
(`payload.Assembler`). Both ends report their process's CPU time (user + system, all
threads, gRPC's own included) over the stream; the figure to compare is CPU-seconds per GiB
moved, which load on the machine inflates far less than wall time. Each setting is
streamed `--repeats` times after one warm-up; the median is printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from fedota_common import grpcutil, pki  # noqa: E402
from fedota_common.chunkwire import chunk_data, frame_chunk, part_reader  # noqa: E402
from fedota_common.payload import Assembler, iter_chunks, iter_views  # noqa: E402
from protos.payload.v1 import payload_pb2  # noqa: E402
from protos.selector.v1 import selector_pb2 as spb  # noqa: E402

METHOD = "/bench.Transport/Stream"
CPU_METHOD = "/bench.Transport/Cpu"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def serve(args: argparse.Namespace) -> None:
    content = np.random.default_rng(0).integers(0, 255, args.mb << 20, dtype=np.uint8)
    mark = [_cpu()]

    def stream(_request: bytes, _context: grpc.ServicerContext) -> object:
        mark[0] = _cpu()
        if args.protobuf:
            for chunk in iter_chunks(memoryview(content)):
                yield spb.TaskPart(chunk=payload_pb2.Chunk(data=chunk)).SerializeToString()
        else:
            for view in iter_views(memoryview(content)):
                yield frame_chunk(view)

    def cpu(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return json.dumps(_cpu() - mark[0]).encode()

    handler = grpc.method_handlers_generic_handler(
        "bench.Transport",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Cpu": grpc.unary_unary_rpc_method_handler(cpu),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), options=grpcutil.OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    if args.plaintext:
        server.add_insecure_port(f"127.0.0.1:{args.port}")
    else:
        pair = json.loads(Path(args.certs).read_text())
        server.add_secure_port(
            f"127.0.0.1:{args.port}", grpc.ssl_server_credentials([(pair["key"].encode(), pair["cert"].encode())])
        )
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Stream `--repeats` + 1 times; the median of both ends' CPU-seconds per GiB and the wall time."""
    ca_cert, ca_key = pki.make_ca("fedota transport bench")
    cert, key = pki.issue_server_cert(ca_cert, ca_key, ["127.0.0.1"])
    certs = workdir / "certs.json"
    certs.write_text(json.dumps({"cert": cert, "key": key}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, __file__, "--serve", "--port", str(port), "--certs", str(certs)]
    argv += ["--mb", str(args.mb)]
    argv += ["--plaintext"] if args.plaintext else []
    argv += ["--protobuf"] if args.protobuf else []
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        target = f"127.0.0.1:{port}"
        opts = grpcutil.OPTIONS
        ch = (
            grpc.insecure_channel(target, options=opts)
            if args.plaintext
            else grpc.secure_channel(target, grpc.ssl_channel_credentials(ca_cert.encode()), options=opts)
        )
        reader = spb.TaskPart.FromString if args.protobuf else part_reader(spb.TaskPart)
        stream = ch.unary_stream(METHOD, response_deserializer=reader)
        cpu = ch.unary_unary(CPU_METHOD)
        size = args.mb << 20
        rows = []
        for _ in range(args.repeats + 1):
            started, wall = _cpu(), time.perf_counter()
            asm = Assembler(size, "")
            for part in stream(b""):
                data = chunk_data(part)
                assert data is not None
                asm.add(data)
            content = asm.finish()
            assert len(content) == size
            del content
            receiver, wall = _cpu() - started, time.perf_counter() - wall
            sender = json.loads(cpu(b""))
            rows.append((sender, receiver, wall))
        ch.close()
    finally:
        server.kill()
        server.wait()
    gib = args.mb / 1024
    rows = rows[1:]
    return {
        "sender": statistics.median(r[0] for r in rows) / gib,
        "receiver": statistics.median(r[1] for r in rows) / gib,
        "wall": statistics.median(r[2] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="MiB streamed per repeat")
    parser.add_argument("--protobuf", action="store_true", help="chunk parts through the generated classes")
    parser.add_argument("--plaintext", action="store_true", help="no TLS")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--certs", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedota-transport-") as tmp:
        got = measure(args, Path(tmp))
    print(
        f"{args.mb} MiB, {'plaintext' if args.plaintext else 'TLS'}, {'protobuf' if args.protobuf else 'chunkwire'}: "
        f"sender {got['sender']:.2f} + receiver {got['receiver']:.2f} = {got['sender'] + got['receiver']:.2f} "
        f"CPU-s/GiB, {got['wall']:.3f} s wall (median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
