"""Many real client sessions in one process: 1,000 clients in a round, 10,000 idle ones.

    python bench/load_clients.py --clients 1000 --selectors 4 --model-kb 100            # one FedAvg round
    python bench/load_clients.py --clients 10000 --selectors 4 --idle 20                # hold them idle

It starts a federation the way `python -m coordinator.local` does (one coordinator,
N selectors, TLS on both links with a throwaway CA, a selector token), plus a
stand-in for the website's internal API that serves the participant list, so the
selectors check every client's credential against its SHA-256 as they do in
production (the website's `participants` endpoint; reports are accepted and
dropped). Then it runs the clients in this process on one asyncio loop:

- each client has its own TLS channel (its own TCP connection: no shared
  subchannel), its own `fdp_<id>_<secret>` credential, and speaks the selector
  protocol exactly as `client_image.runner.Node` does: Join (asking for small
  tasks inline), Subscribe (the heartbeat stream, which brings a small task with
  its content; a larger one is pulled with PullTask), the ClientApp, PushResult
  (a small result whole in its header part, where the selector reads those), Leave;
- the app is the echo app (tests/apps/echo, each client returns the arrays it
  received): it is fetched with GetFab, checked against its pinned SHA-256 and
  loaded by the real client's own code (`Node._prepare`) once for the process,
  as a cached client does; every session gets its own Flower Context.

The real client runs one node per process with two threads per session and
Flower loaded once per node (about 200 MiB each), so 1,000 of them do not fit on
a 2-core machine: this driver is the lighter one, on `grpc.aio`, speaking the
same protocol with the real payload code (`fedota_common.payload`).

Round mode reports the time to connect every client (first Join to last Welcome)
and the round's time from the coordinator's round records (`rounds.jsonl`).
Idle mode (`--idle S`) holds every client connected for S seconds and reports the
resident memory added per idle client in the selectors and in this generator.
Run timing runs under the shared lock: `flock /tmp/fedota-bench.lock python bench/load_clients.py ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.server
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from fedota_common import chunkwire  # noqa: E402
from fedota_common.grpcutil import OPTIONS, TRANSFER_DEADLINE, UNARY_DEADLINE  # noqa: E402
from fedota_common.payload import Assembler, assemble, iter_views, message_to_payload, payload_to_message  # noqa: E402
from protos.payload.v1 import payload_pb2  # noqa: E402
from protos.selector.v1 import selector_pb2 as spb  # noqa: E402
from protos.selector.v1 import selector_pb2_grpc  # noqa: E402

ECHO_APP = REPO / "tests" / "apps" / "echo"

# Every client dials its own connection, as separate machines would: gRPC would
# otherwise share one connection among channels with the same target and options.
CLIENT_OPTIONS = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]

# A refused Join worth retrying: the selector has no run or list yet, or is busy.
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)


# ---- credentials and placement (pure: unit-tested) ----------------------------------------


def make_credentials(count: int, first_id: int = 1) -> list[str]:
    """`count` participant credentials `fdp_<id>_<secret>`, ids from `first_id`."""
    return [f"fdp_{first_id + i}_{secrets.token_urlsafe(24)}" for i in range(count)]


def roster_doc(credentials: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """The website's participant list for these credentials (ids and SHA-256, never the secret)."""
    return {
        "participants": [
            {"participant": c.split("_", 2)[1], "credential_sha256": hashlib.sha256(c.encode()).hexdigest()}
            for c in credentials
        ]
    }


def assign(count: int, selectors: Sequence[str]) -> list[str]:
    """Client i dials selector i mod N, as `coordinator.local` spreads its clients."""
    if not selectors:
        raise ValueError("at least one selector is needed")
    return [selectors[i % len(selectors)] for i in range(count)]


def per_client_kib(before_kib: int, after_kib: int, clients: int) -> float:
    """Resident memory added per client, in KiB (0 when there are none)."""
    return (after_kib - before_kib) / clients if clients else 0.0


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---- the website's participant list ---------------------------------------------------------


class _Website(http.server.ThreadingHTTPServer):
    daemon_threads = True
    roster: bytes = b""
    token: str = ""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Website

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.server.token}":
            return True
        self._reply(403, b'{"error": "bad token"}')
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self._authorised():
            self._reply(200, self.server.roster if self.path.endswith("/participants") else b"{}")

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            length -= len(self.rfile.read(min(length, 1 << 20)) or b"x" * length)
        if self._authorised():
            self._reply(200, b"{}")

    do_POST = do_PUT = _drain  # noqa: N815 - reports are accepted and dropped


