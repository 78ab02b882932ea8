"""Hostile gRPC input at a selector (and at the coordinator behind it).

A real coordinator (a FedAvg ServerApp over a two-array model) and a real selector
run as processes; the test itself plays three clients over loopback gRPC: `a` and `b`
answer honestly with different arrays and weights, `c` sends something hostile.
Every case checks what a user would notice: `c` gets a status saying what was wrong
and what was expected, the next round's model is the weighted mean of the honest
replies only (so nothing of the bad reply was folded in), the rejection is counted
in a "reply rejected" log line with its reason, and both services keep serving.
Each federation runs once per aggregation mode: weighted-mean (the selector folds
replies and checks them) and individual (the coordinator checks each forwarded reply).
"""

from __future__ import annotations

import io
import json
import math
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedota_common.grpcutil import OPTIONS, check_health
from fedota_common.payload import (
    CHUNK_SIZE,
    MAX_CONTENT_SIZE,
    MAX_FRAME,
    Assembler,
    iter_chunks,
    message_to_payload,
    payload_to_message,
)
from protos.payload.v1 import payload_pb2
from protos.selector.v1 import selector_pb2 as spb
from protos.selector.v1 import selector_pb2_grpc
from tests.e2e.conftest import ENV, REPO, wait_for

pytestmark = pytest.mark.e2e

# Long enough for a busy machine to finish an honest round, short for the deadline case.
ROUND_TIMEOUT = 8.0
SHAPES = {"fc.weight": (30, 2), "fc.bias": (2,)}

SERVER_APP = f'''"""FedAvg over a two-array model; rounds never run out during the tests."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rng = np.random.default_rng(0)
    arrays = ArrayRecord({{name: Array(rng.normal(size=shape).astype(np.float32)) for name, shape in {SHAPES!r}.items()}})
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=500, timeout=3600.0)
'''
CLIENT_APP = '''"""Never run: the test plays the clients."""

from flwr.clientapp import ClientApp

app = ClientApp()
'''
PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedota-hostile"
version = "1.0.0"
description = "FedAvg over a small model, for hostile-input tests"
license = "Apache-2.0"
dependencies = ["flwr==1.41.0", "numpy>=1.26"]

[tool.hatch.build.targets.wheel]
packages = ["fedota_hostile"]

[tool.flwr.app]
publisher = "fedota"

[tool.flwr.app.components]
serverapp = "fedota_hostile.server_app:app"
clientapp = "fedota_hostile.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 500
"""


def _write_app(folder: Path) -> Path:
    package = folder / "fedota_hostile"
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server_app.py").write_text(SERVER_APP)
    (package / "client_app.py").write_text(CLIENT_APP)
    return folder


# ---- the clients the test plays ------------------------------------------------------------


@dataclass
class ClientTask:
    task_id: str
    message: Message

    def model(self) -> dict[str, np.ndarray]:
        record = next(iter(self.message.content.array_records.values()))
        return {name: array.numpy() for name, array in record.items()}


class FakeClient:
    """A data holder's client reduced to the wire: join, subscribe, pull tasks, push anything."""

    def __init__(self, address: str, name: str, participant: int) -> None:
        self.name = name
        self.channel = grpc.insecure_channel(address, options=OPTIONS)
        self.stub = selector_pb2_grpc.SelectorStub(self.channel)
        request = spb.JoinRequest(credential=f"fdp_{participant}_hostile-test-secret", display_name=name)
        deadline = time.monotonic() + 30
        while True:
            try:
                joined = self.stub.Join(request, timeout=30)
                break
            except grpc.RpcError as exc:
                # A selector that has not yet had its list of participants says to retry, as the
                # real client does (it arrives apart from the run's info, later under load).
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.session = joined.session_id
        self.node_id = joined.node_id
        self.tasks: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._events = self.stub.Subscribe(self._heartbeats())
        threading.Thread(target=self._read, name=f"client-{name}", daemon=True).start()

    def _heartbeats(self) -> Iterator[spb.ClientEvent]:
        yield spb.ClientEvent(session_id=self.session, heartbeat=spb.Heartbeat())
        while not self._stop.wait(1.0):
            yield spb.ClientEvent(session_id=self.session, heartbeat=spb.Heartbeat())

    def _read(self) -> None:
        try:
            for event in self._events:
                if event.WhichOneof("event") == "task":
                    self.tasks.put(event.task.task_id)
        except grpc.RpcError:
            pass

    def next_task(self, timeout: float = 120.0) -> ClientTask:
        task_id = self.tasks.get(timeout=timeout)
        header: payload_pb2.PayloadHeader | None = None
        asm: Assembler | None = None
        for part in self.stub.PullTask(spb.PullTaskRequest(session_id=self.session, task_id=task_id), timeout=30):
            if part.WhichOneof("part") == "header":
                header = part.header
                asm = Assembler(header.content_size, header.content_sha256)
            elif asm is not None:
                asm.add(part.chunk.data)
        assert header is not None and asm is not None
        return ClientTask(task_id, payload_to_message(header, asm.finish()))

    def push(self, task_id: str, header: payload_pb2.PayloadHeader, chunks: Iterable[bytes]) -> spb.PushResultResponse:
        def parts() -> Iterator[spb.ResultPart]:
            yield spb.ResultPart(header=spb.ResultHeader(session_id=self.session, task_id=task_id, payload=header))
            for chunk in chunks:
                yield spb.ResultPart(chunk=payload_pb2.Chunk(data=chunk))

        response: spb.PushResultResponse = self.stub.PushResult(parts(), timeout=60)
        return response

    def reply(self, task: ClientTask, content: RecordDict, task_id: str | None = None) -> spb.PushResultResponse:
        payload = message_to_payload(Message(content, reply_to=task.message))
        return self.push(task_id or task.task_id, payload.header, iter_chunks(payload.content))

    def close(self) -> None:
        self._stop.set()
        self._events.cancel()
        self.channel.close()


