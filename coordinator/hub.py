"""The coordinator's state: the node pool, instruction batches and their results.

Everything the gRPC servicer (selectors) and the Grid (the ServerApp) share goes
through one `Hub` guarded by one condition variable. Protobuf types stop here:
the servicer hands in decoded headers and bytes.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

from flwr.app import RecordDict

from fedota_common.aggregate import MAX_WEIGHT, REJECTED, ModelSpec, inspect_reply
from fedota_common.payload import (
    MAX_CONTENT_SIZE,
    PayloadError,
    RejectedReply,
    WireContent,
    check_header,
    parse_content,
)
from fedota_common.replies import ReplyPolicy, StrictPolicy
from fedota_common.runstatus import to_proto
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.payload.v1 import payload_pb2

log = logging.getLogger(__name__)


@dataclass
class SelectorLink:
    """One attached selector and the queue of messages pushed to it."""

    selector_id: str
    outbox: queue.Queue[cpb.CoordinatorMessage | None] = field(default_factory=queue.Queue)


@dataclass
class Node:
    node_id: int
    selector_id: str
    display_name: str
    # Participant id resolved by the selector ("" when unknown); credits contributions.
    participant: str = ""

    def __post_init__(self) -> None:
        if not self.display_name:
            self.display_name = f"site {self.node_id}"


@dataclass
class Result:
    """A result as received: one client's reply or a selector's partial aggregate."""

    selector_id: str
    header: payload_pb2.PayloadHeader
    content: WireContent
    message_ids: list[str]
    node_ids: list[int]
    weight: float
    aggregate: bool
    # Built here, not received: the merged partial means (coordinator/merging.py).
    decoded: RecordDict | None = None


@dataclass
class Instr:
    message_id: str
    node_id: int
    selector_id: str
    original: bool
    state: str = "pending"  # pending | ok | failed
    detail: str = ""
    content_id: str = ""
    # Still pending when its batch closed: on Flower's runtime such a message just gets no reply.
    late: bool = False


@dataclass
class Pulled:
    """What one pull_messages call gets: results, failed instructions, and ids answered "unavailable"."""

    results: list[tuple[Batch, Result]] = field(default_factory=list)
    failed: list[tuple[Batch, Instr]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass
class Batch:
    batch_id: str
    message_type: str
    group_id: str
    aggregation: int
    target: int
    instrs: dict[str, Instr]
    contents: dict[str, WireContent]
    results: list[Result] = field(default_factory=list)
    # Selectors that still owe a partial aggregate (or an empty one) for this batch.
    owing: set[str] = field(default_factory=set)
    closed: bool = False
    # Message ids whose reply (or error) was handed to the ServerApp (pull_messages).
    taken: set[str] = field(default_factory=set)
    # Each stored result by every message id it answers.
    result_of: dict[str, Result] = field(default_factory=dict)
    # Opened by push_messages: forgotten once every reply was pulled.
    pulled: bool = False
    # What replies are checked against: each content's arrays, the weight key, the size bound.
    models: dict[str, ModelSpec] = field(default_factory=dict)
    weight_key: str = ""
    reply_limit: int = MAX_CONTENT_SIZE
    # Whether the reply policy judges values: only a Flower strategy's rounds send the
    # model and expect it back (SecAgg+ stages and a ServerApp's own messages do not).
    judged: bool = True
    # Instructions by state and by node, kept up to date by `mark`: a round's wait looks at the
    # counts on every reply, and a leaving node at its own instructions, so neither walks the
    # whole batch (with 1,000 clients, a million steps a round under the hub's lock).
    _states: collections.Counter[str] = field(default_factory=collections.Counter, init=False, repr=False)
    _by_node: dict[int, list[Instr]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for instr in self.instrs.values():
            self._states[instr.state] += 1
            self._by_node.setdefault(instr.node_id, []).append(instr)

    def count(self, state: str) -> int:
        return self._states[state]

    def mark(self, instr: Instr, state: str, detail: str | None = None) -> None:
        """Set an instruction's state (every change after the batch is made goes through here)."""
        self._states[instr.state] -= 1
        self._states[state] += 1
        instr.state = state
        if detail is not None:
            instr.detail = detail

    def of_node(self, node_id: int) -> list[Instr]:
        return self._by_node.get(node_id, [])


