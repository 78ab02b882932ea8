"""The client's session with a selector: join, fetch the app, serve tasks.

One process holds one Flower node: the ClientApp is loaded once and called for
every instruction with a Context that persists for the run (as a SuperNode
does), so stateful ClientApps work unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from client_image.privacy import Guard, PrivacyError, PrivacyStop
from client_image.reach import Attempts, classify
from fedota_common import chunkwire, memtune
from fedota_common.fab import App, FabError, extract, parse_fab
from fedota_common.grpcutil import TRANSFER_DEADLINE, UNARY_DEADLINE, channel
from fedota_common.payload import (
    Assembler,
    Whole,
    assemble,
    message_to_payload,
    payload_to_message,
    release_cycles,
    round_of,
)
from fedota_common.runstatus import from_proto
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb
from protos.selector.v1 import selector_pb2_grpc

log = logging.getLogger(__name__)


_FINAL_AT_JOIN = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
)


# How a selector's shutdown reason begins when it withdrew this site's access (revoked).
ACCESS_WITHDRAWN = "access withdrawn"
# RunEnd.status when the selector withdrew this site's access rather than ending the run.
WITHDRAWN = "withdrawn"
# RunEnd.status when this site stopped because its privacy budget is spent (client_image/privacy.py).
DECLINED = "declined"

# Trailing metadata of a Join refused because the run is over (selector/servicer.py).
RUN_STATUS_METADATA = "fedota-run-status"
RUN_REASON_METADATA = "fedota-run-reason-bin"

# While waiting without a bound (--follow), the client says so this often (seconds).
SAY_EVERY = 60.0


class ClientError(Exception):
    """A problem the data holder must fix; the message says what and how."""


class FederationLost(Exception):
    """After this client had joined, no selector answered for `max_reconnect_wait` seconds."""


# A selector past its concurrent-call limit refuses a transfer with RESOURCE_EXHAUSTED before
# sending anything; the call is tried again this often, waiting these seconds (plus jitter)
# in between, before the task counts as failed ("task transfer failed").
PULL_RETRY_WAITS = (0.5, 1.0, 2.0, 4.0)


def pull_task(
    stub: Any, session: str, task_id: str, *, waits: tuple[float, ...] = PULL_RETRY_WAITS, sleep: Any = time.sleep
) -> tuple[payload_pb2.PayloadHeader, Any]:
    """Download one task's header and content, again after a refusal for load (RESOURCE_EXHAUSTED)."""
    for attempt in range(len(waits) + 1):
        try:
            parts = stub.PullTask(spb.PullTaskRequest(session_id=session, task_id=task_id), timeout=TRANSFER_DEADLINE)
            header: payload_pb2.PayloadHeader | None = None
            asm: Assembler | None = None
            for part in parts:
                data = chunkwire.chunk_data(part)
                if data is None:
                    header = part.header
                    asm = Assembler(header.content_size, header.content_sha256)
                elif asm is not None:
                    asm.add(data)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == len(waits):
                raise
            wait = waits[attempt] * (1 + random.random() / 2)
            log.info(
                "the selector is busy; pulling the task again",
                extra={"task": task_id, "detail": exc.details(), "wait_seconds": round(wait, 2)},
            )
            sleep(wait)
            continue
        if header is None or asm is None:
            raise ClientError("the selector sent a task without a header")
        return header, asm.finish()
    raise AssertionError("unreachable")


class _Dropped(Exception):
    """The session ended but the run did not: join again (another selector, or the same later)."""


@dataclass(frozen=True)
class RunEnd:
    """How the run ended for this client: finished | failed | stopped, or withdrawn (access)."""

    status: str
    reason: str = ""
    # Learnt when joining: the run was already over (this client was not in it at the end).
    late: bool = False

    def describe(self) -> str:
        """The end in words, e.g. "the run was stopped: the coordinator received SIGTERM"."""
        what = {
            "finished": "the run finished",
            "failed": "the run failed",
            "stopped": "the run was stopped",
            WITHDRAWN: "this site's access was withdrawn",
            DECLINED: "this site declined to train further",
        }.get(self.status, f"the run ended ({self.status})")
        if self.reason.startswith(what):
            return self.reason
        reason = "" if self.reason in ("", "run finished", f"run {self.status}") else self.reason
        return what + (f": {reason}" if reason else "")