def _content(arrays: dict[str, Array | np.ndarray], weight: Any) -> RecordDict:
    record = ArrayRecord({k: v if isinstance(v, Array) else Array(v) for k, v in arrays.items()})
    return RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": weight, "train_loss": 0.25})})


# ---- the federation ---------------------------------------------------------------------------


@dataclass
class Federation:
    mode: str
    state: Path
    coordinator: subprocess.Popen[bytes]
    selector: subprocess.Popen[bytes]
    coordinator_address: str
    selector_address: str
    selector_health: str
    clients: dict[str, FakeClient] = field(default_factory=dict)
    rounds_played: int = 0
    _next: dict[str, ClientTask] | None = None

    def log(self, name: str) -> str:
        return (self.state / f"{name}.log").read_text()

    def rejections(self, reason: str) -> int:
        """ "reply rejected" log lines with this reason, at the selector and the coordinator."""
        count = 0
        for name in ("selector", "coordinator"):
            for line in self.log(name).splitlines():
                if '"reply rejected"' in line:
                    doc = json.loads(line)
                    count += doc.get("msg") == "reply rejected" and doc.get("rejected") == reason
        return count

    def errors(self, name: str) -> list[str]:
        """Error lines of a service's log, but gRPC's own note that a stream it was sending broke off.

        (The selector stops passing a bad reply on by raising inside gRPC's request
        iterator; gRPC logs that with a traceback and cancels the call, as intended.)
        """
        out = []
        for line in self.log(name).splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if doc["level"] in ("error", "critical") and doc.get("msg") != "Exception iterating requests!":
                    out.append(line)
        return out

    def serving(self) -> bool:
        return (
            self.coordinator.poll() is None
            and self.selector.poll() is None
            and check_health(self.selector_health)
            and check_health(self.coordinator_address)
        )

    def next_round(self) -> dict[str, ClientTask]:
        """The tasks of the round after the one being played (waits for them)."""
        if self._next is None:
            self._next = {name: client.next_task() for name, client in self.clients.items()}
        return self._next

    def round_record(self, number: int) -> dict[str, Any]:
        path = self.state / "coordinator" / "rounds.jsonl"
        wait_for(lambda: path.exists() and f'"round": {number},' in path.read_text(), 30, f"round {number}'s record")
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return next(r for r in records if r["round"] == number)

    @contextmanager
    def round(self) -> Iterator[Round]:
        tasks = self.next_round()
        self._next = None
        self.rounds_played += 1
        rnd = Round(self, self.rounds_played, tasks)
        try:
            yield rnd
        finally:
            # Whatever the test did, the next test must not wait for this round's deadline.
            for name in set(tasks) - rnd.settled:
                try:
                    rnd.answer(name, shift=0.0, weight=1)
                except grpc.RpcError:
                    pass


