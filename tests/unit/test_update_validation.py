"""Replies that must not reach an aggregate are refused with a clear reason, and cost no copy.

`check_reply` (protection, then the `strict` reply policy) is what the selector (before
folding) and the coordinator (before the ServerApp sees a reply) run on every reply of a
`strict` problem; the selector core and the coordinator's
Hub and Grid are driven in memory here, the way their gRPC servicers drive them.
"""

from __future__ import annotations

import io
import math
import queue
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import fitins_to_recorddict, fitres_to_recorddict

from coordinator.folding import Folding
from coordinator.grid import GridPolicy, SelectorTierGrid
from coordinator.hub import Hub, Result
from coordinator.rounds import RoundTracker
from fedota_common.aggregate import REJECTED, check_reply, model_spec
from fedota_common.chunkwire import add_selector_servicer, frame_chunk, whole_result
from fedota_common.chunkwire import selector_stub as chunkwire_stub
from fedota_common.grpcutil import bind, channel, make_server
from fedota_common.payload import (
    PayloadError,
    RejectedReply,
    Segments,
    WireContent,
    assemble,
    decode_content,
    encode_content,
    iter_chunks,
    message_to_payload,
    parse_content,
    payload_to_message,
)
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb
from protos.selector.v1 import selector_pb2_grpc
from selector.core import OpenAuthenticator, SelectorCore, SelectorError
from selector.servicer import FabSource, SelectorServicer

pytestmark = pytest.mark.usefixtures("task_identity")

SHAPES = {"fc.weight": (30, 2), "fc.bias": (2,)}


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _instruction(arrays: dict[str, np.ndarray] | None = None) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in (arrays or _model()).items()}),
            "config": ConfigRecord({"server-round": 1}),
        }
    )


def _reply(arrays: dict[str, Any], weight: Any = 10, **metrics: Any) -> RecordDict:
    record = ArrayRecord({k: v if isinstance(v, Array) else Array(v) for k, v in arrays.items()})
    return RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": weight, **metrics})})


def _wire(content: RecordDict) -> Any:
    return parse_content(bytearray(encode_content(content)))


def _check(reply: RecordDict, *, message_type: str = MessageType.TRAIN, exact: bool = True, model: Any = None) -> None:
    spec = model_spec(_instruction()) if model is None else model
    check_reply(_wire(reply), spec, message_type=message_type, weight_key="num-examples", exact=exact)


def _pickled() -> Array:
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}] * 60, dtype=object).reshape(30, 2), allow_pickle=True)
    return Array(dtype="float32", shape=(30, 2), stype="numpy.ndarray", data=buf.getvalue())


def _nan_weight() -> dict[str, np.ndarray]:
    m = _model()
    m["fc.weight"][4, 1] = np.nan
    return m


