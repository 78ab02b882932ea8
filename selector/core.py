"""Selector state and logic: sessions, tasks, per-batch partial aggregation.

The client-facing servicer and the coordinator link both call into one
`SelectorCore`. It talks to the coordinator only through the small `Upstream`
interface, so tests can drive it without a network.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import queue
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, cast

from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from opentelemetry import trace

from fedota_common import tracing
from fedota_common.aggregate import (
    REJECTED,
    ModelSpec,
    NotAggregatable,
    ReplyView,
    WeightedMean,
    inspect_reply,
    model_spec,
)
from fedota_common.chunkwire import inline_task_event
from fedota_common.payload import (
    CHUNK_SIZE,
    MAX_CONTENT_SIZE,
    Content,
    PayloadError,
    RejectedReply,
    Whole,
    WireContent,
    WireRecords,
    assemble,
    check_header,
    content_digest,
    iter_chunks,
    parse_content,
    reply_size_limit,
)
from fedota_common.replies import ReplyPolicy, StrictPolicy
from fedota_common.runstatus import to_proto
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb

log = logging.getLogger(__name__)


class Upstream(Protocol):
    """What the selector needs from its coordinator."""

    def send(self, msg: cpb.SelectorMessage) -> None: ...

    def pull_content(self, content_id: str, size: int, sha256: str) -> Content: ...

    def push_result(self, header: cpb.ResultHeader, content: WireContent | Iterator[bytes]) -> cpb.PushResultResponse:
        """Stream a result up; `content` may be an iterator of chunks, passed through as they come."""
        ...


class Authenticator(Protocol):
    def check(self, credential: str, source: str = "") -> str | None:
        """Return the participant identity of a valid credential ("" if unknown), None to refuse.

        `source` is the client's address (for rate limiting). The identity travels to
        the coordinator and the webserver, so it must never be the credential or any
        part of its secret. May raise SelectorError (e.g. UNAVAILABLE: ask again later).
        """
        ...

    def update(self, roster: cpb.Participants) -> set[str]:
        """Adopt the coordinator's list of participants; returns those whose admission it withdrew."""
        ...

    def admits(self, participant: str) -> bool:
        """Whether a session of `participant` admitted earlier may stay."""
        ...


class OpenAuthenticator:
    """Accepts any credential (unit tests of the selector's other parts)."""

    def update(self, roster: cpb.Participants) -> set[str]:
        return set()

    def admits(self, participant: str) -> bool:
        return True

    def check(self, credential: str, source: str = "") -> str | None:
        """The participant id of an `fdp_<id>_<secret>` credential, else "" (never the secret)."""
        return participant_of(credential)


def participant_of(credential: str) -> str:
    """The `<id>` of a participant credential `fdp_<id>_<secret>`; "" for anything else."""
    parts = credential.split("_", 2)
    if len(parts) == 3 and parts[0] == "fdp" and parts[1].isdigit() and parts[2]:
        return parts[1]
    return ""


