"""Reports a run to the webserver: events, metrics and checkpoints.

The coordinator must keep training whether or not the webserver answers, so
nothing here blocks the caller: events go into a bounded in-memory buffer that a
background thread posts to `<report-url>events` as JSON lists, and checkpoint
files go to a second thread that streams them with `http.client` to
`<report-url>checkpoints/<round>/<npz|pt>?attempt=<K>` (a 1 GB model never sits in
memory; see `checkpoint_path`).
Both retry with exponential backoff while the webserver is away. A 4xx answer
other than 408/429 means retrying cannot help: the item is dropped and logged.

Every event has an `event_id` (uuid) so the webserver can apply a retried post
exactly once. Event kinds: `run_started`, `round_finished`, `pool`, `log`,
`run_finished`.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.rounds import EVAL_ACC_KEYS, EVAL_LOSS_KEYS, NO_TORCH, TRAIN_LOSS_KEYS, npz_to_pt

log = logging.getLogger(__name__)

MAX_EVENTS = 10_000
POST_BATCH = 200
BACKOFF_START = 0.5
BACKOFF_CAP = 30.0
POOL_INTERVAL = 5.0
# Rounds up to this size also get a PyTorch .pt (converted off the training path);
# bigger models would need the whole model in memory once more, so they keep only .npz.
ROUND_PT_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class NodeInfo:
    """What the reporter needs to know about a client to credit its contribution."""

    node_id: int
    selector_id: str
    participant: str
    site: str


class DropItem(Exception):
    """The webserver refused an item for good (4xx): retrying cannot help."""


class RetryLater(Exception):
    """The webserver is unreachable or busy; try the same item again later."""


class Target:
    """The webserver end of the report API: one base URL and a bearer token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        url = base_url if base_url.endswith("/") else base_url + "/"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"report URL must be http(s)://host/...: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.path = parts.path
        self.token = token
        self.timeout = timeout

    def connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def send(self, method: str, path: str, body: Any, headers: dict[str, str]) -> None:
        """Send one request; raises `RetryLater` or `DropItem` unless the answer is 2xx."""
        conn = self.connection()
        try:
            all_headers = {"Authorization": f"Bearer {self.token}", **headers}
            # A file object body is streamed by http.client in blocks; with a
            # Content-Length it is sent as is, never loaded whole.
            conn.request(method, self.path + path, body=body, headers=all_headers)
            resp = conn.getresponse()
            text = resp.read(2000).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise RetryLater(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        if 200 <= resp.status < 300:
            return
        if 400 <= resp.status < 500 and resp.status not in (408, 429):
            raise DropItem(f"HTTP {resp.status}: {text.strip()[:500]}")
        raise RetryLater(f"HTTP {resp.status}: {text.strip()[:200]}")


def checkpoint_path(round: int, kind: str, attempt: int = 1) -> str:
    """Where a model file of `round` (0 = the final model) of an attempt goes, below the report URL.

    The webserver keeps each attempt's files apart, so an attempt that restarted at round 1
    never overwrites an earlier one's. Attempt 1 is what a website takes when none is said,
    so its address is the one coordinators older than attempts used.
    """
    path = f"checkpoints/{round}/{kind}"
    return path if attempt == 1 else f"{path}?attempt={attempt}"


@dataclass
class Upload:
    round: int
    kind: str  # npz | pt
    path: Path
    # True when `path` is the reporter's own hard link or copy, removed after upload.
    owned: bool
    # Build the .pt from the .npz at `path` just before sending it.
    convert: bool = False
    # The coordinator's attempt when the file was queued.
    attempt: int = 1


class Reporter:
    """Buffers events and checkpoint uploads and delivers them in the background.

    `nodes` returns the hub's current clients; the reporter remembers every client
    it has seen, so a client that left before its round was reported is still
    credited.
    """

    def __init__(
        self,
        target: Target,
        *,
        nodes: Callable[[], list[NodeInfo]] | None = None,
        selectors: Callable[[], list[str]] | None = None,
        waiting: Callable[[], int] | None = None,
        spool_dir: Path | None = None,
        max_events: int = MAX_EVENTS,
        backoff_cap: float = BACKOFF_CAP,
        pool_interval: float = POOL_INTERVAL,
        round_pt_max_bytes: int = ROUND_PT_MAX_BYTES,
    ) -> None:
        self.target = target
        self._nodes = nodes
        self._selectors = selectors
        # How many clients a round waits for (0: none), sent with the pool snapshots.
        self._waiting = waiting
        self.spool_dir = spool_dir
        self.max_events = max_events
        self.backoff_cap = backoff_cap
        self.pool_interval = pool_interval
        self.round_pt_max_bytes = round_pt_max_bytes
        # Which start of the run's coordinator this is; `run_started` says, and uploads carry it.
        self.attempt = 1
        self.cond = threading.Condition()
        self.events: collections.deque[dict[str, Any]] = collections.deque()
        self.uploads: collections.deque[Upload] = collections.deque()
        # The upload in flight (still first in `uploads` until it is done).
        self._sending: Upload | None = None
        self.dropped = 0  # events lost to the buffer bound
        self.refused = 0  # events or uploads the webserver refused for good
        self.delivered = 0
        self._known: dict[int, NodeInfo] = {}
        self._last_pool: dict[str, int] | None = None
        self._last_pool_at = 0.0
        self._closing = False
        self._abandoned = False  # close() ran out of time: stop trying
        self._threads = [
            threading.Thread(target=self._event_loop, name="report-events", daemon=True),
            threading.Thread(target=self._upload_loop, name="report-uploads", daemon=True),
        ]

    # ---- producer side (never blocks on the network) -----------------------------------

    def start(self) -> None:
        """Start the delivery threads."""
        self._pool_tick()  # the dashboard shows the pool from the first moment
        for t in self._threads:
            t.start()

    def emit(self, kind: str, **data: Any) -> None:
        """Queue one event; when the buffer is full the oldest `log` events go first."""
        event = {"event_id": uuid.uuid4().hex, "ts": time.time(), "kind": kind, **data}
        with self.cond:
            if len(self.events) >= self.max_events:
                self._drop_one()
            self.events.append(event)
            self.cond.notify_all()

    def _drop_one(self) -> None:
        for i, ev in enumerate(self.events):
            if ev["kind"] == "log":
                del self.events[i]
                break
        else:
            # Only state events are buffered: the oldest pool snapshot is the least useful.
            pools = [i for i, ev in enumerate(self.events) if ev["kind"] == "pool"]
            del self.events[pools[0] if pools else 0]
        self.dropped += 1

    def run_started(
        self, *, total_rounds: int | None, app: str, fab_sha256: str, reply_policy: str = "", attempt: int = 1
    ) -> None:
        """Report that the ServerApp is about to start (and under which reply policy, `flower` or `strict`).

        `attempt` is this start's number on the run (`resume.begin_attempt`); the model files
        queued from now on are uploaded as that attempt's.
        """
        policy = {"reply_policy": reply_policy} if reply_policy else {}
        with self.cond:
            self.attempt = attempt
        self.emit("run_started", total_rounds=total_rounds, app=app, fab_sha256=fab_sha256, attempt=attempt, **policy)

    def round_finished(self, doc: dict[str, Any]) -> None:
        """`RoundTracker.on_round`: report a finished round with its participants resolved."""
        self._refresh_nodes()
        train = dict(doc.get("train_metrics") or {})
        evaluate = dict(doc.get("eval_metrics") or {})
        self.emit(
            "round_finished",
            round=doc.get("round"),
            attempt=doc.get("attempt", 1),
            started=doc.get("started"),
            finished=doc.get("finished"),
            seconds=doc.get("seconds"),
            failures=doc.get("failures", 0),
            rejected=doc.get("rejected", 0),
            # Read by a website that knows them (older ones ignore unknown fields):
            # why replies were rejected, and whether the round got any result at all.
            rejected_reasons=dict(doc.get("rejected_reasons") or {}),
            results=doc.get("results", 0),
            no_results=bool(doc.get("no_results", False)),
            participants=[self._who(n) for n in doc.get("participants", [])],
            eval_participants=[self._who(n) for n in doc.get("eval_nodes", [])],
            train_metrics=train,
            eval_metrics=evaluate,
            train_loss=_first(train, TRAIN_LOSS_KEYS),
            eval_loss=_first(evaluate, EVAL_LOSS_KEYS),
            eval_acc=_first(evaluate, EVAL_ACC_KEYS),
            checkpoint=bool(doc.get("checkpoint")),
            # "completed", why SecAgg+ halted, or "" when the round did not use it.
            secure_aggregation=str(doc.get("secure_aggregation") or "")[:300],
        )

    def site_privacy(self, relayed: Any) -> None:
        """Report a site's self-reported privacy budget (a `SitePrivacy` its selector relayed)."""
        self._refresh_nodes()
        who = self._who(relayed.node_id)
        if relayed.participant:
            # A site that stopped at check-in was never announced: the selector names it.
            who.update(participant=relayed.participant, site=relayed.display_name or who["site"])
        report = relayed.report
        self.emit(
            "site_privacy",
            **who,
            state=report.state,
            epsilon=report.epsilon,
            delta=report.delta,
            epsilon_cap=report.epsilon_cap if report.HasField("epsilon_cap") else None,
            noise_multiplier=report.noise_multiplier,
            clipping_norm=report.clipping_norm,
            releases=report.releases,
            run_releases=report.run_releases,
            round=report.round or None,
            reason=report.reason[:2000],
        )

    def run_finished(self, *, ok: bool, detail: str) -> None:
        """Report the end of the run (success or failure)."""
        self.emit("run_finished", ok=ok, detail=detail, dropped_events=self.dropped)

    def log_line(self, level: str, message: str, source: str = "coordinator") -> None:
        """Report one line for the dashboard's log view."""
        self.emit("log", level=level, message=message[:4000], source=source)

    def checkpoint(self, round: int, path: Path, kind: str = "npz") -> None:
        """Queue a file for upload. The file is pinned first (hard link), so pruning old
        checkpoints on disk cannot delete it before it is sent.

        A round's `.npz` of at most `round_pt_max_bytes` is also offered as `.pt`.
        """
        pinned, owned = path, False
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            pinned = self.spool_dir / f"{uuid.uuid4().hex}-{path.name}"
            try:
                os.link(path, pinned)
                owned = True
            except OSError:
                try:
                    shutil.copyfile(path, pinned)
                    owned = True
                except OSError as exc:
                    log.warning("cannot pin checkpoint for upload", extra={"path": str(path), "error": str(exc)})
                    pinned = path
        with self.cond:
            if round == 0:
                # The final model goes ahead of every round's file still waiting (behind the one
                # being sent): when rounds outpace the uploads, the run's result must not be what
                # the exit's deadline cuts off.
                at = 0 if self._sending is None else 1
                finals = [u for u in self.uploads if u.round == 0 and u is not self._sending]
                self.uploads.insert(at + len(finals), Upload(round, kind, pinned, owned, attempt=self.attempt))
                self.cond.notify_all()
                return
            if kind == "npz" and _size(pinned) <= self.round_pt_max_bytes:
                # Before the .npz upload, which removes the pinned file once sent.
                self.uploads.append(Upload(round, "pt", pinned, False, convert=True, attempt=self.attempt))
            self.uploads.append(Upload(round, kind, pinned, owned, attempt=self.attempt))
            self.cond.notify_all()

    # ---- pool ----------------------------------------------------------------------------

    def _refresh_nodes(self) -> list[NodeInfo]:
        current = self._nodes() if self._nodes is not None else []
        for n in current:
            self._known[n.node_id] = n
        return current

    def _who(self, node_id: int) -> dict[str, Any]:
        info = self._known.get(node_id)
        if info is None:
            return {"node_id": node_id, "participant": "", "site": f"site {node_id}"}
        return {"node_id": node_id, "participant": info.participant, "site": info.site}

    def _pool_tick(self) -> None:
        """Emit a pool snapshot when it changed, and at least every `pool_interval`."""
        if self._nodes is None:
            return
        try:
            current = self._refresh_nodes()
            counts = {s: 0 for s in (self._selectors() if self._selectors is not None else [])}
        except Exception:  # noqa: BLE001 - a pool snapshot is optional; never kill the thread
            log.exception("pool snapshot failed")
            return
        for n in current:
            counts[n.selector_id] = counts.get(n.selector_id, 0) + 1
        waiting = {"waiting_for": self._waiting()} if self._waiting is not None else {}
        snapshot = {**counts, **{f" {k}": v for k, v in waiting.items()}}
        now = time.monotonic()
        if snapshot != self._last_pool or now - self._last_pool_at >= self.pool_interval:
            self._last_pool, self._last_pool_at = snapshot, now
            self.emit("pool", selectors=counts, clients=sum(counts.values()), **waiting)

    # ---- delivery -----------------------------------------------------------------------

    def _event_loop(self) -> None:
        backoff = 0.0
        while True:
            with self.cond:
                if not self.events and not self._closing:
                    self.cond.wait(timeout=1.0)
                if self._abandoned or (self._closing and not self.events):
                    return
                batch = [self.events[i] for i in range(min(POST_BATCH, len(self.events)))]
                closing = self._closing
            if not closing:
                self._pool_tick()
            if not batch:
                continue
            try:
                self._post(batch)
            except RetryLater as exc:
                backoff = self._backoff(backoff, "events", str(exc))
                continue
            except DropItem:
                # One bad event must not hold back the rest: resend one by one to find it.
                batch = self._isolate(batch)
            else:
                self.delivered += len(batch)
            backoff = 0.0
            self._forget(batch)

    def _post(self, events: list[dict[str, Any]]) -> None:
        body = json.dumps(events, default=str).encode()
        self.target.send("POST", "events", body, {"Content-Type": "application/json"})

    def _isolate(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send events one at a time; returns those settled (delivered or refused)."""
        done: list[dict[str, Any]] = []
        for ev in batch:
            try:
                self._post([ev])
                self.delivered += 1
            except DropItem as exc:
                self.refused += 1
                log.warning(
                    "webserver refused an event; dropped",
                    extra={"kind": ev.get("kind"), "event_id": ev.get("event_id"), "reason": str(exc)},
                )
            except RetryLater:
                break  # the rest stays buffered for the next attempt
            done.append(ev)
        return done

    def _forget(self, batch: list[dict[str, Any]]) -> None:
        ids = {id(ev) for ev in batch}
        with self.cond:
            # Events dropped by the buffer bound meanwhile are simply absent.
            self.events = collections.deque(ev for ev in self.events if id(ev) not in ids)
            self.cond.notify_all()

    def _upload_loop(self) -> None:
        backoff = 0.0
        while True:
            with self.cond:
                while not self.uploads and not self._closing:
                    self.cond.wait(timeout=1.0)
                if self._abandoned or not self.uploads:
                    return
                item = self._sending = self.uploads[0]
            try:
                self._upload(item)
            except RetryLater as exc:
                backoff = self._backoff(backoff, "checkpoints", str(exc))
                continue
            except DropItem as exc:
                self.refused += 1
                log.warning(
                    "webserver refused a checkpoint; dropped",
                    extra={"round": item.round, "kind": item.kind, "reason": str(exc)},
                )
            except OSError as exc:
                log.warning(
                    "checkpoint file unreadable; not uploaded",
                    extra={"round": item.round, "path": str(item.path), "error": str(exc)},
                )
            except Exception:  # noqa: BLE001 - this thread must outlive any one bad item
                log.exception("checkpoint upload failed", extra={"round": item.round, "kind": item.kind})
            backoff = 0.0
            if item.owned:
                item.path.unlink(missing_ok=True)
            with self.cond:
                # Still first: a final model queued meanwhile went in behind it.
                self.uploads.popleft()
                self._sending = None
                self.cond.notify_all()

    def _upload(self, item: Upload) -> None:
        if item.convert:
            try:
                pt = _npz_to_pt(item.path)
            except Exception as exc:  # noqa: BLE001 - the .npz is still sent; the .pt is a convenience
                log.warning("could not convert a checkpoint to .pt", extra={"round": item.round, "error": str(exc)})
                return
            if pt is None:
                return
            try:
                self._send_file(item, pt)
            finally:
                pt.unlink(missing_ok=True)
            return
        self._send_file(item, item.path)

    def _send_file(self, item: Upload, path: Path) -> None:
        size = path.stat().st_size
        with path.open("rb") as fh:
            self.target.send(
                "PUT",
                checkpoint_path(item.round, item.kind, item.attempt),
                fh,
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )

    def _backoff(self, previous: float, what: str, reason: str) -> float:
        delay = min(self.backoff_cap, max(BACKOFF_START, previous * 2))
        # One line when the webserver goes away, not one per retry: a long outage (or the
        # brisk retries of the final flush) must not bury the log lines that matter.
        level = logging.INFO if previous == 0.0 else logging.DEBUG
        log.log(level, "webserver unreachable; will retry", extra={"what": what, "retry_in": delay, "reason": reason})
        with self.cond:
            if self._closing:
                # Flushing at shutdown: retry briskly within the close deadline.
                self.cond.wait(timeout=min(delay, 0.5))
            else:
                # Wake early on close so the final flush does not wait out a long backoff.
                self.cond.wait_for(lambda: self._closing, timeout=delay)
        return delay

    # ---- shutdown -------------------------------------------------------------------------

    def pending_upload_bytes(self) -> int:
        """Bytes of checkpoint files still waiting to be sent."""
        with self.cond:
            return sum(_size(u.path) for u in self.uploads)

    def pending_uploads(self) -> int:
        """How many checkpoint files are still waiting to be sent."""
        with self.cond:
            return len(self.uploads)

    def close(self, timeout: float = 10.0) -> bool:
        """Deliver what is buffered for up to `timeout` seconds; True if all was sent."""
        end = time.monotonic() + timeout
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=max(0.0, end - time.monotonic()))
        with self.cond:
            self._abandoned = True
            self.cond.notify_all()
            left_events, left_uploads = len(self.events), len(self.uploads)
        if left_events or left_uploads:
            log.warning(
                "report buffer not fully delivered",
                extra={"events": left_events, "uploads": left_uploads, "dropped": self.dropped},
            )
        return not (left_events or left_uploads)


class ReportHandler(logging.Handler):
    """Forwards WARNING+ log records to the reporter (never the reporter's own)."""

    def __init__(self, reporter: Reporter, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == __name__:
            return  # reporting "cannot report" would loop
        try:
            message = record.getMessage()
            # The why of a structured warning ("reply rejected", detail=...) is in its fields;
            # the dashboard shows the message alone, so the detail goes with it.
            detail = getattr(record, "detail", None)
            if isinstance(detail, str) and detail:
                message = f"{message}: {detail}"
            if record.exc_info and record.exc_info[1] is not None:
                message = f"{message}: {record.exc_info[1]}"
            self.reporter.log_line(record.levelname, message, source=record.name)
        except Exception:  # noqa: BLE001 - logging must never raise into training
            self.handleError(record)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _npz_to_pt(npz: Path) -> Path | None:
    """Write the .npz's arrays as a PyTorch state_dict beside it; None without torch.

    Converted in a child process (`npz_to_pt`): torch is never imported here.
    """
    pt = npz.with_name(npz.name + ".pt")
    problem = npz_to_pt(npz, pt)
    if problem == NO_TORCH:
        return None
    if problem:
        raise RuntimeError(problem)
    return pt


def _first(metrics: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None