BAD = {
    "shape": ({**_model(), "fc.weight": np.zeros((3, 4), np.float32)}, 10, "shape", "'fc.weight' has shape (3, 4); the model's is (30, 2)"),
    "dtype": ({**_model(), "fc.bias": np.zeros(2, np.float64)}, 10, "dtype", "'fc.bias' has dtype float64; the model's is float32"),
    "strings": ({**_model(), "fc.bias": np.array(["a", "b"])}, 10, "dtype", "'fc.bias' has dtype <U1; the model's is float32"),
    "objects": ({**_model(), "fc.weight": _pickled()}, 10, "not-numeric", "holds Python objects"),
    "missing": ({"fc.weight": _model()["fc.weight"]}, 10, "missing-array", "array 'fc.bias' of the model is missing"),
    "extra": ({**_model(), "bn.mean": np.zeros(2, np.float32)}, 10, "extra-array", "has an array 'bn.mean' the model does not have"),
    "nan": (_nan_weight(), 10, "not-finite", "'fc.weight' holds NaN or Inf (first at flat index 9)"),
    "inf": ({**_model(), "fc.bias": np.array([1, np.inf], np.float32)}, 10, "not-finite", "'fc.bias' holds NaN or Inf (first at flat index 1)"),
    "negative-weight": (_model(), -3, "weight", "weight 'num-examples' is -3; it must be a positive number of examples"),
    "zero-weight": (_model(), 0, "weight", "weight 'num-examples' is 0"),
    "absurd-weight": (_model(), 5e12, "weight", "weight 'num-examples' is 5e+12; it must be a positive number of examples, at most 1e+12"),
    "inf-weight": (_model(), math.inf, "weight", "weight 'num-examples' is inf"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("exact", [True, False], ids=["weighted-mean", "individual"])
def test_a_bad_reply_is_refused_saying_what_was_expected(case: str, exact: bool) -> None:
    arrays, weight, reason, message = BAD[case]
    with pytest.raises(RejectedReply) as info:
        _check(_reply(arrays, weight), exact=exact)
    assert info.value.reason == reason
    assert message in str(info.value)


def test_a_good_reply_passes_in_either_mode() -> None:
    for exact in (True, False):
        _check(_reply({k: v + 1 for k, v in _model().items()}, 12, train_loss=0.5), exact=exact)


def test_non_finite_metrics_are_refused() -> None:
    with pytest.raises(RejectedReply, match=r"metric 'metrics.train_loss' is nan; a reply's numbers must be finite"):
        _check(_reply(_model(), 10, train_loss=math.nan))


def test_evaluate_replies_need_no_arrays_but_train_replies_do() -> None:
    metrics_only = RecordDict({"metrics": MetricRecord({"num-examples": 4, "eval_acc": 0.9})})
    _check(metrics_only, message_type=MessageType.EVALUATE)
    with pytest.raises(RejectedReply, match="the reply has 0 ArrayRecords; the model it answers has 1"):
        _check(metrics_only, message_type=MessageType.TRAIN)


def test_an_instruction_without_arrays_leaves_nothing_to_compare_with() -> None:
    no_model = model_spec(RecordDict({"config": ConfigRecord({"server-round": 1})}))
    _check(_reply({"anything": np.zeros(7, np.float32)}), model=no_model)


def test_legacy_parameters_are_checked_by_their_npy_headers() -> None:
    """Flower's compatibility layer declares neither shape nor dtype: the .npy header has them."""
    weights = [np.zeros((5, 3), np.float32), np.zeros(3, np.float32)]
    ins = fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), {}), True)
    spec = model_spec(_wire(ins))
    good = fitres_to_recorddict(FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(weights), 7, {}), True)
    check_reply(_wire(good), spec, message_type=MessageType.TRAIN, weight_key="num-examples", exact=True)
    wrong = [np.zeros((3, 5), np.float32), np.zeros(3, np.float32)]
    bad = fitres_to_recorddict(FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(wrong), 7, {}), True)
    with pytest.raises(RejectedReply, match=r"array '0' has shape \(3, 5\); the model's is \(5, 3\)"):
        check_reply(_wire(bad), spec, message_type=MessageType.TRAIN, weight_key="num-examples", exact=True)
    negative = fitres_to_recorddict(FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(weights), -7, {}), True)
    with pytest.raises(RejectedReply, match="weight 'num_examples' is -7"):
        check_reply(_wire(negative), spec, message_type=MessageType.TRAIN, weight_key="num-examples", exact=True)


def test_a_serialised_model_may_change_length_only_when_not_averaged() -> None:
    """XGBoost's strategies send the model as one uint8 array and get other lengths back."""
    blob = model_spec(RecordDict({"arrays": ArrayRecord({"0": Array(np.zeros(100, np.uint8))})}))
    reply = RecordDict({"arrays": ArrayRecord({"0": Array(np.ones(140, np.uint8))}), "metrics": MetricRecord({})})
    _check(reply, exact=False, model=blob)
    with pytest.raises(RejectedReply, match=r"has shape \(140,\); the model's is \(100,\)"):
        _check(reply, exact=True, model=blob)