class Round:
    """One round as the three clients see it."""

    def __init__(self, fed: Federation, number: int, tasks: dict[str, ClientTask]) -> None:
        self.fed = fed
        self.number = number
        self.tasks = tasks
        self.model = tasks["a"].model()
        self.good: list[tuple[dict[str, np.ndarray], float]] = []
        # Clients whose task is answered or closed: nothing more to send for them.
        self.settled: set[str] = set()

    def answer(self, name: str, *, shift: float, weight: int) -> None:
        """An honest reply: the model moved by `shift`, weighted by `weight` examples."""
        arrays = {k: (v + np.float32(shift)).astype(np.float32) for k, v in self.model.items()}
        res = self.fed.clients[name].reply(self.tasks[name], _content(dict(arrays), weight))
        assert res.accepted
        self.good.append((arrays, float(weight)))
        self.settled.add(name)

    def hostile(self, name: str, send: Callable[[FakeClient, ClientTask], object]) -> grpc.RpcError:
        """Send something hostile; returns the error status it must have produced."""
        with pytest.raises(grpc.RpcError) as info:
            send(self.fed.clients[name], self.tasks[name])
        return info.value

    def assert_result_is_the_mean_of_the_good_replies(self) -> None:
        total = sum(w for _, w in self.good)
        after = self.fed.next_round()["a"].model()
        assert set(after) == set(SHAPES)
        for key in SHAPES:
            expected = sum(arrays[key].astype(np.float64) * w for arrays, w in self.good) / total
            np.testing.assert_allclose(after[key], expected, rtol=1e-5, atol=1e-5, err_msg=key)


def _status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    assert isinstance(err, grpc.Call)
    return err.code(), err.details() or ""


@pytest.fixture(scope="module", params=["weighted-mean", "individual"])
def fed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    mode: str = request.param
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    state = tmp_path_factory.mktemp(f"hostile-{mode}")
    app = _write_app(state / "app")
    coordinator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--app",
            str(app),
            "--state-dir",
            str(state / "coordinator"),
            "--listen",
            "127.0.0.1:0",
            "--aggregation",
            mode,
            "--round-timeout",
            str(ROUND_TIMEOUT),
            "--overselect",
            "1.0",
            "--wait-for-nodes",
            "3",
            "--wait-timeout",
            "120",
            # These are the platform's own rules (Flower would deliver most of these replies).
            "--reply-policy",
            "strict",
            "--insecure",
        ],
        cwd=REPO,
        env=ENV,
        stdout=(state / "coordinator.out").open("wb"),
        stderr=(state / "coordinator.log").open("wb"),
    )
    info_path = state / "coordinator" / "coordinator.json"
    procs = [coordinator]
    try:
        wait_for(lambda: info_path.exists() or coordinator.poll() is not None, 60, "the coordinator")
        info = json.loads(info_path.read_text())
        sel_state = state / "selector.json"
        selector = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "selector",
                "--coordinator",
                info["address"],
                "--listen",
                "127.0.0.1:0",
                "--state-file",
                str(sel_state),
                "--selector-id",
                "sel-1",
                "--reply-policy",
                "strict",
                "--insecure",
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=(state / "selector.log").open("wb"),
        )
        procs.append(selector)
        wait_for(lambda: sel_state.exists() or selector.poll() is not None, 60, "the selector")
        wait_for(lambda: "run info received" in (state / "selector.log").read_text(), 60, "the selector to attach")
        sel = json.loads(sel_state.read_text())
        federation = Federation(
            mode, state, coordinator, selector, info["address"], sel["address"], sel.get("health", sel["address"])
        )
        for i, name in enumerate(("a", "b", "c"), start=1):
            federation.clients[name] = FakeClient(sel["address"], name, i)
        yield federation
        for client in federation.clients.values():
            client.close()
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---- 1. oversized chunks and sizes ---------------------------------------------------------


def _reply_payload(task: ClientTask, content: RecordDict) -> tuple[payload_pb2.PayloadHeader, bytes]:
    payload = message_to_payload(Message(content, reply_to=task.message))
    return payload.header, b"".join(iter_chunks(payload.content))


