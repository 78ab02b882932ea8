"""Flower's `Grid` over the selector tier.

The ServerApp (either Flower style) talks to this Grid exactly as it would to a
SuperLink. Messages are stamped with fresh ids, grouped per selector and pushed
as one batch; the content shared by several messages (the global model) is
serialised once and pulled once by each selector. `send_and_receive` adds
over-selection, the round deadline and the minimum-results rule, and maps
partial aggregates and substitutes back onto the messages the strategy sent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Protocol, cast
from uuid import uuid4

import numpy as np
from flwr.app import Message, MessageType, Metadata, RecordDict
from flwr.app.error import Error
from flwr.app.message import make_message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde_utils import metadata_from_proto, metadata_to_proto
from flwr.proto.message_pb2 import Metadata as ProtoMetadata
from flwr.server.client_manager import SimpleClientManager
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_ins_message
from flwr.serverapp.grid import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore.run import Run

from coordinator.folding import Folding, folding_for, strategy_of
from coordinator.hub import Batch, Hub, Instr, Result
from coordinator.merging import merge_partial_means
from coordinator.resume import capture
from fedota_common.aggregate import ModelSpec, model_spec
from fedota_common.payload import (
    MAX_FRAME,
    Segments,
    WireContent,
    content_digest,
    encode_segments,
    payload_to_message,
    release_cycles,
    reply_size_limit,
    round_of,
)
from protos.coordinator.v1 import coordinator_pb2 as cpb

log = logging.getLogger(__name__)

# Flower's Message-API strategies wait for their minimum of clients in this function's loop.
_SAMPLE_NODES = sample_nodes.__code__
WEIGHTED_MEAN_STRATEGIES = frozenset({"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"})
AGGREGATABLE_TYPES = frozenset({MessageType.TRAIN, MessageType.EVALUATE})


class RoundObserver(Protocol):
    """Receives what crosses the Grid, to report rounds and checkpoint models."""

    def on_push(self, message_type: str, group_id: str, messages: list[Message]) -> None: ...

    def on_close(self, message_type: str, group_id: str, replies: list[Message], participants: list[int]) -> None: ...

    def note_strategy_state(self, state: dict[str, np.ndarray]) -> None:
        """The server optimiser's state as the next train round starts (saved with the last checkpoint)."""


class NotEnoughClients(RuntimeError):
    """A strategy waited longer than allowed for its minimum number of connected clients."""


@dataclass(frozen=True)
class GridPolicy:
    round_timeout: float
    overselect: float
    min_result_fraction: float
    # "auto": fold a round at the selectors when the ServerApp's own strategy
    # is proven to take the weighted mean (coordinator/folding.py);
    # "weighted-mean": fold every train and evaluate round (the built-in apps);
    # "individual": never fold.
    aggregation: str
    weight_key: str
    flush_grace: float = 30.0
    # How long a Flower strategy may wait for its minimum of connected clients (0: round_timeout).
    node_wait: float = 0.0


# Room kept in an inlined content's message for its field tags and lengths.
_INLINE_SLACK = 64


def inline_contents(groups: Iterable[cpb.Instructions], contents: dict[str, WireContent]) -> None:
    """Carry each content a selector's instructions need in the message itself, where it fits one.

    The selector can then announce its tasks at once, without a PullContent call first: one
    round trip less on every round's critical path for a small model. A content that would
    take the message past `MAX_FRAME` (what a selector reads) is pulled as before.
    """
    whole: dict[str, bytes] = {}
    for group in groups:
        room = MAX_FRAME - group.ByteSize() - _INLINE_SLACK
        for cid in dict.fromkeys(item.content_id for item in group.items):
            data = contents[cid]
            if not len(data) or len(data) + _INLINE_SLACK > room:
                continue
            if cid not in whole:
                whole[cid] = data.tobytes() if isinstance(data, Segments) else bytes(data)
            group.contents.append(cpb.InlineContent(content_id=cid, data=whole[cid]))
            room -= len(data) + _INLINE_SLACK