def _end_of(shutdown: spb.Shutdown) -> RunEnd:
    status = from_proto(spb.RunStatus, shutdown.status)
    if status is None:
        # No status: access withdrawn, or an older selector whose shutdown meant "run over".
        status = WITHDRAWN if shutdown.reason.startswith(ACCESS_WITHDRAWN) else "finished"
    return RunEnd(status, shutdown.reason)


def _end_of_refusal(exc: grpc.RpcError) -> RunEnd | None:
    """The run's end when a Join was refused because the run is over; None for other refusals."""
    metadata = exc.trailing_metadata() if isinstance(exc, grpc.Call) else None
    found = dict(metadata or ())
    status = found.get(RUN_STATUS_METADATA)
    if not isinstance(status, str) or not status:
        return None
    reason = found.get(RUN_REASON_METADATA, b"")
    text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    return RunEnd(status, text, late=True)


@dataclass(frozen=True)
class NodeSetup:
    selectors: list[str]
    credential: str
    fab_sha256: str
    data_path: Path
    partition_id: int
    num_partitions: int
    cache_dir: Path
    display_name: str
    max_join_wait: float
    # The problem's CA certificate (PEM): selectors are reached over TLS and must
    # present a certificate it signed. None: plaintext (--insecure).
    root_certificates: bytes | None = None
    # The join bundle says the selectors are announced for the server's own machine only.
    selectors_local_only: bool = False
    # Further `context.node_config` entries (`--node-config`, as a Flower SuperNode takes them).
    extra_node_config: dict[str, Any] = field(default_factory=dict)
    # After a session was lost, how long to look for a selector before giving up (FederationLost).
    max_reconnect_wait: float = 300.0
    # Keep going after a run ends (waiting for the problem's next run) and never give up looking.
    follow: bool = False
    # Client-side differential privacy with this site's budget; None: off.
    privacy: Guard | None = None


