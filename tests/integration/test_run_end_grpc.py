"""The end of a run between a real selector servicer and a real client, over loopback gRPC.

A selector (SelectorCore + SelectorServicer, no coordinator: the test plays it) on
127.0.0.1:0 and the client's `Node` in a thread: the client learns how the run
ended while it serves, when it joins after the end, and after its selector went away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client_image.runner import Node, NodeSetup, RunEnd
from fedota_common.chunkwire import add_selector_servicer
from fedota_common.fab import load_app
from fedota_common.grpcutil import bind, make_server
from protos.coordinator.v1 import coordinator_pb2 as cpb
from selector.core import OpenAuthenticator, SelectorCore
from selector.servicer import FabSource, SelectorServicer

REPO = Path(__file__).resolve().parents[2]
ECHO = load_app(REPO / "tests" / "apps" / "echo")


@dataclass
class Live:
    core: SelectorCore
    address: str


@pytest.fixture
def selector() -> Iterator[Live]:
    core = SelectorCore("sel", OpenAuthenticator())
    core.on_welcome(cpb.Welcome(run_id=7, fab_sha256=ECHO.sha256, fab_size=len(ECHO.content)))
    server = make_server(16)
    add_selector_servicer(SelectorServicer(core, FabSource(core, lambda: ECHO.content)), server)
    address = bind(server, "127.0.0.1:0")
    assert address is not None
    server.start()
    yield Live(core, address)
    server.stop(grace=None)


def _node(address: str, tmp_path: Path, **setup: object) -> Node:
    fields: dict[str, object] = {
        "selectors": [address],
        "credential": "",
        "fab_sha256": ECHO.sha256,
        "data_path": tmp_path,
        "partition_id": 0,
        "num_partitions": 1,
        "cache_dir": tmp_path / "cache",
        "display_name": "a",
        "max_join_wait": 10.0,
        "max_reconnect_wait": 10.0,
    }
    fields.update(setup)
    return Node(NodeSetup(**fields))  # type: ignore[arg-type]


def _serve_in_thread(node: Node) -> tuple[threading.Thread, list[RunEnd | BaseException]]:
    out: list[RunEnd | BaseException] = []

    def target() -> None:
        try:
            out.append(node.serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _wait_subscribed(core: SelectorCore, besides: frozenset[str] = frozenset(), timeout: float = 30.0) -> set[str]:
    """Wait for a checked-in session other than `besides`; returns the checked-in sessions' ids."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with core._lock:
            live = {s.session_id for s in core.sessions.values() if s.subscribed and not s.closed}
        if live - besides:
            return live
        time.sleep(0.05)
    raise AssertionError("the client did not check in")


def test_a_serving_client_hears_how_the_run_ended(selector: Live, tmp_path: Path) -> None:
    node = _node(selector.address, tmp_path)
    thread, out = _serve_in_thread(node)
    _wait_subscribed(selector.core)
    selector.core.on_run_finished("the ServerApp failed: boom", "failed")
    thread.join(timeout=15)
    assert out == [RunEnd("failed", "the ServerApp failed: boom")]


def test_a_client_joining_after_the_end_is_told_how_the_run_ended(selector: Live, tmp_path: Path) -> None:
    selector.core.on_run_finished("the coordinator was stopped (SIGTERM)", "stopped")
    end = _node(selector.address, tmp_path).serve()
    assert end == RunEnd("stopped", "the coordinator was stopped (SIGTERM)", late=True)


def test_a_client_sent_away_by_a_stopping_selector_joins_again(selector: Live, tmp_path: Path) -> None:
    node = _node(selector.address, tmp_path)
    thread, out = _serve_in_thread(node)
    first = _wait_subscribed(selector.core)
    assert selector.core.going_away("this selector is shutting down") == 1
    # The run went on (here: at the same selector): the client checks in again and serves to the end.
    _wait_subscribed(selector.core, besides=frozenset(first))
    assert not out
    selector.core.on_run_finished("run finished", "finished")
    thread.join(timeout=15)
    assert out == [RunEnd("finished", "run finished")]