class SelectorError(Exception):
    """A client request that cannot be served; `code` names the gRPC status.

    `run_status` (and `run_reason`) are set when the refusal is because the run is
    over: how it ended (finished | failed | stopped), which the client needs to decide
    its exit.
    """

    def __init__(self, code: str, message: str, *, run_status: str = "", run_reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.run_status = run_status
        self.run_reason = run_reason


@dataclass
class Session:
    session_id: str
    node_id: int
    display_name: str
    participant: str = ""
    # The client reads small tasks from their announcement (JoinRequest.inline_tasks).
    inline_tasks: bool = False
    outbox: queue.Queue[spb.SelectorEvent | InlineTask | None] = field(default_factory=queue.Queue)
    subscribed: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    closed: bool = False


@dataclass
class Task:
    task_id: str
    node_id: int
    batch_id: str
    metadata: bytes
    content_id: str
    content_size: int
    content_sha256: str
    message_type: str = ""
    state: str = "pending"  # pending | announced | receiving | done | failed | cancelled


# A task in one of these states may still be answered; its batch is not over.
OPEN = ("pending", "announced", "receiving")


@dataclass(frozen=True)
class InlineTask:
    """A task announced with its content: the whole `SelectorEvent`, serialised (`_inline_event`)."""

    task: Task
    wire: bytes


@dataclass
class BatchState:
    batch_id: str
    aggregation: int
    weight_key: str
    task_ids: set[str]
    acc: WeightedMean | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    resolved: set[str] = field(default_factory=set)
    # Tasks of the batch still OPEN here (`_close`): a reply forwarded on its own looks at
    # this, not at every task of the round, to know whether the batch is over.
    open: int = 0
    covered: list[str] = field(default_factory=list)
    covered_nodes: list[int] = field(default_factory=list)
    first_metadata: bytes = b""
    finalized: bool = False
    # This selector's part of the round, a child of the coordinator's round span (tracing
    # off: a no-op span); ended once the batch is done here (`_end_span`).
    span: tracing.Span | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    fab_sha256: str
    fab_size: int
    run_config_json: str


class UploadWatch:
    """Keeps an upload that holds a folding slot moving, or cancels it.

    Folding buffers one reply per slot, so a client that trickles its upload
    would keep every other client of the selector waiting until the round's
    deadline. Holding a slot, an upload must deliver a chunk at least every
    `idle` seconds and, after `grace` seconds, average `min_rate` bytes/s;
    otherwise `cancel` (the RPC's) is called and the reply is rejected.
    """

    def __init__(self, cancel: Callable[[], None], *, idle: float, min_rate: float, grace: float) -> None:
        self.cancel, self.idle, self.min_rate, self.grace = cancel, idle, min_rate, grace
        self.reason = ""
        self.got = 0
        self.started = self.last = time.monotonic()
        self._done = threading.Event()

    def chunks(self, source: Iterator[bytes]) -> Iterator[bytes]:
        watcher = threading.Thread(target=self._watch, name="upload-watch", daemon=True)
        watcher.start()
        try:
            for data in source:
                self.got += len(data)
                self.last = time.monotonic()
                yield data
        except PayloadError:
            if self.reason:
                raise RejectedReply("stalled", self.reason) from None
            raise
        finally:
            self._done.set()
        if self.reason:
            raise RejectedReply("stalled", self.reason)

    def _watch(self) -> None:
        while not self._done.wait(min(0.5, self.idle / 4)):
            now = time.monotonic()
            elapsed = now - self.started
            if now - self.last > self.idle:
                self.reason = f"the upload stalled: no data for {self.idle:g} s (after {self.got} bytes)"
            elif elapsed > self.grace and self.got / elapsed < self.min_rate:
                self.reason = (
                    f"the upload is too slow: {self.got / elapsed / 1024:.1f} KiB/s on average over {elapsed:.0f} s, "
                    f"below the {self.min_rate / 1024:g} KiB/s a reply must keep up while others wait for it"
                )
            if self.reason:
                self.cancel()
                return


class SelectorCore:
    """Everything a selector knows and does."""

    def __init__(
        self,
        selector_id: str,
        auth: Authenticator,
        *,
        heartbeat_interval: float = 5.0,
        max_buffered_results: int = 1,
        upload_idle: float = 20.0,
        upload_min_rate: float = 32 * 1024,
        upload_grace: float = 30.0,
        reply_policy: ReplyPolicy | None = None,
    ) -> None:
        self.selector_id = selector_id
        # What to do with a reply the platform's rules refuse: reject it (strict) or
        # pass it on unfolded for the coordinator to judge (flower).
        self.reply_policy: ReplyPolicy = reply_policy or StrictPolicy()
        self.auth = auth
        self.heartbeat_interval = heartbeat_interval
        # How an upload holding a folding slot must keep moving (UploadWatch).
        self.upload_limits = {"idle": upload_idle, "min_rate": upload_min_rate, "grace": upload_grace}
        # Replies to fold are buffered whole (the weight may come after the
        # arrays); this bounds how many at once, so memory does not grow with
        # the number of clients. Waiting uploads are held back by gRPC flow control.
        self._fold_slots = threading.BoundedSemaphore(max(1, max_buffered_results))
        self.upstream: Upstream | None = None
        self.run: RunInfo | None = None
        self.finished = False
        # How the run ended and why (status, reason), once the coordinator said so.
        self.ended: tuple[str, str] | None = None
        # Set once the coordinator said the run is over (a stopping selector waits for it).
        self.ended_event = threading.Event()
        self.fab: bytes | None = None
        self._lock = threading.RLock()
        self.sessions: dict[str, Session] = {}
        self.by_node: dict[int, Session] = {}
        self.tasks: dict[str, Task] = {}
        # Each node's task ids: a client that leaves or subscribes looks at its own tasks, not
        # at the whole round's (1,000 a round, for each of 1,000 clients that come and go).
        self._node_tasks: dict[int, set[str]] = {}
        self.batches: dict[str, BatchState] = {}
        self.contents: dict[str, Content] = {}
        self._fetching: set[str] = set()
        # Each content's tasks whose client has not pulled all of it yet. Once none is left
        # the content goes (`pulled`): while the clients train and their replies are folded,
        # the selector then holds the running sum and one reply, not the instruction too.
        # A client that asks again later gets it fetched again (`_released`: size, SHA-256).
        self._unpulled: dict[str, set[str]] = {}
        self._released: dict[str, tuple[int, str]] = {}
        self._finalized: collections.deque[str] = collections.deque(maxlen=256)
        # The arrays each instruction content carries, which replies must match.
        self.models: dict[str, ModelSpec] = {}
        # Tasks closed lately (task id -> node id, how), to tell a late or repeated reply what happened.
        self._closed: collections.OrderedDict[str, tuple[int, str]] = collections.OrderedDict()
        # Replies refused, by reason (also logged one by one as "reply rejected").
        self.rejected: collections.Counter[str] = collections.Counter()
        # Told each refused reply's reason (the metrics' rejection counter).
        self.on_reject: Callable[[str], None] | None = None
        self._rng = random.SystemRandom()

    # ---- coordinator side ------------------------------------------------------------

    def on_welcome(self, welcome: cpb.Welcome) -> None:
        with self._lock:
            if self.run is None or self.run.fab_sha256 != welcome.fab_sha256:
                self.fab = None
            self.run = RunInfo(welcome.run_id, welcome.fab_sha256, welcome.fab_size, welcome.run_config_json)
            self.finished = False
            self.ended = None
            self.ended_event.clear()
        log.info("run info received", extra={"run_id": welcome.run_id, "fab_sha256": welcome.fab_sha256})

    def hello_nodes(self) -> list[cpb.NodeJoined]:
        with self._lock:
            return [
                cpb.NodeJoined(node_id=s.node_id, display_name=s.display_name, participant=s.participant)
                for s in self.sessions.values()
                if s.subscribed and not s.closed
            ]

    def on_instructions(self, ins: cpb.Instructions) -> None:
        """Store a batch's tasks, fetch each distinct content once, then announce."""
        acc = WeightedMean(ins.weight_key) if ins.aggregation == cpb.AGGREGATION_WEIGHTED_MEAN else None
        batch = BatchState(ins.batch_id, ins.aggregation, ins.weight_key, {i.message_id for i in ins.items}, acc)
        batch.open = len(batch.task_ids)
        batch.span = tracing.tracer().start_span(
            "selector.round",
            context=tracing.extract(ins.trace_context),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "fedota.selector": self.selector_id,
                "fedota.batch": ins.batch_id,
                "fedota.tasks": len(ins.items),
                "fedota.type": _message_type(ins.items[0].metadata) if ins.items else "",
                "fedota.aggregation": "weighted-mean" if acc is not None else "individual",
            },
        )
        to_fetch: dict[str, tuple[int, str]] = {}
        carried = {c.content_id: c.data for c in ins.contents}  # small contents come with the batch
        to_store: dict[str, tuple[bytes, int, str]] = {}
        with self._lock:
            self.batches[ins.batch_id] = batch
            for item in ins.items:
                self._node_tasks.setdefault(item.node_id, set()).add(item.message_id)
                self.tasks[item.message_id] = Task(
                    item.message_id,
                    item.node_id,
                    ins.batch_id,
                    item.metadata,
                    item.content_id,
                    item.content_size,
                    item.content_sha256,
                    _message_type(item.metadata),
                )
                self._unpulled.setdefault(item.content_id, set()).add(item.message_id)
                if item.content_id not in self.contents and item.content_id not in self._fetching:
                    self._fetching.add(item.content_id)
                    if item.content_id in carried:
                        to_store[item.content_id] = (carried[item.content_id], item.content_size, item.content_sha256)
                    else:
                        to_fetch[item.content_id] = (item.content_size, item.content_sha256)
        for cid, (data, size, sha) in to_store.items():
            try:  # checked as a pulled content is: its size, and its hash where one was sent
                self._store(cid, assemble(size, sha, Whole(data)))
            except PayloadError as exc:
                log.warning(
                    "an instruction's content came damaged; pulling it", extra={"content_id": cid, "error": str(exc)}
                )
                to_fetch[cid] = (size, sha)
        for cid, (size, sha) in to_fetch.items():
            threading.Thread(target=self._fetch, args=(cid, size, sha), name=f"fetch-{cid}", daemon=True).start()
        self._announce_ready()

    def _fetch(self, content_id: str, size: int, sha256: str) -> None:
        assert self.upstream is not None
        try:
            data = self.upstream.pull_content(content_id, size, sha256)
        except Exception as exc:  # noqa: BLE001 - any upstream failure fails the tasks, not the selector
            log.warning("content fetch failed", extra={"content_id": content_id, "error": str(exc)})
            with self._lock:
                self._fetching.discard(content_id)
                failed = [t for t in self.tasks.values() if t.content_id == content_id and t.state == "pending"]
            for task in failed:
                self._fail_task(task, f"selector could not fetch the instruction: {exc}")
            return
        self._store(content_id, data)
        self._announce_ready()

    def _store(self, content_id: str, data: Content) -> None:
        """Keep an instruction's content (fetched or carried by its batch) and the model it sends."""
        try:
            model = model_spec(parse_content(data))
        except PayloadError as exc:
            log.warning(
                "instruction content does not parse; replies are not checked against it", extra={"error": str(exc)}
            )
            model = None
        with self._lock:
            self._fetching.discard(content_id)
            self.contents[content_id] = data
            if model is not None:
                self.models[content_id] = model

    def _announce_ready(self, node_id: int | None = None) -> None:
        """Announce the tasks whose content is here (only `node_id`'s, when given)."""
        unreachable: list[Task] = []
        with self._lock:
            for task in self.tasks.values() if node_id is None else self._tasks_of(node_id):
                if task.state != "pending" or (
                    task.content_id not in self.contents and task.content_id not in self._released
                ):
                    continue
                session = self.by_node.get(task.node_id)
                if session is None or session.closed:
                    unreachable.append(task)
                    continue
                task.state = "announced"
                content = self.contents.get(task.content_id)
                wire = _inline_event(task, content) if session.inline_tasks and content is not None else None
                session.outbox.put(
                    InlineTask(task, wire)
                    if wire is not None
                    else spb.SelectorEvent(task=spb.TaskAvailable(task_id=task.task_id, content_size=task.content_size))
                )
        for task in unreachable:
            self._fail_task(task, "client is no longer connected")

    def on_flush(self, batch_id: str) -> None:
        batch = self.batches.get(batch_id)
        if batch is None and batch_id in self._finalized:
            return  # its aggregate is already on the way
        if batch is None:
            # Never saw the batch (e.g. reconnected): answer with an empty aggregate.
            batch = BatchState(batch_id, cpb.AGGREGATION_WEIGHTED_MEAN, "", set(), None)
            self._send_aggregate(batch)
            return
        self._finalize(batch)

    def on_cancel(self, message_ids: Iterable[str], reason: str) -> None:
        with self._lock:
            for mid in message_ids:
                task = self.tasks.pop(mid, None)
                if task is None:
                    continue
                self._untrack(task)
                self._remember_closed(task, "cancelled")
                announced = task.state == "announced"
                self._close(task, "cancelled")
                session = self.by_node.get(task.node_id)
                if session is not None and announced:
                    session.outbox.put(spb.SelectorEvent(cancelled=spb.TaskCancelled(task_id=mid, reason=reason)))
            self._gc()

    def on_run_finished(self, reason: str, status: str = "finished") -> None:
        """The run is over (finished | failed | stopped): tell every client how and why."""
        with self._lock:
            self.finished = True
            self.ended = (status, reason)
            event = spb.SelectorEvent(
                shutdown=spb.Shutdown(reason=reason, status=cast(spb.RunStatus, to_proto(spb.RunStatus, status)))
            )
            for session in self.sessions.values():
                session.outbox.put(event)
        self.ended_event.set()
        log.info("run over; clients told", extra={"status": status, "reason": reason})

    def going_away(self, reason: str) -> int:
        """This selector stops while the run may go on: its clients are told to join another
        selector (a run that is over was already announced). Returns how many were told."""
        with self._lock:
            if self.finished:
                return 0
            sessions = list(self.sessions.values())
            for session in sessions:
                session.outbox.put(spb.SelectorEvent(shutdown=spb.Shutdown(reason=reason, rejoin=True)))
                session.outbox.put(None)  # then end the stream
        log.info("stopping; clients told to join another selector", extra={"clients": len(sessions)})
        return len(sessions)

    def on_participants(self, roster: cpb.Participants) -> None:
        """Enforce a new participant list: sessions of participants it withdrew are closed."""
        withdrawn = self.auth.update(roster)
        with self._lock:
            gone = [
                s for s in self.sessions.values() if s.participant in withdrawn or not self.auth.admits(s.participant)
            ]
        for session in gone:
            session.outbox.put(
                spb.SelectorEvent(
                    shutdown=spb.Shutdown(
                        reason="access withdrawn: this site's participation was revoked or its credential "
                        "replaced; download your current join bundle from the website"
                    )
                )
            )
            self.leave(session, "credential no longer admitted")
        if gone:
            log.warning("closed sessions no longer admitted", extra={"sessions": len(gone)})

    # ---- client side ---------------------------------------------------------------------

    def join(
        self, credential: str, fab_sha256: str, display_name: str, *, source: str = "", inline_tasks: bool = False
    ) -> tuple[Session, RunInfo]:
        participant = self.auth.check(credential, source)
        if participant is None:
            raise SelectorError(
                "UNAUTHENTICATED",
                "this problem does not accept the credential in your join bundle (revoked, replaced by a newer "
                "bundle, or for another problem); download your current join bundle from the website",
            )
        with self._lock:
            run = self.run
            if self.finished:
                status, reason = self.ended or ("finished", "")
                raise SelectorError(
                    "FAILED_PRECONDITION",
                    f"the run is over ({status}{': ' + reason if reason else ''}); no new work will be given out",
                    run_status=status,
                    run_reason=reason,
                )
            if run is None:
                raise SelectorError(
                    "UNAVAILABLE", "the selector is not yet connected to its coordinator; retry shortly"
                )
            if fab_sha256 and fab_sha256 != run.fab_sha256:
                raise SelectorError(
                    "FAILED_PRECONDITION",
                    f"this run of the problem uses app {run.fab_sha256[:12]}…, but your join bundle pins "
                    f"{fab_sha256[:12]}…; download a new join bundle and review the new code (if you "
                    "downloaded it after the app changed, the setter has yet to start a run of the new app)",
                )
            node_id = self._rng.randrange(1 << 32, 1 << 63)
            # The display name is the client's own choice; never fall back to the credential.
            name = display_name.strip() or f"site {node_id}"
            session = Session(secrets.token_urlsafe(24), node_id, name, participant, inline_tasks)
            self.sessions[session.session_id] = session
            self.by_node[node_id] = session
        log.info(
            "client joined",
            extra={"node_id": node_id, "site": session.display_name, "participant": participant},
        )
        return session, run

    def session(self, session_id: str) -> Session:
        with self._lock:
            session = self.sessions.get(session_id)
        if session is None or session.closed:
            raise SelectorError("UNAUTHENTICATED", "unknown or expired session; join again")
        session.last_seen = time.monotonic()
        return session

    def subscribe(self, session: Session) -> None:
        with self._lock:
            session.subscribed = True
        if self.upstream is not None:
            self.upstream.send(
                cpb.SelectorMessage(
                    node_joined=cpb.NodeJoined(
                        node_id=session.node_id,
                        display_name=session.display_name,
                        participant=session.participant,
                    )
                )
            )
        self._announce_ready(session.node_id)

    def privacy_report(self, session: Session, report: spb.PrivacyReport) -> None:
        """Relay a site's self-reported privacy budget to the coordinator, as it came."""
        log.info(
            "privacy report",
            extra={"node_id": session.node_id, "state": report.state, "epsilon": round(report.epsilon, 4)},
        )
        if self.upstream is not None and not session.closed:
            self.upstream.send(
                cpb.SelectorMessage(
                    site_privacy=cpb.SitePrivacy(
                        node_id=session.node_id,
                        report=report,
                        participant=session.participant,
                        display_name=session.display_name,
                    )
                )
            )

    def leave(self, session: Session, reason: str) -> None:
        """Drop a session; its unfinished tasks fail at once."""
        with self._lock:
            if session.closed:
                return
            session.closed = True
            session.outbox.put(None)
            self.sessions.pop(session.session_id, None)
            if self.by_node.get(session.node_id) is session:
                del self.by_node[session.node_id]
            open_tasks = [t for t in self._tasks_of(session.node_id) if t.state in ("pending", "announced")]
        log.info("client left", extra={"node_id": session.node_id, "reason": reason})
        if self.upstream is not None and session.subscribed:
            self.upstream.send(cpb.SelectorMessage(node_left=cpb.NodeLeft(node_id=session.node_id, reason=reason)))
        for task in open_tasks:
            self._fail_task(task, f"client disconnected: {reason}")

    def task_for(self, session: Session, task_id: str) -> tuple[Task, Content]:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None or task.node_id != session.node_id:
                raise SelectorError("NOT_FOUND", f"no task {task_id} for this client (cancelled or not yours)")
            content = self.contents.get(task.content_id)
            released = self._released.get(task.content_id)
        if content is None and released is not None and self.upstream is not None:
            # Every client had it, so it was let go; this one asks again (a retry): fetch it again.
            try:
                content = self.upstream.pull_content(task.content_id, *released)
            except Exception as exc:  # noqa: BLE001 - the coordinator may have closed the round since
                raise SelectorError("UNAVAILABLE", f"the instruction could not be fetched again: {exc}") from exc
        if content is None:
            raise SelectorError("UNAVAILABLE", "the instruction is not available yet")
        return task, content

    def pulled(self, task: Task) -> None:
        """`task`'s client received all of its content; the last client of a content lets it go."""
        with self._lock:
            waiting = self._unpulled.get(task.content_id)
            if waiting is None:
                return
            waiting.discard(task.task_id)
            if waiting or task.content_id not in self.contents:
                return
            del self.contents[task.content_id]
            self._released[task.content_id] = (task.content_size, task.content_sha256)
        log.debug("instruction content released: every client pulled it", extra={"content_id": task.content_id})

    def submit(self, session: Session, task_id: str, header: payload_pb2.PayloadHeader, content: Content) -> None:
        """Take a client's whole reply (see `receive_result`)."""
        self.receive_result(session, task_id, header, iter_chunks(content))

    def receive_result(
        self,
        session: Session,
        task_id: str,
        header: payload_pb2.PayloadHeader,
        chunks: Iterable[bytes | memoryview],
        cancel: Callable[[], None] | None = None,
    ) -> None:
        """Take a client's reply as it streams in: fold it into the partial aggregate or pass it on.

        Folding buffers one reply at a time per slot and adds it to the running
        sum straight from the received bytes; with `cancel` (the upload's RPC),
        an upload too slow to hold a slot is cut off (UploadWatch). Forwarding
        never buffers: chunks go to the coordinator as they arrive.
        """
        try:
            if header.content_size > MAX_CONTENT_SIZE:
                raise RejectedReply(
                    "too-large", f"content of {header.content_size} bytes exceeds the limit of {MAX_CONTENT_SIZE} bytes"
                )
            check_header(header.metadata, header.error)
            task, batch = self._claim(session, task_id, header.content_size)
        except (SelectorError, PayloadError) as exc:
            # Nothing was taken: the task (if it is this client's) stays open.
            self._count_rejected(session.node_id, task_id, exc)
            raise
        try:
            if batch.acc is not None and not header.error:
                with self._fold_slots:
                    if cancel is not None and not isinstance(chunks, Whole):  # a whole reply is all here
                        chunks = UploadWatch(cancel, **self.upload_limits).chunks(iter(chunks))
                    content = assemble(header.content_size, header.content_sha256, chunks)
                    if self._fold(batch, task, session.node_id, header, content):
                        return
                    self._forward(batch, task, session.node_id, header, content)
            else:
                self._forward(batch, task, session.node_id, header, chunks)
        except BaseException as exc:
            if isinstance(exc, (SelectorError, PayloadError)):
                self._count_rejected(session.node_id, task_id, exc)
            if isinstance(exc, RejectedReply) and exc.reason == "stalled":
                # The upload's RPC was cancelled, which carries no reason: say it on the client's stream.
                session.outbox.put(spb.SelectorEvent(cancelled=spb.TaskCancelled(task_id=task_id, reason=str(exc))))
            self._abandon(task, exc)
            raise

    def _claim(self, session: Session, task_id: str, size: int) -> tuple[Task, BatchState]:
        with self._lock:
            task = self.tasks.get(task_id)
            if task is None or task.node_id != session.node_id:
                closed = self._closed.get(task_id)
                # Another client's task is answered as an unknown one: ids are not confirmed to strangers.
                if closed is not None and closed[0] == session.node_id:
                    raise _closed_error(task_id, closed[1])
                raise SelectorError(
                    "NOT_FOUND", f"task {task_id} was not given to this client; answer only the tasks you were sent"
                )
            if task.state not in ("announced", "pending"):
                raise _closed_error(task_id, task.state)
            batch = self.batches.get(task.batch_id)
            if batch is None or batch.finalized:
                raise _closed_error(task_id, "cancelled")
            limit = reply_size_limit(
                task.content_size, task.message_type, sends_arrays=bool(self.models.get(task.content_id))
            )
            if size > limit:
                raise RejectedReply(
                    "too-large",
                    f"the result declares {size} bytes; a reply to this task may have at most {limit} bytes "
                    f"(its instruction's {task.content_size} bytes plus room for metrics)",
                )
            task.state = "receiving"
        return task, batch

    def _tasks_of(self, node_id: int) -> list[Task]:
        """The node's tasks still held (call with the lock held)."""
        held = (self.tasks.get(t) for t in self._node_tasks.get(node_id, ()))
        return [t for t in held if t is not None and t.node_id == node_id]

    def _untrack(self, task: Task) -> None:
        """Forget a task dropped from `tasks` in its node's index (call with the lock held)."""
        ids = self._node_tasks.get(task.node_id)
        if ids is not None:
            ids.discard(task.task_id)
            if not ids:
                del self._node_tasks[task.node_id]

    def _close(self, task: Task, state: str) -> None:
        """Move a task to a closed state ("done", "failed", "cancelled"); call with the lock held."""
        if task.state in OPEN:
            batch = self.batches.get(task.batch_id)
            if batch is not None:
                batch.open -= 1
        task.state = state

    def _remember_closed(self, task: Task, how: str) -> None:
        self._closed[task.task_id] = (task.node_id, how)
        self._closed.move_to_end(task.task_id)
        while len(self._closed) > 4096:
            self._closed.popitem(last=False)

    def _count_rejected(self, node_id: int, task_id: str, exc: SelectorError | PayloadError) -> None:
        if isinstance(exc, RejectedReply):
            reason = exc.reason
        elif isinstance(exc, PayloadError):
            reason = "bad-upload"
        else:
            reason = _CLAIM_REASONS.get(exc.code, exc.code.lower())
        with self._lock:
            self.rejected[reason] += 1
            count = self.rejected[reason]
        if self.on_reject is not None:
            self.on_reject(reason)
        log.warning(
            "reply rejected",
            extra={"rejected": reason, "detail": str(exc), "node_id": node_id, "task": task_id, "count": count},
        )

    def _abandon(self, task: Task, exc: BaseException) -> None:
        """A reply that failed mid-way: the task fails now instead of at the round deadline."""
        with self._lock:
            if task.state != "receiving":
                return
            task.state = "announced"
        if isinstance(exc, (SelectorError, PayloadError)):
            self._fail_task(task, f"{REJECTED}: {exc}")
        else:
            self._fail_task(task, f"the result upload failed: {exc}")

    def _fold(
        self, batch: BatchState, task: Task, node_id: int, header: payload_pb2.PayloadHeader, content: Content
    ) -> bool:
        """Add a reply to the batch's running sum; False if it must be forwarded on its own.

        Protection first (the content and its arrays must parse), then the reply
        policy: `strict` raises `RejectedReply` for a reply it refuses (arrays
        unlike the model's, NaN or Inf, an absurd weight); any policy says whether
        the reply may be folded. A reply that may not, or that does not fit the
        replies folded before it, is forwarded and leaves the sum untouched.
        """
        wire: WireRecords | None = None
        view: ReplyView | None = None
        try:
            try:
                wire = parse_content(content)
            except PayloadError as exc:
                raise RejectedReply("malformed", str(exc)) from exc
            model = self.models.get(task.content_id)
            view = inspect_reply(wire, model)
            self.reply_policy.judge(
                view, model, message_type=task.message_type, weight_key=batch.weight_key, exact=True
            )
            why = self.reply_policy.fold_refusal(
                view, model, message_type=task.message_type, weight_key=batch.weight_key
            )
            if why:
                raise NotAggregatable(why)
            with batch.lock:
                if batch.finalized or batch.acc is None:
                    raise SelectorError("DEADLINE_EXCEEDED", "the round closed before this result arrived")
                batch.acc.add(wire)
                batch.covered.append(task.task_id)
                batch.covered_nodes.append(node_id)
                if not batch.first_metadata:
                    batch.first_metadata = header.metadata
                batch.resolved.add(task.task_id)
        except NotAggregatable as exc:
            log.info("reply forwarded individually", extra={"task": task.task_id, "reason": str(exc)})
            return False
        finally:
            wire = view = None  # the views pin the buffer; drop them with it
        with self._lock:
            self._close(task, "done")
        self._progress(batch, task.task_id, True, "")
        self._maybe_finalize(batch)
        return True

    # ---- internals ---------------------------------------------------------------------------

    def _forward(
        self,
        batch: BatchState,
        task: Task,
        node_id: int,
        header: payload_pb2.PayloadHeader,
        content: Content | Iterable[bytes | memoryview],
    ) -> None:
        assert self.upstream is not None
        source = iter_chunks(content) if isinstance(content, (bytes, bytearray, memoryview)) else content
        checked = _Checked(header.content_size, header.content_sha256, source)
        try:
            res = self._push_forward(batch, task, node_id, header, iter(checked))
        except Exception as exc:
            # A bad reply surfaces as a failed upload; report what was wrong with it.
            if checked.error is not None:
                raise checked.error from exc
            raise
        with self._lock:
            self._close(task, "done")
            over = batch.open == 0
        with batch.lock:
            batch.resolved.add(task.task_id)
        if not res.accepted:
            log.info("coordinator refused a result", extra={"task": task.task_id, "detail": res.detail})
        self._maybe_finalize(batch)
        if over:
            # Only a batch with nothing left open has anything to let go: collecting after
            # every reply walked every task of the round each time, O(n^2) a round when each
            # of n replies goes on by itself (1.2 s a round at 2,500 clients a selector).
            self._gc()

    def _push_forward(
        self,
        batch: BatchState,
        task: Task,
        node_id: int,
        header: payload_pb2.PayloadHeader,
        chunks: Iterator[bytes],
    ) -> cpb.PushResultResponse:
        assert self.upstream is not None
        return self.upstream.push_result(
            cpb.ResultHeader(
                selector_id=self.selector_id,
                batch_id=batch.batch_id,
                aggregation=cpb.AGGREGATION_INDIVIDUAL,
                payload=header,
                message_ids=[task.task_id],
                node_ids=[node_id],
            ),
            chunks,
        )

    def _progress(self, batch: BatchState, task_id: str, ok: bool, detail: str) -> None:
        if batch.aggregation == cpb.AGGREGATION_WEIGHTED_MEAN and self.upstream is not None:
            self.upstream.send(
                cpb.SelectorMessage(
                    progress=cpb.TaskProgress(batch_id=batch.batch_id, message_id=task_id, ok=ok, detail=detail)
                )
            )

    def _fail_task(self, task: Task, detail: str) -> None:
        with self._lock:
            if task.state not in OPEN:
                return  # answered, failed or cancelled already
            self._close(task, "failed")
            batch = self.batches.get(task.batch_id)
        if batch is None:
            return
        with batch.lock:
            batch.resolved.add(task.task_id)
        self._progress(batch, task.task_id, False, detail)
        self._maybe_finalize(batch)

    def _maybe_finalize(self, batch: BatchState) -> None:
        with batch.lock:
            # `resolved` only ever holds the batch's own task ids: counting them says as much
            # as comparing the sets, without a pass over the round's tasks per reply.
            done = batch.acc is not None and len(batch.resolved) >= len(batch.task_ids)
        if done:
            self._finalize(batch)

    def _finalize(self, batch: BatchState) -> None:
        with batch.lock:
            if batch.finalized:
                return
            batch.finalized = True
            self._finalized.append(batch.batch_id)
        if batch.acc is not None:
            threading.Thread(target=self._send_aggregate, args=(batch,), daemon=True).start()
        self._gc()

    def _send_aggregate(self, batch: BatchState) -> None:
        assert self.upstream is not None
        acc = batch.acc
        content: WireContent = b""
        header = payload_pb2.PayloadHeader()
        if acc is not None and acc.count:
            # Streamed from the running sums themselves: no copy of the model.
            content = acc.encode_result()
            header = payload_pb2.PayloadHeader(
                metadata=batch.first_metadata,
                content_size=len(content),
                content_sha256=content_digest(content),
            )
        try:
            self.upstream.push_result(
                cpb.ResultHeader(
                    selector_id=self.selector_id,
                    batch_id=batch.batch_id,
                    aggregation=cpb.AGGREGATION_WEIGHTED_MEAN,
                    payload=header,
                    message_ids=batch.covered if content else [],
                    node_ids=batch.covered_nodes if content else [],
                    total_weight=acc.total_weight if acc is not None else 0.0,
                ),
                content,
            )
            log.info(
                "partial aggregate sent",
                extra={"batch": batch.batch_id, "clients": len(batch.covered), "bytes": len(content)},
            )
        except Exception as exc:  # noqa: BLE001 - the coordinator times the round out instead
            log.warning("partial aggregate upload failed", extra={"batch": batch.batch_id, "error": str(exc)})
            error = f"partial aggregate upload failed: {exc}"
        else:
            error = ""
        self._end_span(batch, error)
        batch.acc = None
        del content, acc

    @staticmethod
    def _end_span(batch: BatchState, error: str = "") -> None:
        """End the batch's span, once: its results are with the coordinator (or given up)."""
        with batch.lock:
            span, batch.span = batch.span, None
        if span is None:
            return
        span.set_attribute(
            "fedota.folded" if batch.acc is not None else "fedota.resolved",
            len(batch.covered) if batch.acc is not None else len(batch.resolved),
        )
        if error:
            span.set_status(trace.StatusCode.ERROR, error)
        span.end()

    def _gc(self) -> None:
        """Drop finished batches and contents nobody needs any more."""
        with self._lock:
            for bid, batch in list(self.batches.items()):
                if batch.open == 0 and (batch.acc is None or batch.finalized):
                    for t in batch.task_ids:
                        task = self.tasks.pop(t, None)
                        if task is not None:
                            self._untrack(task)
                            self._remember_closed(task, task.state)
                    del self.batches[bid]
                    if batch.aggregation != cpb.AGGREGATION_WEIGHTED_MEAN:
                        # Each reply went on by itself; a partial aggregate's upload ends its span.
                        self._end_span(batch)
            needed = {t.content_id for t in self.tasks.values() if t.state in ("pending", "announced")}
            for cid in list(self.contents):
                if cid not in needed:
                    del self.contents[cid]
            for kept in (self._released, self._unpulled):
                for cid in [c for c in kept if c not in needed]:
                    del kept[cid]
            answerable = {t.content_id for t in self.tasks.values()}
            for cid in list(self.models):
                if cid not in answerable:
                    del self.models[cid]

    def expire_idle(self, timeout: float) -> None:
        """Drop sessions whose heartbeats stopped (a client that vanished without a FIN)."""
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self.sessions.values() if now - s.last_seen > timeout]
        for session in stale:
            self.leave(session, "heartbeat timeout")