def test_a_frame_above_the_grpc_limit_is_refused(fed: Federation) -> None:
    before = fed.rejections("bad-upload")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)

        def send(client: FakeClient, task: ClientTask) -> object:
            header, body = _reply_payload(task, _content(dict(rnd.model), 5))
            header.content_size = 2 * MAX_FRAME
            # Our own channels refuse to send such a frame; a hostile client lifts the limit.
            with grpc.insecure_channel(fed.selector_address, options=[("grpc.max_send_message_length", -1)]) as ch:
                raw = FakeClient.__new__(FakeClient)
                raw.session, raw.stub = client.session, selector_pb2_grpc.SelectorStub(ch)
                return raw.push(task.task_id, header, [body + b"\x00" * (2 * MAX_FRAME - len(body))])

        code, details = _status(rnd.hostile("c", send))
        rnd.settled.add("c")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in details and str(MAX_FRAME) in details, details
    rnd.assert_result_is_the_mean_of_the_good_replies()
    # gRPC refuses the frame itself; the selector sees the upload end early and fails the task.
    assert fed.rejections("bad-upload") == before + 1
    assert fed.serving()


def test_a_chunk_above_the_chunk_size_is_refused(fed: Federation) -> None:
    before = fed.rejections("bad-upload")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)

        def send(client: FakeClient, task: ClientTask) -> object:
            header, body = _reply_payload(task, _content(dict(rnd.model), 5))
            oversized = body + b"\x00" * (CHUNK_SIZE + 1024 - len(body))  # within the frame limit
            header.content_size = len(oversized)
            header.content_sha256 = ""
            return client.push(task.task_id, header, [oversized])

        code, details = _status(rnd.hostile("c", send))
        rnd.settled.add("c")  # its task failed: the round does not wait for it
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"chunk of {CHUNK_SIZE + 1024} bytes exceeds the limit of {CHUNK_SIZE} bytes per chunk" in details
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("bad-upload") == before + 1
    assert fed.serving()