def test_nan_in_a_fortran_ordered_array_is_found_without_a_copy() -> None:
    model = _model()
    weight = np.asfortranarray(model["fc.weight"])
    weight[3, 1] = np.nan
    reply = _reply({**model, "fc.weight": weight})
    with pytest.raises(RejectedReply, match=r"first at flat index 33"):  # column-major: 1 * 30 + 3
        _check(reply)


def test_the_finiteness_scan_holds_no_copy_of_the_update() -> None:
    big = np.random.default_rng(1).random(8 << 20, dtype=np.float32)  # 32 MiB
    spec = model_spec(RecordDict({"arrays": ArrayRecord({"w": Array(big)})}))
    wire = _wire(_reply({"w": big}))
    tracemalloc.start()
    try:
        check_reply(wire, spec, message_type=MessageType.TRAIN, weight_key="num-examples", exact=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, f"validation allocated {peak} bytes for a 32 MiB update"


# ---- the selector core, in memory ------------------------------------------------------------


class FakeCoordinator:
    """The selector's Upstream: serves the instruction and records what comes back."""

    def __init__(self, content: WireContent) -> None:
        self.content = content
        self.sent: queue.Queue[cpb.SelectorMessage] = queue.Queue()
        self.results: queue.Queue[tuple[cpb.ResultHeader, bytes]] = queue.Queue()
        self.received: list[bytes] = []

    def send(self, msg: cpb.SelectorMessage) -> None:
        self.sent.put(msg)

    def pull_content(self, content_id: str, size: int, sha256: str) -> bytearray:
        return bytearray(self.content.tobytes() if isinstance(self.content, Segments) else self.content)

    def push_result(self, header: cpb.ResultHeader, content: Any) -> cpb.PushResultResponse:
        self.received = []
        for chunk in iter_chunks(content) if isinstance(content, (bytes, bytearray, Segments)) else content:
            self.received.append(chunk)
        self.results.put((header, b"".join(self.received)))
        return cpb.PushResultResponse(accepted=True)

    def progress(self) -> list[cpb.TaskProgress]:
        out = []
        while not self.sent.empty():
            msg = self.sent.get()
            if msg.WhichOneof("msg") == "progress":
                out.append(msg.progress)
        return out


class Selector:
    """A SelectorCore with three clients and one training round announced."""

    def __init__(self, aggregation: int = cpb.AGGREGATION_WEIGHTED_MEAN) -> None:
        self.model = _model()
        instruction = Message(_instruction(self.model), 0, MessageType.TRAIN)
        payload = message_to_payload(instruction)
        self.instruction = payload_to_message(payload.header, payload.content.tobytes())  # type: ignore[union-attr]
        self.upstream = FakeCoordinator(payload.content)
        self.core = SelectorCore("sel", OpenAuthenticator())
        self.core.upstream = self.upstream  # type: ignore[assignment]
        self.core.on_welcome(cpb.Welcome(run_id=1, fab_sha256="f" * 64, fab_size=1))
        self.sessions = {}
        for name in ("a", "b", "c"):
            session, _ = self.core.join(f"fdp_1_{name}", "", name)
            self.core.subscribe(session)
            self.sessions[name] = session
        self.core.on_instructions(
            cpb.Instructions(
                batch_id="b1",
                aggregation=aggregation,  # type: ignore[arg-type]
                weight_key="num-examples",
                items=[
                    cpb.Instruction(
                        message_id=f"t-{name}",
                        node_id=session.node_id,
                        metadata=payload.header.metadata,
                        content_id="b1/0",
                        content_size=payload.header.content_size,
                        content_sha256=payload.header.content_sha256,
                    )
                    for name, session in self.sessions.items()
                ],
            )
        )
        deadline = time.monotonic() + 10
        while any(t.state == "pending" for t in self.core.tasks.values()):
            assert time.monotonic() < deadline, "the instruction was never announced"
            time.sleep(0.01)

    def submit(self, name: str, content: RecordDict, task: str | None = None) -> None:
        payload = message_to_payload(Message(content, reply_to=self.instruction))
        data = payload.content.tobytes() if isinstance(payload.content, Segments) else bytes(payload.content)
        self.core.submit(self.sessions[name], task or f"t-{name}", payload.header, bytearray(data))

    def aggregate(self) -> dict[str, np.ndarray]:
        header, data = self.upstream.results.get(timeout=10)
        assert header.aggregation == cpb.AGGREGATION_WEIGHTED_MEAN
        content = decode_content(assemble(len(data), "", iter_chunks(data)))
        return {k: v.numpy() for k, v in content["arrays"].items()}


def test_the_selector_refuses_a_bad_update_counts_it_and_folds_only_the_good_ones() -> None:
    sel = Selector()
    shifted = {k: v + np.float32(1) for k, v in sel.model.items()}
    sel.submit("a", _reply(shifted, 3))
    poisoned = {k: v + np.float32(1000) for k, v in sel.model.items()}
    poisoned["fc.weight"][0, 0] = np.inf
    with pytest.raises(RejectedReply, match="'fc.weight' holds NaN or Inf"):
        sel.submit("c", _reply(poisoned, 50))
    assert sel.core.rejected == {"not-finite": 1}
    # The task failed at once; the coordinator is told why, so the round need not wait for it.
    failed = [p for p in sel.upstream.progress() if not p.ok]
    assert [p.message_id for p in failed] == ["t-c"]
    assert failed[0].detail.startswith(f"{REJECTED}: array 'fc.weight' holds NaN or Inf")
    lower = {k: v - np.float32(2) for k, v in sel.model.items()}
    sel.submit("b", _reply(lower, 7))
    result = sel.aggregate()
    for key in SHAPES:
        np.testing.assert_allclose(result[key], (shifted[key] * 3 + lower[key] * 7) / 10, rtol=1e-6)


@pytest.mark.parametrize("how", ["stalls", "trickles"])
def test_an_upload_that_stalls_or_trickles_is_cut_off_and_frees_the_folding_slot(how: str) -> None:
    """One slow client must not keep the others' replies waiting for the round's deadline."""
    sel = Selector()
    sel.core.upload_limits = {"idle": 0.5, "min_rate": 2000.0, "grace": 1.0}
    payload = message_to_payload(Message(_reply(sel.model, 5), reply_to=sel.instruction))
    data = payload.content.tobytes() if isinstance(payload.content, Segments) else bytes(payload.content)
    holding, cancelled = threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        holding.set()
        if how == "stalls":
            yield data[:10]
            assert cancelled.wait(30), "the stalled upload was never cancelled"
        else:  # 10 bytes every 0.1 s: never idle, but 100 B/s
            for i in range(0, len(data), 10):
                yield data[i : i + 10]
                if cancelled.wait(0.1):
                    break
        # What the servicer's chunk reader raises once the RPC is cancelled.
        raise PayloadError("the upload broke off")

    errors: list[BaseException] = []

    def upload() -> None:
        try:
            sel.core.receive_result(sel.sessions["a"], "t-a", payload.header, slow(), cancel=cancelled.set)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    assert holding.wait(10)
    sel.submit("b", _reply(sel.model, 7))  # waits for the slot the slow upload holds
    thread.join(10)
    assert cancelled.is_set() and len(errors) == 1 and isinstance(errors[0], RejectedReply), errors
    assert ("stalled: no data for 0.5 s" if how == "stalls" else "too slow") in str(errors[0])
    assert sel.core.rejected == {"stalled": 1}
    failed = [p for p in sel.upstream.progress() if not p.ok]
    assert [p.message_id for p in failed] == ["t-a"] and failed[0].detail.startswith(REJECTED)
    sel.submit("c", _reply(sel.model, 3))
    result = sel.aggregate()
    for key in SHAPES:
        np.testing.assert_allclose(result[key], sel.model[key], rtol=1e-6)


def test_a_stalled_upload_over_real_grpc_is_cancelled_and_the_next_reply_is_folded() -> None:
    """The servicer's `context.cancel` really unblocks a PushResult stream that has gone quiet."""
    sel = Selector()
    sel.core.upload_limits = {"idle": 0.5, "min_rate": 100.0, "grace": 30.0}
    server = make_server(8)
    add_selector_servicer(SelectorServicer(sel.core, FabSource(sel.core, bytes)), server)
    address = bind(server, "127.0.0.1:0")
    assert address is not None
    server.start()
    release = threading.Event()

    def parts(name: str, stall: bool) -> Iterator[spb.ResultPart]:
        payload = message_to_payload(Message(_reply(sel.model, 5), reply_to=sel.instruction))
        data = payload.content.tobytes() if isinstance(payload.content, Segments) else bytes(payload.content)
        header = spb.ResultHeader(session_id=sel.sessions[name].session_id, task_id=f"t-{name}", payload=payload.header)
        yield spb.ResultPart(header=header)
        if stall:
            yield spb.ResultPart(chunk=payload_pb2.Chunk(data=data[:10]))
            release.wait(30)  # a client that stops sending but keeps the stream open
            return
        for chunk in iter_chunks(data):
            yield spb.ResultPart(chunk=payload_pb2.Chunk(data=chunk))

    try:
        with channel(address) as ch:
            stub = selector_pb2_grpc.SelectorStub(ch)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.PushResult(parts("a", stall=True), timeout=30)
            assert info.value.code() == grpc.StatusCode.CANCELLED
            assert time.monotonic() - started < 10, "the stalled upload held its slot until the client gave up"
            # The client hears of the cancel while the server thread is still unwinding it; the
            # task's failure, sent to the coordinator, is that thread's last step.
            failed: list[cpb.TaskProgress] = []
            deadline = time.monotonic() + 10
            while not failed and time.monotonic() < deadline:
                failed += [p for p in sel.upstream.progress() if not p.ok]
                time.sleep(0.01)
            assert sel.core.rejected == {"stalled": 1}
            assert [p.message_id for p in failed] == ["t-a"] and "the upload stalled" in failed[0].detail
            # The client learns why on its event stream (a cancelled RPC carries no reason).
            outbox = sel.sessions["a"].outbox
            events = [outbox.get_nowait() for _ in range(outbox.qsize())]
            told = [e.cancelled for e in events if e is not None and e.WhichOneof("event") == "cancelled"]
            assert [t.task_id for t in told] == ["t-a"] and "the upload stalled: no data for 0.5 s" in told[0].reason
            # The slot is free again: the other clients' replies fold.
            assert stub.PushResult(parts("b", stall=False), timeout=30).accepted
            assert stub.PushResult(parts("c", stall=False), timeout=30).accepted
        result = sel.aggregate()
        for key in SHAPES:
            np.testing.assert_allclose(result[key], sel.model[key], rtol=1e-6)
    finally:
        release.set()
        server.stop(0)


def test_a_result_sent_whole_in_its_header_is_folded_as_its_chunks_would_be() -> None:
    """A client whose selector reads whole results (JoinResponse.inline_results) sends one message."""
    sel = Selector()
    server = make_server(8)
    servicer = SelectorServicer(sel.core, FabSource(sel.core, bytes))
    add_selector_servicer(servicer, server)
    address = bind(server, "127.0.0.1:0")
    assert address is not None
    server.start()

    def whole(name: str, scale: float, then_a_chunk: bool = False) -> Iterator[bytes]:
        update = {k: v * np.float32(scale) for k, v in sel.model.items()}
        payload = message_to_payload(Message(_reply(update, 5), reply_to=sel.instruction))
        wire = whole_result(sel.sessions[name].session_id, f"t-{name}", payload.header, payload.content)
        assert wire is not None
        yield wire
        if then_a_chunk:
            yield frame_chunk(b"more")

    try:
        with channel(address) as ch:
            stub = chunkwire_stub(ch)
            with pytest.raises(grpc.RpcError) as info:
                stub.PushResult(whole("a", 1.0, then_a_chunk=True), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "a result sent whole in its header takes no chunks after it" in (info.value.details() or "")
            assert stub.PushResult(whole("b", 2.0), timeout=30).accepted
            assert stub.PushResult(whole("c", 4.0), timeout=30).accepted
            result = sel.aggregate()
            for key in SHAPES:
                np.testing.assert_allclose(result[key], sel.model[key] * 3, rtol=1e-6)  # (2 + 4) / 2
            joined = stub.Join(spb.JoinRequest(credential="fdp_1_d"), timeout=30)
            assert joined.inline_results
    finally:
        server.stop(0)


def test_the_selector_refuses_results_for_tasks_a_client_was_not_given() -> None:
    sel = Selector()
    good = _reply(sel.model, 5)
    with pytest.raises(SelectorError, match="task t-a was not given to this client") as info:
        sel.submit("c", good, task="t-a")
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(SelectorError, match="task nope was not given to this client"):
        sel.submit("c", good, task="nope")
    sel.submit("a", good)  # a's own task was left alone
    with pytest.raises(SelectorError, match="task t-a was already answered") as info:
        sel.submit("a", good)
    assert info.value.code == "ALREADY_EXISTS"
    sel.core.on_cancel(["t-b"], "round closed")
    with pytest.raises(SelectorError, match="the round of task t-b closed before this result arrived") as info:
        sel.submit("b", good)
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert sel.core.rejected == {"not-selected": 2, "already-answered": 1, "round-closed": 1}


def test_the_selector_bounds_a_reply_by_its_instruction_before_buffering() -> None:
    sel = Selector()
    header = message_to_payload(Message(_reply(sel.model), reply_to=sel.instruction)).header
    header.content_size = 1 << 30
    with pytest.raises(RejectedReply, match="the result declares 1073741824 bytes; a reply to this task may have"):
        sel.core.receive_result(sel.sessions["c"], "t-c", header, iter([]))
    assert sel.core.tasks["t-c"].state == "announced"  # nothing was taken


def test_a_passed_on_reply_never_reaches_the_coordinator_whole_unless_the_upload_checks_out() -> None:
    """A cancelled upload can look complete to the coordinator: it must not get every byte of a bad one."""
    sel = Selector(cpb.AGGREGATION_INDIVIDUAL)
    payload = message_to_payload(Message(_reply(sel.model), reply_to=sel.instruction))
    body = payload.content.tobytes() if isinstance(payload.content, Segments) else bytes(payload.content)
    with pytest.raises(PayloadError, match=f"received more than the announced {len(body)} bytes"):
        sel.core.receive_result(sel.sessions["c"], "t-c", payload.header, iter([body, b"and more"]))
    assert sum(len(c) for c in sel.upstream.received) < len(body)
    sel.core.receive_result(sel.sessions["a"], "t-a", payload.header, iter([body[:100], body[100:]]))
    assert b"".join(sel.upstream.received) == body
    assert sel.core.rejected == {"bad-upload": 1}


# ---- the coordinator -----------------------------------------------------------------------


class CheckingSelector:
    """Answers each instruction the way the gRPC servicer hands results to the Hub: checked, then stored."""

    def __init__(self, hub: Hub, replies: dict[int, RecordDict]) -> None:
        self.hub = hub
        self.replies = replies
        self.link = hub.attach("s1", [(n, f"site-{n}") for n in replies])
        self.refused: list[str] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while (msg := self.link.outbox.get()) is not None:
            if msg.WhichOneof("msg") != "instructions":
                continue
            for item in msg.instructions.items:
                content = self.hub.content(item.content_id)
                assert content is not None
                instruction = payload_to_message(payload_pb2.PayloadHeader(metadata=item.metadata), content)
                payload = message_to_payload(Message(self.replies[item.node_id], reply_to=instruction))
                data = payload.content.tobytes() if isinstance(payload.content, Segments) else payload.content
                result = Result("s1", payload.header, bytearray(data), [item.message_id], [item.node_id], 0.0, False)
                problem = self.hub.check_result(result, msg.instructions.batch_id)
                if problem:
                    self.refused.append(problem)
                else:
                    self.hub.add_result(result, msg.instructions.batch_id)


def test_the_coordinator_refuses_a_bad_individual_reply_and_the_round_goes_on(tmp_path: Any) -> None:
    model = _model()
    hub = Hub()
    bad = {**model, "fc.weight": np.zeros((3, 4), np.float32)}
    selector = CheckingSelector(hub, {1: _reply(model, 4), 2: _reply(bad, 4), 3: _reply(model, 2)})
    tracker = RoundTracker(tmp_path, weight_key="num-examples", total_rounds=1, keep_checkpoints=0, echo=lambda _: None)
    policy = GridPolicy(
        round_timeout=60.0, overselect=1.0, min_result_fraction=0.0, aggregation="individual", weight_key="num-examples"
    )
    grid = as_strategy_round(SelectorTierGrid(hub, policy, tracker))
    sent = [Message(_instruction(model), n, MessageType.TRAIN) for n in (1, 2, 3)]
    started = time.monotonic()
    replies = list(grid.send_and_receive(sent))
    assert time.monotonic() - started < 30, "the round waited for the rejected reply"
    assert selector.refused == ["array 'fc.weight' has shape (3, 4); the model's is (30, 2)"]
    errors = [r for r in replies if r.has_error()]
    assert [r.metadata.src_node_id for r in errors] == [2]
    assert errors[0].error.reason == f"{REJECTED}: array 'fc.weight' has shape (3, 4); the model's is (30, 2)"
    assert len([r for r in replies if r.has_content()]) == 2
    assert hub.rejected == {"shape": 1}
    tracker.finish(None)
    assert tracker.rounds[0]["rejected"] == 1 and tracker.rounds[0]["failures"] == 1


def as_strategy_round(grid: SelectorTierGrid, strategy_round: bool = True) -> SelectorTierGrid:
    """Rounds sent from this test count as a Flower strategy's (the only ones `strict` judges)."""
    decision = Folding(False, "", "test", strategy_round=strategy_round)
    grid._folding = lambda message_type, caller: decision  # type: ignore[method-assign]
    return grid


class Quiet:
    def on_push(self, message_type: str, group_id: str, messages: list[Message]) -> None:
        pass

    def on_close(self, message_type: str, group_id: str, replies: list[Message], participants: list[int]) -> None:
        pass


def test_the_coordinator_refuses_a_result_that_would_not_decode() -> None:
    hub = Hub()
    model = _model()
    CheckingSelector(hub, {})
    grid = SelectorTierGrid(hub, GridPolicy(60.0, 1.0, 0.0, "individual", "num-examples"), Quiet())
    batch = grid._push([Message(_instruction(model), 7, MessageType.TRAIN)], [], Folding(False, "", "test"))
    mid = next(iter(batch.instrs))
    garbage = Result("s1", payload_pb2.PayloadHeader(metadata=b"\xff\xff"), b"", [mid], [7], 0.0, False)
    assert "metadata is not a Flower Metadata" in hub.check_result(garbage, batch.batch_id)
    # A limit on what may be buffered comes with the batch: the model plus room for metrics.
    assert hub.reply_limit(batch.batch_id) < 70 << 20