_CLAIM_REASONS = {
    "NOT_FOUND": "not-selected",
    "ALREADY_EXISTS": "already-answered",
    "DEADLINE_EXCEEDED": "round-closed",
}


def _closed_error(task_id: str, how: str) -> SelectorError:
    """What a client is told when it answers a task that no longer takes replies."""
    if how == "cancelled":
        return SelectorError(
            "DEADLINE_EXCEEDED",
            f"the round of task {task_id} closed before this result arrived (its deadline passed or it had "
            "enough results); wait for the next task",
        )
    if how == "failed":
        return SelectorError(
            "ALREADY_EXISTS", f"task {task_id} is closed: an earlier reply to it failed or was rejected"
        )
    return SelectorError("ALREADY_EXISTS", f"task {task_id} was already answered; send one reply per task")


def _inline_event(task: Task, content: Content) -> bytes | None:
    """`task`'s announcement with its header and content, when that fits one message."""
    header = payload_pb2.PayloadHeader(
        metadata=task.metadata, content_size=task.content_size, content_sha256=task.content_sha256
    )
    return inline_task_event(task.task_id, header, content)


def _message_type(metadata: bytes) -> str:
    """The Flower message type of an instruction (from the coordinator, so it decodes)."""
    try:
        return str(ProtoMetadata.FromString(metadata).message_type)
    except Exception:  # noqa: BLE001 - never seen (the coordinator wrote it); unknown only loosens the size bound
        return ""