def test_a_declared_size_above_the_limits_is_refused_before_any_byte_is_buffered(fed: Federation) -> None:
    before = fed.rejections("too-large")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)
        header, body = _reply_payload(rnd.tasks["c"], _content(dict(rnd.model), 5))

        def send_declared(size: int) -> Callable[[FakeClient, ClientTask], object]:
            def send(client: FakeClient, task: ClientTask) -> object:
                lying = payload_pb2.PayloadHeader()
                lying.CopyFrom(header)
                lying.content_size = size
                return client.push(task.task_id, lying, [body])

            return send

        code, details = _status(rnd.hostile("c", send_declared(MAX_CONTENT_SIZE + 1)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert f"exceeds the limit of {MAX_CONTENT_SIZE} bytes" in details
        # Far more than a reply to this small model can need.
        code, details = _status(rnd.hostile("c", send_declared(1 << 30)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "the result declares 1073741824 bytes; a reply to this task may have at most" in details
        # Nothing was taken: the client's own task is still open for its real reply.
        rnd.answer("c", shift=0.5, weight=2)
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("too-large") == before + 2
    assert fed.serving()


def test_more_bytes_than_declared_are_refused(fed: Federation) -> None:
    before = fed.rejections("bad-upload")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)

        def send(client: FakeClient, task: ClientTask) -> object:
            header, body = _reply_payload(task, _content(dict(rnd.model), 5))
            return client.push(task.task_id, header, [body, b"more than declared"])

        code, details = _status(rnd.hostile("c", send))
        rnd.settled.add("c")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "received more than the announced" in details
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("bad-upload") == before + 1
    assert fed.serving()


# ---- 2. results for tasks the client was not given -------------------------------------------


def test_a_result_for_an_unknown_task_is_refused(fed: Federation) -> None:
    before = fed.rejections("not-selected")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)
        code, details = _status(
            rnd.hostile(
                "c", lambda client, task: client.reply(task, _content(dict(rnd.model), 5), task_id="no-such-task")
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
        assert "task no-such-task was not given to this client" in details
        rnd.answer("c", shift=4.0, weight=1)
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("not-selected") == before + 1
    assert fed.serving()


def test_a_result_for_another_clients_task_is_refused_and_leaves_that_task_alone(fed: Federation) -> None:
    before = fed.rejections("not-selected")
    with fed.round() as rnd:
        a_task = rnd.tasks["a"].task_id
        poisoned = {k: v + np.float32(1000) for k, v in rnd.model.items()}
        code, details = _status(
            rnd.hostile("c", lambda client, task: client.reply(task, _content(dict(poisoned), 1000), task_id=a_task))
        )
        assert code == grpc.StatusCode.NOT_FOUND
        assert f"task {a_task} was not given to this client" in details
        # The same words as for an unknown id: a task id is never confirmed to another client.
        assert "another" not in details
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)
        rnd.answer("c", shift=0.0, weight=1)
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("not-selected") == before + 1
    assert fed.serving()


def test_a_second_result_for_a_task_is_refused(fed: Federation) -> None:
    before = fed.rejections("already-answered")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)
        rnd.answer("c", shift=0.5, weight=2)
        again = {k: v + np.float32(1000) for k, v in rnd.model.items()}
        code, details = _status(rnd.hostile("a", lambda client, task: client.reply(task, _content(dict(again), 500))))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert f"task {rnd.tasks['a'].task_id} was already answered" in details
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("already-answered") == before + 1
    assert fed.serving()


def test_a_result_after_the_round_deadline_is_refused(fed: Federation) -> None:
    before = fed.rejections("round-closed")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)
        started = time.monotonic()
        fed.next_round()  # the round closes at its deadline, then the next one starts
        assert time.monotonic() - started >= ROUND_TIMEOUT - 2.0
        late = {k: v + np.float32(1000) for k, v in rnd.model.items()}
        code, details = _status(rnd.hostile("c", lambda client, task: client.reply(task, _content(dict(late), 50))))
        rnd.settled.add("c")
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert f"the round of task {rnd.tasks['c'].task_id} closed before this result arrived" in details
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("round-closed") == before + 1
    assert fed.serving()


def test_a_header_whose_metadata_does_not_decode_is_refused(fed: Federation) -> None:
    before = fed.rejections("malformed")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)

        def send(client: FakeClient, task: ClientTask) -> object:
            header, body = _reply_payload(task, _content(dict(rnd.model), 5))
            header.metadata = b"\xff\xff\xff\xff not a protobuf"
            return client.push(task.task_id, header, [body])

        code, details = _status(rnd.hostile("c", send))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "the result header's metadata is not a Flower Metadata" in details
        rnd.answer("c", shift=0.5, weight=2)
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("malformed") == before + 1
    assert fed.serving()


# ---- 3 and 4. updates unlike the model, NaN or Inf, absurd weights ---------------------------


def _pickled_object_array() -> Array:
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": i} for i in range(60)], dtype=object).reshape(30, 2), allow_pickle=True)
    return Array(dtype="float32", shape=(30, 2), stype="numpy.ndarray", data=buf.getvalue())


def _with(model: dict[str, np.ndarray], **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: v + np.float32(1000) for k, v in model.items()}  # folded, these would show
    for key, value in changes.items():
        name = key.replace("__", ".")
        if value is None:
            out.pop(name)
        else:
            out[name] = value
    return out


def _nan_at(model: dict[str, np.ndarray], value: float) -> np.ndarray:
    arr = model["fc.weight"] + np.float32(1000)
    arr[7, 1] = value
    return arr