def serve_website(credentials: Sequence[str], token: str) -> _Website:
    """A stand-in for the website's internal API for one run, on a loopback port."""
    server = _Website(("127.0.0.1", 0), _Handler)
    server.roster = json.dumps(roster_doc(credentials)).encode()
    server.token = token
    threading.Thread(target=server.serve_forever, name="website", daemon=True).start()
    return server


# ---- the clients ------------------------------------------------------------------------------


@dataclass
class Stats:
    joined: int = 0
    welcomed: int = 0
    tasks: int = 0
    ended: int = 0
    join_retries: int = 0
    errors: list[str] = field(default_factory=list)
    # Wall-clock times (time.time()), comparable across worker processes.
    first_join_wall: float = 0.0
    last_welcome_wall: float = 0.0


class Driver:
    """Runs client sessions on one event loop; the app is loaded once, by the real client's code."""

    def __init__(self, ca_pem: bytes, fab_sha256: str, cache_dir: Path, expected: int, connecting: int = 200) -> None:
        self.creds = grpc.ssl_channel_credentials(ca_pem)
        self.ca_pem = ca_pem
        self.fab_sha256 = fab_sha256
        self.cache_dir = cache_dir
        self.expected = expected
        self.stats = Stats()
        self.node: Any = None  # client_image.runner.Node holding the loaded ClientApp
        self._app_lock = asyncio.Lock()
        # Clients between their first dial and their Welcome at once: arrivals come in a
        # stream, not all in one instant, and a selector drops a session that joined but
        # did not subscribe within four heartbeat intervals.
        self._connecting = asyncio.Semaphore(connecting)

    async def _load_app(self, target: str, session_id: str, joined: spb.JoinResponse) -> None:
        """Fetch, verify and load the app once (GetFab over a session of its own), as `Node` does."""
        async with self._app_lock:
            if self.node is not None:
                return
            from client_image.runner import Node, NodeSetup
            from fedota_common.grpcutil import channel

            node = Node(
                NodeSetup(
                    selectors=[target],
                    credential="",
                    fab_sha256=self.fab_sha256,
                    data_path=self.cache_dir,
                    partition_id=0,
                    num_partitions=self.expected,
                    cache_dir=self.cache_dir,
                    display_name="load",
                    max_join_wait=60.0,
                    root_certificates=self.ca_pem,
                )
            )
            with channel(target, self.ca_pem) as ch:
                await asyncio.to_thread(node._prepare, selector_pb2_grpc.SelectorStub(ch), session_id, joined)
            self.node = node

    def _context(self, joined: spb.JoinResponse, index: int) -> Any:
        from flwr.app import Context, RecordDict

        app = self.node.app
        return Context(
            run_id=joined.run.run_id,
            node_id=joined.node_id,
            node_config={"data-path": str(self.cache_dir), "partition-id": index, "num-partitions": self.expected},
            state=RecordDict(),
            run_config=app.fused_config(json.loads(joined.run.run_config_json or "{}")),
        )

    async def _join(self, stub: selector_pb2_grpc.SelectorStub, credential: str, name: str) -> spb.JoinResponse:
        backoff = 0.2
        while True:
            try:
                joined: spb.JoinResponse = await stub.Join(
                    spb.JoinRequest(
                        credential=credential,
                        fab_sha256=self.fab_sha256,
                        client_version="fedota-load/0.1",
                        display_name=name,
                        inline_tasks=True,  # as the real client asks: a small task comes with its announcement
                    ),
                    timeout=UNARY_DEADLINE,
                )
                return joined
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY_CODES:
                    raise
                self.stats.join_retries += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def client(self, index: int, target: str, credential: str) -> None:
        """One client's whole session; failures are counted, never raised."""
        await self._connecting.acquire()
        connecting = [True]

        def connected() -> None:
            if connecting[0]:
                connecting[0] = False
                self._connecting.release()

        try:
            await self._client(index, target, credential, connected)
        except Exception as exc:  # noqa: BLE001 - one client's failure is a figure, not the end of the run
            self.stats.errors.append(f"client {index}: {type(exc).__name__}: {exc}"[:300])
        finally:
            connected()

    async def _client(self, index: int, target: str, credential: str, connected: Callable[[], None]) -> None:
        stats = self.stats
        async with grpc.aio.secure_channel(target, self.creds, options=CLIENT_OPTIONS) as ch:
            stub = chunkwire.selector_stub(ch)
            if not stats.first_join_wall:
                stats.first_join_wall = time.time()
            joined = await self._join(stub, credential, f"load-{index}")
            stats.joined += 1
            session = joined.session_id
            await self._load_app(target, session, joined)
            context = self._context(joined, index)
            stop = asyncio.Event()
            interval = joined.heartbeat_interval or 5.0

            async def heartbeats() -> AsyncIterator[spb.ClientEvent]:
                yield spb.ClientEvent(session_id=session, heartbeat=spb.Heartbeat())
                # A plain sleep: a wait_for on the stop event made a task per heartbeat, which
                # thousands of clients on one loop pay for.
                while not stop.is_set():
                    await asyncio.sleep(interval)
                    if not stop.is_set():
                        yield spb.ClientEvent(session_id=session, heartbeat=spb.Heartbeat())

            events = stub.Subscribe(heartbeats())
            work: set[asyncio.Task[None]] = set()
            ended, rejoin = "", False
            try:
                async for event in events:
                    kind = event.WhichOneof("event")
                    if kind == "welcome":
                        connected()
                        stats.welcomed += 1
                        stats.last_welcome_wall = time.time()
                    elif kind == "task":
                        job = asyncio.create_task(self._task(stub, session, joined, event.task, context))
                        work.add(job)
                        job.add_done_callback(work.discard)
                    elif kind == "shutdown":
                        ended, rejoin = event.shutdown.reason or "shutdown", event.shutdown.rejoin
                        break
            finally:
                stop.set()
            for job in list(work):
                await job
            stats.ended += 1
            if not ended:
                # The real client would join again; here a lost session is a failure to report.
                raise RuntimeError("the selector ended the session (no shutdown event)")
            if not rejoin:
                try:
                    await stub.Leave(spb.LeaveRequest(session_id=session, reason=ended), timeout=5.0)
                except grpc.aio.AioRpcError:
                    pass

    async def _task(
        self,
        stub: selector_pb2_grpc.SelectorStub,
        session: str,
        joined: spb.JoinResponse,
        task: spb.TaskAvailable,
        ctx: Any,
    ) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        task_id = task.task_id
        try:
            # As the real client (`client_image.runner.Node._run_task`): a task announced with
            # its content needs no pull, and a result that fits one message goes whole where
            # the selector said it reads those.
            if task.HasField("header"):
                header = task.header
                content = assemble(header.content_size, header.content_sha256, iter_views(task.content))
            else:
                pulled: payload_pb2.PayloadHeader | None = None
                asm: Assembler | None = None
                parts = stub.PullTask(
                    spb.PullTaskRequest(session_id=session, task_id=task_id), timeout=TRANSFER_DEADLINE
                )
                async for part in parts:
                    data = chunkwire.chunk_data(part)
                    if data is not None:
                        if asm is None:
                            raise RuntimeError("a chunk before the task's header")
                        asm.add(data)
                    elif part.WhichOneof("part") == "header":
                        pulled = part.header
                        asm = Assembler(pulled.content_size, pulled.content_sha256)
                if pulled is None or asm is None:
                    raise RuntimeError("a task without a header")
                header, content = pulled, asm.finish()
            message = payload_to_message(header, content)
            del content
            TaskIdentity.run_id = message.metadata.run_id
            TaskIdentity.node_id = joined.node_id
            TaskIdentity.task_id = (TaskIdentity._task_id or 0) + 1
            reply = self.node.client_app(message=message, context=ctx)
            result = message_to_payload(reply)
            parts = chunkwire.result_parts(session, task_id, result.header, result.content, whole=joined.inline_results)
            await stub.PushResult(parts, timeout=TRANSFER_DEADLINE)
            self.stats.tasks += 1
        except Exception as exc:  # noqa: BLE001 - counted; the session goes on, as the real client's does
            self.stats.errors.append(f"task {task_id}: {type(exc).__name__}: {exc}"[:300])