class SelectorTierGrid(Grid):
    """A Flower Grid whose nodes are the clients checked in at our selectors."""

    def __init__(
        self,
        hub: Hub,
        policy: GridPolicy,
        observer: RoundObserver,
        say: Callable[[str], None] | None = None,
        trace_context: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self.hub = hub
        self.policy = policy
        self.observer = observer
        # Where waiting for clients is reported (the run's warnings: terminal and dashboard).
        self.say = say or (lambda line: log.warning(line))
        # The trace context a round's instructions carry to the selectors (its span's; {}: none).
        self.trace_context = trace_context or (lambda _group_id: {})
        # A Flower strategy waiting for its minimum of clients: since when, last count said, when.
        self._wait_since: float | None = None
        self._wait_said = (-1, 0.0)
        self._run: Run | None = None
        self._rng = random.Random()
        # The last folding decision logged per message type (logged again when it changes).
        self._told: dict[str, str] = {}

    # ---- Grid API ----------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        if self._run is None:
            raise RuntimeError("set_run() was not called")
        return Run(**vars(self._run))

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        nodes = self.hub.node_ids()
        caller = sys._getframe(1)
        if caller.f_code is _SAMPLE_NODES:
            # Flower's strategies poll here, once a second, until enough clients are connected.
            needed = caller.f_locals.get("min_available_nodes")
            if isinstance(needed, int):
                self._waiting(len(nodes), needed)
        return nodes

    @contextlib.contextmanager
    def bounding_client_managers(self) -> Iterator[None]:
        """While the ServerApp runs, the compatibility API's waits for clients are said and bounded too.

        Its `SimpleClientManager.wait_for` blocks (up to a day) on clients the
        workflow registers from `get_node_ids`; here it waits a second at a
        time and reports each second as `sample_nodes` does.
        """
        original = SimpleClientManager.wait_for

        def wait_for(manager: SimpleClientManager, num_clients: int, timeout: int = 86400) -> bool:
            end = time.monotonic() + timeout
            while not original(manager, num_clients, timeout=min(1, max(0.0, end - time.monotonic()))):  # type: ignore[arg-type]
                self._waiting(len(manager), num_clients)
                if time.monotonic() >= end:
                    return False
            self._waiting(len(manager), num_clients)
            return True

        SimpleClientManager.wait_for = wait_for  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            SimpleClientManager.wait_for = original  # type: ignore[method-assign]

    def _waiting(self, connected: int, needed: int) -> None:
        """Say, live, that a round waits for clients, and end the wait after `node_wait` seconds."""
        now = time.monotonic()
        self.hub.waiting_for = 0 if connected >= needed else needed
        if connected >= needed:
            if self._wait_since is not None:
                self.say(
                    f"clients: {connected} of {needed} connected after waiting {now - self._wait_since:.0f} s; "
                    "the round goes on"
                )
            self._wait_since, self._wait_said = None, (-1, 0.0)
            return
        limit = self.policy.node_wait or self.policy.round_timeout
        if self._wait_since is None:
            self._wait_since = now
        waited = now - self._wait_since
        if waited > limit:
            self._wait_since, self.hub.waiting_for = None, 0
            raise NotEnoughClients(
                f"waited {waited:.0f} s for clients: {connected} of {needed} connected "
                f"(the strategy needs {needed}; the limit is {limit:g} s)"
            )
        said_count, said_at = self._wait_said
        if connected != said_count or now - said_at >= 30:
            self._wait_said = (connected, now)
            self.say(
                f"waiting: {connected} of {needed} clients connected ({waited:.0f} s so far; "
                f"the run fails if they are not there within {limit:g} s)"
            )

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        msgs = list(messages)
        by_type: dict[str, list[Message]] = {}
        for msg in msgs:
            by_type.setdefault(msg.metadata.message_type, []).append(msg)
        for message_type, group in by_type.items():
            self._push(group, extras=[], folding=self._folding(message_type, None), pulled=True)
        # `_push` stamped each message with its id, as a SuperLink does.
        return [m.metadata.message_id for m in msgs]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies that came so far, each once; as Flower's SuperLink, "unavailable" for the rest.

        A message whose node left (or whose reply was rejected) gets a
        NODE_UNAVAILABLE error reply; an id unknown here or pulled before, a
        MESSAGE_UNAVAILABLE one; a message still pending, nothing yet.
        """
        pulled = self.hub.take_results(message_ids)
        replies = []
        for _, res in pulled.results:
            replies.append(_with_id(payload_to_message(res.header, res.content)))
            res.content = b""
        for batch, instr in pulled.failed:
            replies.append(self._node_unavailable(batch, instr))
        run_id = self._run.run_id if self._run is not None else 0
        replies += [create_message_error_unavailable_ins_message(mid, run_id) for mid in pulled.unknown]
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        originals = list(messages)
        if not originals:
            return []
        caller = sys._getframe(1)
        message_type = originals[0].metadata.message_type
        folding = self._folding(message_type, caller)
        strategy = strategy_of(caller)
        if strategy is not None and message_type == MessageType.TRAIN:
            # Saved with the checkpoint of the round before: what a resumed run restores.
            self.observer.note_strategy_state(capture(strategy))
        extras = self._overselect(originals) if folding.fold else []
        batch = self._push(originals, extras, folding)
        limit = self.policy.round_timeout if timeout is None else min(timeout, self.policy.round_timeout)
        deadline = time.monotonic() + limit
        self.hub.wait(batch, deadline, close_at_target=bool(extras))
        if batch.owing:
            self.hub.flush(batch, self.policy.flush_grace)
        if time.monotonic() >= deadline:
            reason = f"no reply within the round deadline of {limit:g} s"
        else:
            reason = "not needed: the round had enough results"
        self.hub.close(batch, reason)
        replies, late, participants = self._collect(batch, originals, merge=folding.merge)
        self.hub.forget(batch)
        # The round's record counts the late ones too; the ServerApp, as on Flower's runtime, gets
        # no reply for them ("the method may not return replies for all sent messages").
        self.observer.on_close(batch.message_type, batch.group_id, replies + late, participants)
        return replies

    # ---- internals ---------------------------------------------------------------------

    def _overselect(self, originals: list[Message]) -> list[Message]:
        """Ask extra clients (as Bonawitz et al.) so stragglers do not stall a round.

        Only for folded rounds: a substitute's reply then disappears into a
        weighted mean, as any reply does. Otherwise the strategy would get a
        reply labelled with a node that never sent it, which Flower's runtime
        never delivers (and SecAgg+ cannot survive).
        """
        first = originals[0]
        # Only a batch that is a whole round qualifies: the compatibility
        # workflow sends one message per client from parallel threads.
        if (
            self.policy.overselect <= 1.0
            or len(originals) < 2
            or first.metadata.message_type != MessageType.TRAIN
            or any(m.content is not first.content for m in originals if m.has_content())
        ):
            return []
        targeted = {m.metadata.dst_node_id for m in originals}
        busy = self.hub.busy_nodes()
        spare = [n for n in self.hub.node_ids() if n not in targeted and n not in busy]
        wanted = math.ceil(len(originals) * (self.policy.overselect - 1.0))
        chosen = self._rng.sample(spare, min(wanted, len(spare)))
        return [
            Message(
                first.content,
                node_id,
                first.metadata.message_type,
                ttl=first.metadata.ttl,
                group_id=first.metadata.group_id,
            )
            for node_id in chosen
        ]

    def _folding(self, message_type: str, caller: FrameType | None) -> Folding:
        """Whether this round's replies may be folded at the selectors, and by which weight."""
        setting = self.policy.aggregation
        # Push and pull (no caller): the app collects replies itself, whatever it does with them.
        decision = folding_for(caller, message_type)
        if setting == "individual":
            return Folding(False, "", "aggregation is set to individual", decision.strategy_round)
        if setting == "weighted-mean":
            # The built-in apps: every train and evaluate message is a round of theirs.
            fold = message_type in AGGREGATABLE_TYPES
            return Folding(fold, self.policy.weight_key, "aggregation is set to weighted-mean", fold)
        said = f"{decision.fold}:{decision.why}"
        if self._told.get(message_type) != said:
            self._told[message_type] = said
            log.info(
                "replies folded at the selectors" if decision.fold else "replies sent individually",
                extra={"type": message_type, "reason": decision.why},
            )
        return decision

    def _node_unavailable(self, batch: Batch, instr: Instr) -> Message:
        """The error reply to a pushed message whose node left or whose reply was refused."""
        metadata = Metadata(
            run_id=self._run.run_id if self._run is not None else 0,
            message_id="",
            src_node_id=instr.node_id,
            dst_node_id=SUPERLINK_NODE_ID,
            reply_to_message_id=instr.message_id,
            group_id=batch.group_id,
            created_at=time.time(),
            ttl=0,
            message_type=batch.message_type,
        )
        reason = instr.detail or "the node did not answer"
        return _with_id(make_message(metadata=metadata, error=Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason)))

    def _push(self, originals: list[Message], extras: list[Message], folding: Folding, pulled: bool = False) -> Batch:
        batch_id = self.hub.new_batch_id()
        first = originals[0] if originals else extras[0]
        message_type = first.metadata.message_type
        group_id = round_of(first)
        aggregation = cpb.AGGREGATION_WEIGHTED_MEAN if folding.fold else cpb.AGGREGATION_INDIVIDUAL
        weight_key = folding.weight_key or self.policy.weight_key
        contents: dict[str, WireContent] = {}
        models: dict[str, ModelSpec] = {}
        by_object: dict[int, tuple[str, str, int]] = {}
        per_selector: dict[str, cpb.Instructions] = {}
        instrs: dict[str, Instr] = {}
        all_msgs = [(m, True) for m in originals] + [(m, False) for m in extras]
        self.observer.on_push(message_type, group_id, originals)
        trace_context = self.trace_context(group_id)
        for msg, original in all_msgs:
            if msg.metadata.message_type != message_type:
                raise ValueError("all messages pushed together must have the same message type")
            # Stamp a fresh id, as a SuperLink does (see Flower's InMemoryGrid).
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            mid = msg.metadata.message_id
            node_id = msg.metadata.dst_node_id
            key = id(msg.content) if msg.has_content() else 0
            if key not in by_object:
                # Segments reference the strategy's own array bytes: the model
                # is not copied to be sent, however many selectors pull it.
                data: WireContent = encode_segments(msg.content) if msg.has_content() else b""
                cid = f"{batch_id}/{len(by_object)}"
                contents[cid] = data
                # Replies are checked against the arrays sent (headers only: no copy).
                models[cid] = model_spec(msg.content) if msg.has_content() else ()
                by_object[key] = (cid, content_digest(data), len(data))
                # Last round's messages and replies (Flower RecordDicts are
                # reference cycles) are unreachable by now; free them before
                # this round's results arrive.
                release_cycles(len(data))
            cid, sha, size = by_object[key]
            selector_id = self.hub.selector_of(node_id) or ""
            instrs[mid] = Instr(mid, node_id, selector_id, original, content_id=cid)
            if not selector_id:
                instrs[mid].state, instrs[mid].detail = "failed", "node is not connected"
                continue
            group = per_selector.setdefault(
                selector_id,
                cpb.Instructions(
                    batch_id=batch_id,
                    aggregation=cast(cpb.Aggregation, aggregation),
                    weight_key=weight_key,
                    deadline_seconds=self.policy.round_timeout,
                    trace_context=trace_context,
                ),
            )
            group.items.append(
                cpb.Instruction(
                    message_id=mid,
                    node_id=node_id,
                    metadata=metadata_to_proto(msg.metadata).SerializeToString(),
                    content_id=cid,
                    content_size=size,
                    content_sha256=sha,
                )
            )
        inline_contents(per_selector.values(), contents)
        batch = Batch(
            batch_id=batch_id,
            message_type=message_type,
            group_id=group_id,
            aggregation=aggregation,
            target=len(originals),
            instrs=instrs,
            contents=contents,
            models=models,
            weight_key=weight_key,
            judged=folding.strategy_round,
            pulled=pulled,
            reply_limit=reply_size_limit(
                max((len(c) for c in contents.values()), default=0),
                message_type,
                sends_arrays=any(models.values()),
            ),
        )
        self.hub.open_batch(batch, per_selector)
        log.info(
            "instructions pushed",
            extra={
                "batch": batch_id,
                "type": message_type,
                "round": group_id,
                "nodes": len(originals),
                "extra_nodes": len(extras),
                "selectors": len(per_selector),
                "aggregation": "weighted-mean" if aggregation == cpb.AGGREGATION_WEIGHTED_MEAN else "individual",
            },
        )
        return batch

    def _collect(
        self, batch: Batch, originals: list[Message], *, merge: bool = False
    ) -> tuple[list[Message], list[Message], list[int]]:
        """Turn a closed batch's results into replies to the messages the strategy sent.

        Each returned reply answers a distinct original message: a substitute (an
        over-selected client) takes the slot of an original that did not answer,
        so both Flower styles see replies from the nodes they sampled. Returns
        the replies for the ServerApp, error replies for the messages that were
        still pending at the deadline (for the round's record only), and the
        participants. With `merge`, the results that are weighted means come to
        the strategy as one reply (coordinator/merging.py).
        """
        by_id = {m.metadata.message_id: m for m in originals}
        free = [m.metadata.message_id for m in originals]
        used: set[str] = set()
        ok_results = [r for r in batch.results if not r.header.error]
        err_results = [r for r in batch.results if r.header.error]
        participants = sorted({n for r in ok_results for n in r.node_ids})
        covered = sum(len(r.message_ids) for r in ok_results)
        needed = math.ceil(self.policy.min_result_fraction * batch.target)
        if covered < needed:
            log.warning(
                "round abandoned: too few results",
                extra={"round": batch.group_id, "results": covered, "needed": needed},
            )
            ok_results, participants = [], []

        def take_slot(preferred: list[str]) -> str | None:
            for mid in preferred:
                if mid in by_id and mid not in used:
                    used.add(mid)
                    return mid
            for mid in free:
                if mid not in used:
                    used.add(mid)
                    return mid
            return None

        merged = self._merged(batch, ok_results) if merge else None
        replies: list[Message] = []
        for res in ([merged] if merged is not None else ok_results) + err_results:
            slot = take_slot(res.message_ids)
            if slot is None:
                break  # target met; later results (extras) are surplus
            for mid in res.message_ids[1:]:
                if mid in by_id:
                    used.add(mid)
            replies.append(self._as_reply(res, by_id[slot]))
        late: list[Message] = []
        for mid in free:
            if mid not in used:
                instr = batch.instrs[mid]
                reason = instr.detail or "no reply before the round deadline"
                error = _with_id(Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=by_id[mid]))
                (late if instr.late else replies).append(error)
        return replies, late, participants

    def _merged(self, batch: Batch, results: list[Result]) -> Result | None:
        """The round's results as one reply weighing their total, or None to hand them over as they are."""
        # The list holds the only reference to each received buffer, so each goes once it is added.
        buffers = [r.content for r in results]
        for res in results:
            res.content = b""
        content = merge_partial_means(buffers, batch.weight_key, train=batch.message_type == MessageType.TRAIN)
        if content is None:
            for res, buf in zip(results, buffers, strict=True):
                res.content = buf
            return None
        first = results[0]
        log.info("partial means merged", extra={"round": batch.group_id, "results": len(results)})
        return Result(
            selector_id=first.selector_id,
            header=first.header,
            content=b"",
            message_ids=[m for r in results for m in r.message_ids],
            node_ids=[n for r in results for n in r.node_ids],
            weight=sum(r.weight for r in results),
            aggregate=True,
            decoded=content,
        )

    @staticmethod
    def _as_reply(res: Result, slot: Message) -> Message:
        md = ProtoMetadata.FromString(res.header.metadata)
        md.src_node_id = slot.metadata.dst_node_id
        md.reply_to_message_id = slot.metadata.message_id
        md.run_id = slot.metadata.run_id
        if res.decoded is not None:
            msg = _with_id(make_message(metadata=metadata_from_proto(md), content=res.decoded))
            res.decoded = None
        else:
            msg = _with_id(payload_to_message(res.header, res.content, metadata=md))
        res.content = b""
        return msg


def _with_id(reply: Message) -> Message:
    """Give a reply its own message id, as a SuperLink does (Flower uses a hash of the message;
    hashing a model-sized reply would cost a pass over it, so this is a random id of that length)."""
    if not reply.metadata.message_id:
        reply.metadata.__dict__["_message_id"] = secrets.token_hex(32)
    return reply


def choose_aggregation(setting: str, run_config: dict[str, object], builtin: bool) -> str:
    """Resolve the `aggregation` setting for a run.

    "auto" stays "auto" (decided round by round from the running ServerApp)
    except for a built-in app: its strategies wrap Flower's with our own
    aggregation code, written to fold, and its run config's `strategy` says
    which one runs.
    """
    if setting in ("weighted-mean", "individual") or not builtin:
        return setting
    strategy = str(run_config.get("strategy", "")).lower()
    return "weighted-mean" if strategy in WEIGHTED_MEAN_STRATEGIES else "individual"