# case: (what c sends, its weight, reason counted, what the status must say)
HOSTILE_UPDATES: dict[str, tuple[Callable[[dict[str, np.ndarray]], dict[str, Any]], Any, str, str]] = {
    "shape": (
        lambda m: _with(m, fc__weight=np.zeros((3, 4), np.float32)),
        5,
        "shape",
        "array 'fc.weight' has shape (3, 4); the model's is (30, 2)",
    ),
    "dtype": (
        lambda m: _with(m, fc__weight=m["fc.weight"].astype(np.float64)),
        5,
        "dtype",
        "array 'fc.weight' has dtype float64; the model's is float32",
    ),
    "strings": (
        lambda m: _with(m, fc__weight=np.full((30, 2), "x", dtype="<U5")),
        5,
        "dtype",
        "array 'fc.weight' has dtype <U5; the model's is float32",
    ),
    "pickled-objects": (
        lambda m: _with(m, fc__weight=_pickled_object_array()),
        5,
        "not-numeric",
        "array 'fc.weight': array data holds Python objects (dtype object); only plain numeric arrays are accepted",
    ),
    "missing-array": (
        lambda m: _with(m, fc__bias=None),
        5,
        "missing-array",
        "array 'fc.bias' of the model is missing from the reply",
    ),
    "extra-array": (
        lambda m: _with(m, fc__extra=np.ones(3, np.float32)),
        5,
        "extra-array",
        "the reply has an array 'fc.extra' the model does not have (the model's: 'fc.weight', 'fc.bias')",
    ),
    "nan": (
        lambda m: _with(m, fc__weight=_nan_at(m, math.nan)),
        5,
        "not-finite",
        "array 'fc.weight' holds NaN or Inf (first at flat index 15); updates must be finite",
    ),
    "inf": (
        lambda m: _with(m, fc__weight=_nan_at(m, -math.inf)),
        5,
        "not-finite",
        "array 'fc.weight' holds NaN or Inf (first at flat index 15); updates must be finite",
    ),
    "negative-weight": (
        lambda m: _with(m),
        -5,
        "weight",
        "weight 'num-examples' is -5; it must be a positive number of examples, at most 1e+12",
    ),
    "zero-weight": (
        lambda m: _with(m),
        0,
        "weight",
        "weight 'num-examples' is 0; it must be a positive number of examples",
    ),
    "absurd-weight": (
        lambda m: _with(m),
        1e15,
        "weight",
        "weight 'num-examples' is 1e+15; it must be a positive number of examples, at most 1e+12",
    ),
    "nan-weight": (
        lambda m: _with(m),
        math.nan,
        "weight",
        "weight 'num-examples' is nan; it must be a positive number of examples",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_UPDATES))
def test_an_update_unlike_the_model_or_not_finite_is_rejected_and_not_folded(fed: Federation, case: str) -> None:
    make, weight, reason, expected = HOSTILE_UPDATES[case]
    before = fed.rejections(reason)
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        code, details = _status(
            rnd.hostile("c", lambda client, task: client.reply(task, _content(make(rnd.model), weight)))
        )
        rnd.settled.add("c")  # its task failed at once: the round does not wait for it
        rnd.answer("b", shift=-2.0, weight=7)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert expected in details
        if fed.mode == "individual":
            # Replies are passed on as they stream in; the coordinator checks them.
            assert details.startswith("the coordinator rejected this result: ")
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections(reason) == before + 1
    record = fed.round_record(rnd.number)
    assert record["rejected"] == 1 and record["failures"] == 1
    assert len(record["participants"]) == 2
    assert fed.serving()


def test_content_that_is_not_a_record_dict_is_rejected(fed: Federation) -> None:
    before = fed.rejections("malformed")
    with fed.round() as rnd:
        rnd.answer("a", shift=1.0, weight=3)
        rnd.answer("b", shift=-2.0, weight=7)

        def send(client: FakeClient, task: ClientTask) -> object:
            header, _ = _reply_payload(task, _content(dict(rnd.model), 5))
            garbage = b"\x0a\xff\xff\xff\x7f" + b"\x00" * 100
            header.content_size = len(garbage)
            header.content_sha256 = ""
            return client.push(task.task_id, header, [garbage])

        code, details = _status(rnd.hostile("c", send))
        rnd.settled.add("c")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "content is not a valid Flower RecordDict" in details
    rnd.assert_result_is_the_mean_of_the_good_replies()
    assert fed.rejections("malformed") == before + 1
    assert fed.serving()


def test_the_federation_finishes_rounds_after_all_of_it(fed: Federation) -> None:
    """The honest clients are still served: two more plain rounds complete."""
    for _ in range(2):
        with fed.round() as rnd:
            rnd.answer("a", shift=1.0, weight=3)
            rnd.answer("b", shift=-2.0, weight=7)
            rnd.answer("c", shift=0.5, weight=2)
        rnd.assert_result_is_the_mean_of_the_good_replies()
    for name in ("coordinator", "selector"):
        assert fed.errors(name) == [], fed.errors(name)
    assert fed.serving()