# ---- the federation ------------------------------------------------------------------------


@dataclass
class Federation:
    fleet: Any
    coordinator: Any
    selectors: dict[str, Any]  # address -> Popen
    ca_pem: bytes
    fab_sha256: str
    out: Path


def start_federation(
    out: Path,
    selectors: int,
    clients: int,
    model_mb: float,
    website: str,
    token: str,
    wait_for: int,
    niceness: int = 0,
) -> Federation:
    """Coordinator and selectors started with `coordinator.local`'s own helpers and arguments."""
    from coordinator.local import Fleet, _wait_file, start_selectors
    from fedota_common.pki import issue_server_cert, make_ca

    fleet = Fleet(out, niceness=niceness)
    ca_cert, ca_key = make_ca("fedota-load")
    tls = out / "tls"
    tls.mkdir(exist_ok=True)
    (tls / "ca.pem").write_text(ca_cert)
    for service in ("selector", "coordinator"):
        cert, key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1", "localhost"])
        (tls / f"{service}.pem").write_text(cert)
        (tls / f"{service}.key").touch(mode=0o600)
        (tls / f"{service}.key").write_text(key)
    fleet.env["FEDOTA_SELECTOR_TOKEN"] = secrets.token_urlsafe(24)
    fleet.env["FEDOTA_REPORT_TOKEN"] = token
    # Each selector serves its share of the clients at once (the default is 256).
    fleet.env["FEDOTA_MAX_CLIENTS"] = str(clients // selectors + 64)
    config = {"model-size-mb": model_mb, "min-available-nodes": clients, "num-server-rounds": 1}
    coord = fleet.start(
        "coordinator",
        "coordinator",
        [
            "--app",
            str(ECHO_APP),
            "--state-dir",
            str(out / "coordinator"),
            "--listen",
            "127.0.0.1:0",
            "--run-config",
            json.dumps(config),
            "--round-timeout",
            "300",
            "--overselect",
            "1.0",
            "--wait-for-nodes",
            str(wait_for),
            "--wait-timeout",
            "3600",
            "--report-url",
            website,
            "--tls-cert",
            str(tls / "coordinator.pem"),
            "--tls-key",
            str(tls / "coordinator.key"),
        ],
    )
    info = _wait_file(out / "coordinator" / "coordinator.json", coord, "the coordinator")
    tls_args = ["--tls-cert", str(tls / "selector.pem"), "--tls-key", str(tls / "selector.key")]
    tls_args += ["--coordinator-ca", str(tls / "ca.pem")]
    procs = dict(start_selectors(fleet, out, str(info["address"]), selectors, tls_args))
    return Federation(fleet, coord, procs, ca_cert.encode(), str(info["fab_sha256"]), out)


async def _worker(cfg: dict[str, Any]) -> None:
    """A worker process: run its share of the clients, report on stdout (JSON lines).

    It says `connected` once every client checked in (or gave up), then, in idle mode,
    holds them until its stdin says `stop` (or closes); at the end it says `done`.
    """
    loop = asyncio.get_running_loop()
    stats_before = rss_kib()
    driver = Driver(cfg["ca_pem"].encode(), cfg["fab_sha256"], Path(cfg["cache"]), cfg["expected"], cfg["connecting"])
    tasks = [
        asyncio.create_task(driver.client(i, t, c))
        for i, t, c in zip(cfg["indices"], cfg["targets"], cfg["credentials"], strict=True)
    ]
    stats = driver.stats
    stats_total = len(tasks)

    def say(doc: dict[str, Any]) -> None:
        print(json.dumps(doc), flush=True)

    while stats.welcomed < stats_total and stats.ended + len(stats.errors) < stats_total:
        await asyncio.sleep(0.5)
    say(
        {
            "event": "connected",
            "first_join": stats.first_join_wall,
            "last_welcome": stats.last_welcome_wall,
            "welcomed": stats.welcomed,
            "rss_before_kib": stats_before,
            "rss_kib": rss_kib(),
        }
    )
    if cfg["idle"]:
        await loop.run_in_executor(None, sys.stdin.readline)
        say(
            {
                "event": "done",
                "tasks_done": stats.tasks,
                "join_retries": stats.join_retries,
                "errors": len(stats.errors),
                "first_errors": stats.errors[:5],
            }
        )
        # The clients vanish at once, as machines switched off do (the selectors see their
        # connections reset); closing thousands of channels one by one took minutes.
        os._exit(0)
    await asyncio.gather(*tasks, return_exceptions=True)
    say(
        {
            "event": "done",
            "tasks_done": stats.tasks,
            "join_retries": stats.join_retries,
            "errors": len(stats.errors),
            "first_errors": stats.errors[:5],
        }
    )


class _Worker:
    """One worker process as the main process sees it: its reports, in order."""

    started: list[_Worker] = []

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        _Worker.started.append(self)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cfg) + "\n")
        self.proc.stdin.flush()

    def report(self) -> dict[str, Any]:
        """The worker's next report ({"event": "gone"} if it exited without one)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith('{"event"'):
                report: dict[str, Any] = json.loads(line)
                return report
        return {"event": "gone", "exit": self.proc.wait()}

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()


def drive(
    fed: Federation, credentials: list[str], idle: float, cache: Path, connecting: int, procs: int
) -> dict[str, Any]:
    """Run every client in `procs` worker processes; in idle mode, measure memory once all are connected."""
    targets = assign(len(credentials), list(fed.selectors))
    before = {addr: rss_kib(p.pid) for addr, p in fed.selectors.items()}
    workers = []
    for n in range(procs):
        mine = list(range(n, len(credentials), procs))
        workers.append(
            _Worker(
                {
                    "indices": mine,
                    "targets": [targets[i] for i in mine],
                    "credentials": [credentials[i] for i in mine],
                    "ca_pem": fed.ca_pem.decode(),
                    "fab_sha256": fed.fab_sha256,
                    "cache": str(cache / f"worker-{n}"),
                    "expected": len(credentials),
                    "connecting": max(1, connecting // procs),
                    "idle": idle,
                }
            )
        )
    connected = [w.report() for w in workers]
    result: dict[str, Any] = {"clients": len(credentials), "selectors": len(fed.selectors), "generator_procs": procs}
    firsts = [c["first_join"] for c in connected if c.get("first_join")]
    lasts = [c["last_welcome"] for c in connected if c.get("last_welcome")]
    result["connect_s"] = round(max(lasts) - min(firsts), 3) if firsts and lasts else None
    result["welcomed"] = sum(int(c.get("welcomed", 0)) for c in connected)
    if idle:
        time.sleep(idle)
        after = {addr: rss_kib(p.pid) for addr, p in fed.selectors.items()}
        held = [rss_kib(w.proc.pid) for w in workers]
        share = len(credentials) / len(fed.selectors)
        result["selector_rss_mib"] = [round(after[a] / 1024) for a in after]
        result["selector_kib_per_idle_client"] = round(
            statistics.mean(per_client_kib(before[a], after[a], round(share)) for a in after), 1
        )
        grown = sum(h - int(c.get("rss_before_kib", 0)) for h, c in zip(held, connected, strict=True))
        result["generator_rss_mib"] = round(sum(held) / 1024)
        result["generator_kib_per_idle_client"] = round(per_client_kib(0, grown, len(credentials)), 1)
        result["selector_threads"] = [_threads(p.pid) for p in fed.selectors.values()]
        for w in workers:
            w.stop()
    done = [w.report() for w in workers]
    result["tasks_done"] = sum(int(d.get("tasks_done", 0)) for d in done)
    result["join_retries"] = sum(int(d.get("join_retries", 0)) for d in done)
    result["errors"] = sum(int(d.get("errors", 0)) for d in done) + sum(d["event"] == "gone" for d in done)
    result["first_errors"] = [e for d in done for e in d.get("first_errors", [])][:5]
    for w in workers:
        w.proc.wait(timeout=30)
    return result


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--selectors", type=int, default=4)
    p.add_argument("--model-kb", type=float, default=100.0, help="model size in KiB (one float32 array)")
    p.add_argument("--idle", type=float, default=0.0, help="hold the clients idle this many seconds, then stop")
    p.add_argument(
        "--connecting", type=int, default=200, help="clients connecting at once (dialled, not yet checked in)"
    )
    p.add_argument(
        "--procs", type=int, default=1, help="generator processes the clients are spread over (each one event loop)"
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the coordinator and selectors, as the platform's FEDOTA_SERVICE_NICE (default 0)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(json.loads(sys.stdin.readline())))
        return 0
    # Stopped (a timeout, the operator): the federation's processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    token = secrets.token_urlsafe(24)
    credentials = make_credentials(args.clients)
    website = serve_website(credentials, token)
    url = f"http://127.0.0.1:{website.server_address[1]}/api/internal/runs/1/"
    with tempfile.TemporaryDirectory(prefix="fedota-load-") as tmp:
        out = (args.out or Path(tmp)).resolve()
        # Idle mode: the ServerApp waits for one client more than come, so nobody gets work.
        wait_for = args.clients + 1 if args.idle else args.clients
        fed = start_federation(
            out, args.selectors, args.clients, args.model_kb / 1024, url, token, wait_for, niceness=args.nice
        )
        try:
            result = drive(fed, credentials, args.idle, out / "client-cache", args.connecting, max(1, args.procs))
            if not args.idle:
                try:
                    fed.coordinator.wait(timeout=60)
                except Exception:  # noqa: BLE001 - reported below as a missing record
                    pass
                records = out / "coordinator" / "rounds.jsonl"
                rounds = [json.loads(x) for x in records.read_text().splitlines()] if records.exists() else []
                result["round_s"] = [r.get("seconds") for r in rounds]
                result["coordinator_exit"] = fed.coordinator.poll()
        finally:
            for worker in _Worker.started:
                if worker.proc.poll() is None:
                    worker.proc.kill()
                    worker.proc.wait()
            fed.fleet.stop_all()
            website.shutdown()
    print(json.dumps(result, indent=1))
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