class Hub:
    """Thread-safe coordinator state."""

    def __init__(self, reply_policy: ReplyPolicy | None = None) -> None:
        self.cond = threading.Condition()
        # Judges replies' values once protection let them through (strict unless told).
        self.reply_policy: ReplyPolicy = reply_policy or StrictPolicy()
        self.selectors: dict[str, SelectorLink] = {}
        self.nodes: dict[int, Node] = {}
        self.batches: dict[str, Batch] = {}
        self._msg_batch: dict[str, str] = {}
        self._ids = itertools.count(1)
        self.finished = False
        # How many clients a Flower strategy is waiting for right now (0: not waiting); see the Grid.
        self.waiting_for = 0
        # The RunFinished every selector gets, once the run is over (also on attaching later).
        self.ended: cpb.CoordinatorMessage | None = None
        # Results refused by `check_result`, by reason (each also logged as "reply rejected").
        self.rejected: collections.Counter[str] = collections.Counter()
        # Who may join (coordinator/roster.py); None until the first list arrives.
        self.participants: cpb.Participants | None = None
        # Called when a selector asks for a fresh list (the roster poller's poll_soon).
        self.on_roster_request: Callable[[], None] | None = None
        # A site's self-reported privacy budget, relayed by its selector.
        self.on_privacy: Callable[[cpb.SitePrivacy], None] | None = None
        # Told each refused result's reason (the metrics' rejection counter).
        self.on_reject: Callable[[str], None] | None = None

    # ---- selectors and pool -------------------------------------------------

    def attach(self, selector_id: str, nodes: Iterable[tuple[int, str] | tuple[int, str, str]]) -> SelectorLink:
        """Register a selector (replacing an earlier link with the same id).

        `nodes` are the clients already checked in: (node id, display name[, participant]).
        """
        with self.cond:
            old = self.selectors.get(selector_id)
            if old is not None:
                old.outbox.put(None)
                self._drop_selector_nodes(selector_id, "selector reconnected")
            link = SelectorLink(selector_id)
            self.selectors[selector_id] = link
            if self.participants is not None:
                # Queued before anything else, so it follows the Welcome.
                link.outbox.put(cpb.CoordinatorMessage(participants=self.participants))
            for item in nodes:
                participant = item[2] if len(item) == 3 else ""
                self.nodes[item[0]] = Node(item[0], selector_id, item[1], participant)
            self.cond.notify_all()
            return link

    def detach(self, link: SelectorLink) -> None:
        """Forget a selector whose stream ended, failing its nodes' pending work."""
        with self.cond:
            if self.selectors.get(link.selector_id) is link:
                del self.selectors[link.selector_id]
                self._drop_selector_nodes(link.selector_id, "selector disconnected")
                for batch in self.batches.values():
                    batch.owing.discard(link.selector_id)
            self.cond.notify_all()

    def _drop_selector_nodes(self, selector_id: str, reason: str) -> None:
        for node_id in [n.node_id for n in self.nodes.values() if n.selector_id == selector_id]:
            self._node_left(node_id, reason)

    def node_joined(self, selector_id: str, node_id: int, name: str, participant: str = "") -> None:
        with self.cond:
            node = self.nodes[node_id] = Node(node_id, selector_id, name, participant)
            log.info(
                "node joined",
                extra={
                    "node_id": node_id,
                    "selector": selector_id,
                    "site": node.display_name,
                    "participant": participant,
                },
            )
            self.cond.notify_all()

    def node_left(self, node_id: int, reason: str) -> None:
        with self.cond:
            self._node_left(node_id, reason)
            self.cond.notify_all()

    def _node_left(self, node_id: int, reason: str) -> None:
        if self.nodes.pop(node_id, None) is None:
            return
        log.info("node left", extra={"node_id": node_id, "reason": reason})
        for batch in self.batches.values():
            if batch.closed:
                continue
            for instr in batch.of_node(node_id):
                if instr.state == "pending":
                    batch.mark(instr, "failed", f"node left: {reason}")

    def wait_for_nodes(self, count: int, timeout: float) -> bool:
        """Block until `count` nodes are checked in; False on timeout."""
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.nodes) < count:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(timeout=min(remaining, 1.0))
            return True

    def node_ids(self) -> list[int]:
        with self.cond:
            return list(self.nodes)

    def busy_nodes(self) -> set[int]:
        """Nodes with an unanswered instruction in an open batch."""
        with self.cond:
            return {
                i.node_id
                for b in self.batches.values()
                if not b.closed
                for i in b.instrs.values()
                if i.state == "pending"
            }

    def selector_of(self, node_id: int) -> str | None:
        with self.cond:
            node = self.nodes.get(node_id)
            return node.selector_id if node else None

    # ---- batches --------------------------------------------------------------

    def new_batch_id(self) -> str:
        return f"b{next(self._ids)}-{uuid.uuid4().hex[:8]}"

    def open_batch(self, batch: Batch, per_selector: dict[str, cpb.Instructions]) -> None:
        """Record a batch and push its instructions to the selectors."""
        with self.cond:
            self.batches[batch.batch_id] = batch
            for mid in batch.instrs:
                self._msg_batch[mid] = batch.batch_id
            for selector_id, instructions in per_selector.items():
                link = self.selectors.get(selector_id)
                if link is None:
                    for item in instructions.items:
                        batch.mark(batch.instrs[item.message_id], "failed", "selector not attached")
                    continue
                if instructions.aggregation == cpb.AGGREGATION_WEIGHTED_MEAN:
                    batch.owing.add(selector_id)
                link.outbox.put(cpb.CoordinatorMessage(instructions=instructions))
            self.cond.notify_all()

    def content(self, content_id: str) -> WireContent | None:
        with self.cond:
            batch_id = content_id.split("/", 1)[0]
            batch = self.batches.get(batch_id)
            return None if batch is None else batch.contents.get(content_id)

    def progress(self, batch_id: str, message_id: str, ok: bool, detail: str) -> None:
        with self.cond:
            batch = self.batches.get(batch_id)
            instr = batch.instrs.get(message_id) if batch else None
            if instr is None or batch is None or batch.closed or instr.state != "pending":
                return
            batch.mark(instr, "ok" if ok else "failed", detail)
            self.cond.notify_all()

    def reply_limit(self, batch_id: str) -> int:
        """The most bytes a result for `batch_id` may declare (checked before any byte is buffered)."""
        with self.cond:
            batch = self.batches.get(batch_id)
            return MAX_CONTENT_SIZE if batch is None else batch.reply_limit

    def check_result(self, result: Result, batch_id: str) -> str:
        """Check a result before it is stored; "" if it may be, else what was wrong and what was expected.

        Two layers. Protection always runs: the ServerApp decodes every stored
        result, so a header or content that does not parse (or a partial
        aggregate without weight) is refused here, where one client cannot end
        the run with it. Then, in a Flower strategy's rounds, the reply policy
        judges the values: `strict` refuses what `judge_reply` refuses, `flower`
        lets through whatever Flower's runtime would deliver. A refused client reply fails its
        instructions at once (the round stops waiting for them) with a reason
        starting "reply rejected"; a refused partial aggregate no longer holds
        up the round's flush. Checked outside the lock: the scan is O(size).
        """
        with self.cond:
            batch = self.batches.get(batch_id)
            if batch is None or batch.closed or not result.message_ids:
                return ""  # add_result refuses it, or there is nothing to check
            instr = batch.instrs.get(result.message_ids[0])
            model = batch.models.get(instr.content_id) if instr is not None else None
            exact = batch.aggregation == cpb.AGGREGATION_WEIGHTED_MEAN
            message_type, weight_key, judged = batch.message_type, batch.weight_key, batch.judged
        try:
            check_header(result.header.metadata, result.header.error)
            if result.aggregate and not (math.isfinite(result.weight) and result.weight > 0):
                raise RejectedReply("weight", f"total weight {result.weight!r} of a partial aggregate must be positive")
            if not result.header.error:
                try:
                    wire = parse_content(result.content)
                except PayloadError as exc:
                    raise RejectedReply("malformed", str(exc)) from exc
                view = inspect_reply(wire, model)
                # A partial aggregate's weight is a sum over clients: no per-site bound.
                max_weight = math.inf if result.aggregate else MAX_WEIGHT
                if judged:
                    self.reply_policy.judge(
                        view,
                        model,
                        message_type=message_type,
                        weight_key=weight_key,
                        exact=exact,
                        max_weight=max_weight,
                    )
                del view, wire
        except RejectedReply as exc:
            reason, problem = exc.reason, str(exc)
        else:
            return ""
        with self.cond:
            self.rejected[reason] += 1
            count = self.rejected[reason]
            if result.aggregate:
                batch.owing.discard(result.selector_id)
            else:
                for mid in result.message_ids:
                    instr = batch.instrs.get(mid)
                    if instr is not None and instr.state == "pending":
                        batch.mark(instr, "failed", f"{REJECTED}: {problem}")
            self.cond.notify_all()
        if self.on_reject is not None:
            self.on_reject(reason)
        log.warning(
            "reply rejected",
            extra={
                "rejected": reason,
                "detail": problem,
                "selector": result.selector_id,
                "batch": batch_id,
                "nodes": ",".join(str(n) for n in result.node_ids),
                "aggregate": result.aggregate,
                "count": count,
            },
        )
        return problem

    def add_result(self, result: Result, batch_id: str) -> str:
        """Store a result; returns "" if accepted, else why it was refused."""
        with self.cond:
            batch = self.batches.get(batch_id)
            if batch is None:
                return f"unknown batch {batch_id}"
            if result.aggregate:
                batch.owing.discard(result.selector_id)
            if batch.closed:
                return "the round is closed; result dropped"
            known = [m for m in result.message_ids if m in batch.instrs]
            if len(known) != len(result.message_ids):
                return "result answers instructions this batch did not send"
            if result.message_ids:
                for mid in known:
                    instr = batch.instrs[mid]
                    if instr.state == "failed" and not result.aggregate:
                        return "instruction already failed"
                    batch.mark(instr, "ok" if not result.header.error else "failed")
                    batch.result_of[mid] = result
                batch.results.append(result)
            self.cond.notify_all()
            return ""

    def wait(self, batch: Batch, deadline: float, *, close_at_target: bool) -> None:
        """Block until every instruction is resolved, the target is met, or the deadline."""
        with self.cond:
            while True:
                pending = batch.count("pending")
                ok = batch.count("ok")
                if pending == 0 or (close_at_target and ok >= batch.target):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "round deadline reached",
                        extra={"batch": batch.batch_id, "pending": pending, "ok": ok},
                    )
                    break
                self.cond.wait(timeout=min(remaining, 1.0))

    def flush(self, batch: Batch, grace: float) -> None:
        """Ask selectors that owe a partial aggregate to send it now, and wait for it."""
        with self.cond:
            for selector_id in list(batch.owing):
                link = self.selectors.get(selector_id)
                if link is None:
                    batch.owing.discard(selector_id)
                    continue
                still_open = any(i.selector_id == selector_id and i.state == "pending" for i in batch.instrs.values())
                # A selector whose clients all answered sends its aggregate by itself.
                if still_open:
                    link.outbox.put(cpb.CoordinatorMessage(flush=cpb.Flush(batch_id=batch.batch_id)))
            end = time.monotonic() + grace
            while batch.owing and time.monotonic() < end:
                self.cond.wait(timeout=0.5)
            if batch.owing:
                log.warning(
                    "selectors did not deliver partial aggregates",
                    extra={"batch": batch.batch_id, "selectors": ",".join(sorted(batch.owing))},
                )

    def close(self, batch: Batch, reason: str) -> None:
        """Stop accepting results for a batch and tell selectors to drop its leftovers."""
        with self.cond:
            batch.closed = True
            leftovers: dict[str, list[str]] = {}
            for instr in batch.instrs.values():
                if instr.state == "pending":
                    batch.mark(instr, "failed", reason)
                    instr.late = True
                    leftovers.setdefault(instr.selector_id, []).append(instr.message_id)
            for selector_id, mids in leftovers.items():
                link = self.selectors.get(selector_id)
                if link is not None:
                    link.outbox.put(cpb.CoordinatorMessage(cancel=cpb.Cancel(message_ids=mids, reason="round closed")))
            batch.contents.clear()

    def take_results(self, message_ids: Iterable[str]) -> Pulled:
        """Hand out, once, what answers `message_ids` so far (pull_messages).

        A stored result (one per message it answers), an instruction that failed
        (its node left, its reply was rejected), or, for an id this coordinator
        does not know or whose reply was handed out before, nothing but the id:
        Flower's runtime answers those "message unavailable". An id still
        pending gets nothing yet. A pushed batch is forgotten once every
        instruction of it was handed out.
        """
        out = Pulled()
        done: set[str] = set()
        with self.cond:
            for mid in dict.fromkeys(message_ids):
                batch = self.batches.get(self._msg_batch.get(mid, ""))
                if batch is None or mid in batch.taken:
                    if mid not in done:
                        out.unknown.append(mid)
                    continue
                result = batch.result_of.get(mid)
                if result is not None:
                    # A partial aggregate answers several messages: handed out once, for all of them.
                    batch.taken.update(result.message_ids)
                    done.update(result.message_ids)
                    out.results.append((batch, result))
                elif batch.instrs[mid].state == "failed":
                    batch.taken.add(mid)
                    out.failed.append((batch, batch.instrs[mid]))
            for batch in {id(b): b for b, _ in out.results + out.failed}.values():
                if batch.pulled and len(batch.taken) >= len(batch.instrs):
                    self._forget(batch)
        return out

    def forget(self, batch: Batch) -> None:
        with self.cond:
            self._forget(batch)

    def _forget(self, batch: Batch) -> None:
        self.batches.pop(batch.batch_id, None)
        for mid in batch.instrs:
            self._msg_batch.pop(mid, None)

    def set_participants(self, roster: cpb.Participants, *, resend: bool = False) -> bool:
        """Make `roster` the list every selector enforces; False if it did not change.

        `resend`: send it even unchanged (a selector asked and is waiting for an answer).
        """
        with self.cond:
            # The poller hands back the very list it sent before when the website's answer is unchanged.
            if self.participants is not None and (self.participants is roster or self.participants == roster):
                if resend:
                    for link in self.selectors.values():
                        link.outbox.put(cpb.CoordinatorMessage(participants=roster))
                return False
            self.participants = roster
            for link in self.selectors.values():
                link.outbox.put(cpb.CoordinatorMessage(participants=roster))
            return True

    def finish(self, reason: str, status: str = "finished") -> bool:
        """Tell every selector the run is over and how it ended: finished | failed | stopped.

        Only the first call counts (a stop signal during the final upload must not
        turn a finished run into a stopped one); returns whether this call did.
        """
        with self.cond:
            if self.ended is not None:
                return False
            self.ended = cpb.CoordinatorMessage(
                finished=cpb.RunFinished(reason=reason, status=cast(cpb.RunStatus, to_proto(cpb.RunStatus, status)))
            )
            self.finished = True
            for link in self.selectors.values():
                link.outbox.put(self.ended)
            self.cond.notify_all()
            return True

    def wait_told(self, timeout: float) -> bool:
        """Wait until every attached selector's stream took what was queued for it (the end of
        the run, to pass on to its clients) or `timeout` passed; True if all did."""
        end = time.monotonic() + timeout
        with self.cond:
            while any(not link.outbox.empty() for link in self.selectors.values()):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))
            return True