class Node:
    """A Flower node served over our selector protocol."""

    def __init__(self, setup: NodeSetup) -> None:
        self.setup = setup
        self.app: App | None = None
        self.client_app: Any = None
        self.context: Any = None
        self.run_id: int | None = None
        self.tasks_done = 0
        # Whether the current attempt got a session (its loss starts the reconnect bound).
        self._held = False
        # Replaceable in tests.
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep

    def serve(self) -> RunEnd:
        """Serve until the run ends; returns how it ended. Reconnects on failures.

        Every selector address is tried in turn (from a random start, to spread
        clients) until one answers; the first failure of each kind at an address is
        printed at once. Before the first session, when none answers within
        `max_join_wait`, the error lists every address tried, what failed there and
        what to check. Once a session was held and lost, the search goes on for
        `max_reconnect_wait` (then FederationLost). With `follow`, no bound applies,
        and after a run ends the client waits for the problem's next run, saying so
        every minute; only a withdrawn access ends it.
        """
        setup = self.setup
        attempts = Attempts(list(setup.selectors), local_only=setup.selectors_local_only)
        order = list(setup.selectors)
        start = random.randrange(len(order))
        order = order[start:] + order[:start]
        turn = 0
        backoff = 0.5
        # join: no session yet; lost: a session ended, the run did not; next: a run ended (--follow).
        phase = "join"
        since = said = self.clock()
        while True:
            target = order[turn % len(order)]
            turn += 1
            try:
                end = self._session(target)
            except (grpc.RpcError, _Dropped) as exc:
                # Only a refusal at Join is final; anything later (a restarted
                # selector forgetting the session, a cut link) means join again.
                code = exc.code() if isinstance(exc, grpc.Call) else None
                details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
                now = self.clock()
                if self._held:
                    self._held = False
                    attempts.failures.clear()
                    phase, since, said, backoff = "lost", now, now, 0.5
                    bound = "" if setup.follow else f" for up to {setup.max_reconnect_wait:.0f} s"
                    print(
                        f"warning: the session with the selector at {target} ended "
                        f"({details or classify(code, details)}); joining again{bound}",
                        file=sys.stderr,
                        flush=True,
                    )
                kind, new = attempts.record(target, code, details)
                if new and phase != "next":
                    bound = (
                        " (--follow: until one answers)"
                        if setup.follow
                        else f" for up to {setup.max_join_wait if phase == 'join' else setup.max_reconnect_wait:.0f} s"
                    )
                    print(
                        f"warning: cannot reach the selector at {target}: {kind}; retrying{bound}",
                        file=sys.stderr,
                        flush=True,
                    )
                waited = now - since
                if not setup.follow and phase == "join" and waited > setup.max_join_wait:
                    raise ClientError(attempts.report(setup.max_join_wait)) from exc
                if not setup.follow and phase == "lost" and waited > setup.max_reconnect_wait:
                    raise FederationLost(
                        attempts.report(
                            setup.max_reconnect_wait,
                            headline=f"lost the federation: no selector answered for {waited:.0f} s after the "
                            "session ended (the run's servers were stopped, or this machine lost its way to them)",
                        )
                    ) from exc
                log.info(
                    "selector unavailable; retrying",
                    extra={"target": target, "code": str(code), "kind": kind, "detail": details},
                )
            else:
                self._held = False
                if not setup.follow or end.status in (WITHDRAWN, DECLINED):
                    return end
                if not (phase == "next" and end.late):
                    # A run ended (or was found over): the next one starts afresh, with a new Context.
                    print(
                        f"{end.describe()}; --follow: waiting for the problem's next run",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.context = None
                    attempts.failures.clear()
                    phase = "next"
                    since = said = self.clock()
                    backoff = 0.5
            now = self.clock()
            if now - said >= SAY_EVERY:
                said = now
                print(self._waiting_line(phase, now - since, attempts), file=sys.stderr, flush=True)
            if turn % len(order) == 0:
                self.sleep(backoff)
                backoff = min(backoff * 2, 15.0 if setup.follow else 5.0)

    def _waiting_line(self, phase: str, waited: float, attempts: Attempts) -> str:
        seen = "; ".join(f"{t}: {kind}" for t, (kind, _) in attempts.failures.items()) or "no answer yet"
        if phase == "next":
            return f"waiting for the problem's next run ({waited / 60:.0f} min so far); retrying with a backoff"
        if self.setup.follow:
            return f"still no selector answers after {waited:.0f} s ({seen}); --follow: retrying until one does"
        limit = self.setup.max_join_wait if phase == "join" else self.setup.max_reconnect_wait
        return f"still no selector answers after {waited:.0f} s ({seen}); giving up in {max(0.0, limit - waited):.0f} s"

    def _session(self, target: str) -> RunEnd:
        with channel(target, self.setup.root_certificates) as ch:
            stub = chunkwire.selector_stub(ch)
            try:
                joined: spb.JoinResponse = stub.Join(
                    spb.JoinRequest(
                        credential=self.setup.credential,
                        fab_sha256=self.setup.fab_sha256,
                        client_version="fedota-client/0.1",
                        display_name=self.setup.display_name,
                        inline_tasks=True,
                    ),
                    timeout=UNARY_DEADLINE,
                )
            except grpc.RpcError as exc:
                ended = _end_of_refusal(exc)
                if ended is not None:
                    return ended
                if exc.code() in _FINAL_AT_JOIN:
                    raise ClientError(f"selector {target} refused this client: {exc.details()}") from exc
                raise
            self._held = True
            session = joined.session_id
            log.info("joined", extra={"selector": target, "node_id": joined.node_id, "run_id": joined.run.run_id})
            try:
                self._prepare(stub, session, joined)
                return self._work(stub, session, joined)
            except PrivacyStop as stop:
                return self._decline(stub, session, stop)

    def _decline(self, stub: selector_pb2_grpc.SelectorStub, session: str, stop: PrivacyStop) -> RunEnd:
        """Leave because the privacy budget is spent; the selector hears the report and the reason."""
        print(f"{stop.reason}; this site declines to train and leaves", file=sys.stderr, flush=True)
        try:
            stub.Leave(spb.LeaveRequest(session_id=session, reason=stop.reason, privacy=stop.report), timeout=5.0)
        except grpc.RpcError as exc:
            log.warning("could not tell the selector this site leaves", extra={"detail": exc.details()})
        return RunEnd(DECLINED, stop.reason)

    def _prepare(self, stub: selector_pb2_grpc.SelectorStub, session: str, joined: spb.JoinResponse) -> None:
        """Fetch and verify the app, load the ClientApp, set up the Context."""
        from flwr.app import Context, RecordDict
        from flwr.clientapp.client_app import ClientApp, LoadClientAppError
        from flwr.supercore.object_ref import load_app as load_object

        run = joined.run
        if self.app is None or self.app.sha256 != run.fab_sha256:
            chunks = stub.GetFab(spb.GetFabRequest(session_id=session), timeout=TRANSFER_DEADLINE)
            asm = Assembler(run.fab_size, "")
            for chunk in chunks:
                asm.add(chunk.data)
            content = asm.finish()
            try:
                app = parse_fab(bytes(content), origin="the app served by the selector")
            except FabError as exc:
                raise ClientError(f"the app served by the selector is unusable: {exc}") from exc
            expected = self.setup.fab_sha256 or run.fab_sha256
            if app.sha256 != expected:
                raise ClientError(
                    f"the app served by the selector has SHA-256 {app.sha256}, but {expected} was "
                    "expected; refusing to run code you did not review"
                )
            if not self.setup.fab_sha256:
                log.warning("no FAB hash pinned: running the app the selector serves", extra={"fab_sha256": app.sha256})
            try:
                app_dir = extract(app, self.setup.cache_dir / "apps")
            except FabError as exc:
                raise ClientError(f"the app cannot be unpacked: {exc}") from exc
            guard = self.setup.privacy
            with guard.install() if guard is not None else contextlib.nullcontext():
                client_app = load_object(app.clientapp, LoadClientAppError, str(app_dir))
            if not isinstance(client_app, ClientApp):
                raise ClientError(f"{app.clientapp} in the app is not a flwr ClientApp")
            if guard is not None and not guard.installed:
                raise ClientError(
                    f"cannot apply this site's privacy budget to {app.clientapp}: its ClientApp was not built when "
                    "the app was loaded, so Fedota could not place its noise after the app's own mods; nothing was sent"
                )
            self.app, self.client_app = app, client_app
            # The app's imports (torch, its model code) live as long as the process: keep them
            # out of the collections run after each large payload (no payload is alive here).
            memtune.freeze_startup_objects()
        overrides = json.loads(run.run_config_json or "{}")
        if self.context is None or self.run_id != run.run_id:
            try:
                run_config = self.app.fused_config(overrides)
            except FabError as exc:
                raise ClientError(str(exc)) from exc
            self.context = Context(
                run_id=run.run_id,
                node_id=joined.node_id,
                node_config={
                    "data-path": str(self.setup.data_path),
                    "partition-id": self.setup.partition_id,
                    "num-partitions": self.setup.num_partitions,
                    **self.setup.extra_node_config,
                },
                state=RecordDict(),
                run_config=run_config,
            )
            self.run_id = run.run_id
        if self.setup.privacy is not None:
            try:
                self.setup.privacy.start_run(run.run_id, self.context.run_config)
            except PrivacyError as exc:
                raise ClientError(str(exc)) from exc

    def _work(self, stub: selector_pb2_grpc.SelectorStub, session: str, joined: spb.JoinResponse) -> RunEnd:
        stop = threading.Event()
        interval = joined.heartbeat_interval or 5.0

        # Privacy reports go up the same stream as heartbeats, as soon as they are made.
        outgoing: queue.Queue[spb.ClientEvent | None] = queue.Queue()

        def heartbeats() -> Iterator[spb.ClientEvent]:
            yield spb.ClientEvent(session_id=session, heartbeat=spb.Heartbeat())
            while not stop.is_set():
                try:
                    event = outgoing.get(timeout=interval)
                except queue.Empty:
                    event = spb.ClientEvent(session_id=session, heartbeat=spb.Heartbeat())
                if event is None:
                    return
                yield event

        if self.setup.privacy is not None:
            self.setup.privacy.report = lambda report: outgoing.put(spb.ClientEvent(session_id=session, privacy=report))

        tasks: queue.Queue[spb.TaskAvailable | None] = queue.Queue()
        cancelled: set[str] = set()
        events = stub.Subscribe(heartbeats())
        worker_error: list[BaseException] = []
        declined: list[RunEnd] = []

        def work() -> None:
            while (task := tasks.get()) is not None:
                task_id = task.task_id
                if task_id in cancelled:
                    continue
                try:
                    self._run_task(stub, session, joined, task)
                except grpc.RpcError as exc:
                    log.warning(
                        "task transfer failed",
                        extra={"task": task_id, "code": str(exc.code()), "detail": exc.details()},
                    )
                except PrivacyStop as exc:
                    # Leave first, with the report: ending the stream first would race it.
                    declined.append(self._decline(stub, session, exc))
                    events.cancel()
                    return
                except PrivacyError as exc:
                    worker_error.append(ClientError(str(exc)))
                    events.cancel()
                    return
                except Exception as exc:  # noqa: BLE001 - re-raised by _work() in the main thread
                    worker_error.append(exc)
                    events.cancel()
                    return

        worker = threading.Thread(target=work, name="task-worker", daemon=True)
        worker.start()
        end: RunEnd | None = None
        dropped = "the selector ended the session"
        try:
            for event in events:
                kind = event.WhichOneof("event")
                if kind == "task":
                    tasks.put(event.task)
                elif kind == "cancelled":
                    cancelled.add(event.cancelled.task_id)
                    log.info(
                        "task cancelled by the selector",
                        extra={"task": event.cancelled.task_id, "reason": event.cancelled.reason},
                    )
                elif kind == "shutdown":
                    if event.shutdown.rejoin:
                        dropped = event.shutdown.reason or "the selector is going away"
                    else:
                        end = _end_of(event.shutdown)
                    break
                elif kind == "welcome":
                    log.info("checked in; waiting for work", extra={"node_id": event.welcome.node_id})
        except grpc.RpcError:
            if worker_error:
                raise worker_error[0] from None
            stop.set()
            tasks.put(None)
            if declined:
                return declined[0]
            raise
        finally:
            stop.set()
            outgoing.put(None)
        tasks.put(None)
        # The run is over: a task still in the ClientApp has no one to answer to; do not wait for it.
        worker.join(timeout=None if end is None else 2.0)
        if worker.is_alive():
            log.info("the run ended during a task; leaving it unfinished")
        if worker_error:
            raise worker_error[0]
        if declined:
            return declined[0]
        if end is None:
            raise _Dropped(dropped)
        try:
            stub.Leave(spb.LeaveRequest(session_id=session, reason=end.describe()), timeout=5.0)
        except grpc.RpcError:
            pass
        return end

    def _run_task(
        self, stub: selector_pb2_grpc.SelectorStub, session: str, joined: spb.JoinResponse, task: spb.TaskAvailable
    ) -> None:
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode
        from flwr.supercore.task_identity import TaskIdentity

        task_id, node_id, inline_results = task.task_id, joined.node_id, joined.inline_results
        if task.HasField("header"):  # announced with its content: nothing to pull
            header = task.header
            # Reading the field gives bytes of their own: those are the content (`Whole`: not
            # copied again); the event's parsed copy goes.
            content = assemble(header.content_size, header.content_sha256, Whole(task.content))
            task.ClearField("content")
        else:
            header, content = pull_task(stub, session, task_id)
        message = payload_to_message(header, content)
        del content  # the received buffer: the message holds its own copy of the arrays
        received = time.monotonic()
        TaskIdentity.run_id = message.metadata.run_id
        TaskIdentity.node_id = node_id
        TaskIdentity.task_id = (TaskIdentity._task_id or 0) + 1
        try:
            reply = self.client_app(message=message, context=self.context)
        except (PrivacyStop, PrivacyError):
            # The site's budget: it declines (or its settings cannot work); not the app's failure.
            raise
        except Exception as exc:
            # Report the failure to the server as Flower's deployment runtime does, in its
            # words ("<class 'ZeroDivisionError'>:<'division by zero'>"); keep serving.
            log.exception("ClientApp raised", extra={"task": task_id})
            reason = str(type(exc)) + ":<'" + str(exc) + "'>"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        app_seconds = time.monotonic() - received
        message_type, round_id = message.metadata.message_type, round_of(message)
        # The reply's segments reference its arrays, so the upload needs no copy;
        # the instruction's model is dropped first unless the reply shares it.
        payload = message_to_payload(reply)
        del reply, message

        parts = chunkwire.result_parts(session, task_id, payload.header, payload.content, whole=inline_results)
        res: spb.PushResultResponse = stub.PushResult(parts, timeout=TRANSFER_DEADLINE)
        uploaded = time.monotonic() - received - app_seconds
        size = max(header.content_size, len(payload.content))
        del payload, parts
        # The instruction and reply are freed here, after the upload, off the round's critical path.
        release_cycles(size)
        self.tasks_done += 1
        log.info(
            "task done",
            extra={
                "task": task_id,
                "type": message_type,
                "round": round_id,
                "app_seconds": round(app_seconds, 3),
                "upload_seconds": round(uploaded, 3),
                "accepted": res.accepted,
            },
        )