class _Checked:
    """Pass chunks through while checking them against the announced size and hash.

    A mismatch raises inside the upstream call (which then fails) and is kept
    in `error` so the client is told what was wrong with its upload. The last
    chunk is held back until the client's stream has ended and checked out:
    a cancelled upload can look complete to the coordinator, which must
    therefore never have every byte of a reply that turned out bad (e.g. the
    announced bytes followed by more).
    """

    def __init__(self, size: int, sha256: str, chunks: Iterable[bytes | memoryview]) -> None:
        self.size = size
        self.sha256 = sha256
        self.chunks = chunks
        self.error: PayloadError | None = None

    def __iter__(self) -> Iterator[bytes]:
        # A reply sent without its hash (over TLS, see `payload.send_digests`) is not hashed here.
        digest = hashlib.sha256() if self.sha256 else None
        got = 0
        held: bytes | None = None
        try:
            for data in self.chunks:
                if len(data) > CHUNK_SIZE:
                    raise PayloadError(f"chunk of {len(data)} bytes exceeds the limit of {CHUNK_SIZE} bytes per chunk")
                got += len(data)
                if got > self.size:
                    raise PayloadError(f"received more than the announced {self.size} bytes of content")
                if digest is not None:
                    digest.update(data)
                if held is not None:
                    yield held
                held = data
            if got != self.size:
                raise PayloadError(f"content truncated: got {got} of {self.size} bytes")
            if digest is not None and digest.hexdigest() != self.sha256:
                raise PayloadError("content checksum mismatch")
            if held is not None:
                yield held
        except PayloadError as exc:
            self.error = exc
            raise
