"""How the end of a run travels: coordinator hub → selector core → client, and what the client
does then (exit code, or with --follow wait for the next run). No network: the client's
session is scripted, the clock is fake.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from client_image import exits
from client_image import main as client_main
from client_image.runner import FederationLost, Node, NodeSetup, RunEnd, _Dropped, _end_of
from coordinator.hub import Hub
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.selector.v1 import selector_pb2 as spb
from selector.core import OpenAuthenticator, SelectorCore, SelectorError

# ---- coordinator -------------------------------------------------------------------------------


def test_the_hub_tells_every_selector_how_the_run_ended_once() -> None:
    hub = Hub()
    link = hub.attach("s1", [])
    assert hub.finish("the ServerApp failed: boom", "failed")
    # A stop signal during the final upload does not turn the failure into a stop.
    assert not hub.finish("the coordinator was stopped (SIGTERM)", "stopped")
    msg = link.outbox.get_nowait()
    assert msg is not None
    assert msg.finished.status == cpb.RUN_STATUS_FAILED and msg.finished.reason == "the ServerApp failed: boom"
    assert link.outbox.empty() and hub.wait_told(0.1)
    # A selector attaching later gets the same end (the servicer sends `hub.ended` after the Welcome).
    assert hub.ended is not None and hub.ended.finished.status == cpb.RUN_STATUS_FAILED


def test_wait_told_gives_up_when_a_selector_does_not_take_the_news() -> None:
    hub = Hub()
    hub.attach("s1", [])
    hub.finish("run finished")
    assert not hub.wait_told(0.1)


# ---- selector ----------------------------------------------------------------------------------


def _selector() -> tuple[SelectorCore, list[spb.SelectorEvent]]:
    core = SelectorCore("sel", OpenAuthenticator())
    core.on_welcome(cpb.Welcome(run_id=1, fab_sha256="f" * 64, fab_size=1))
    session, _ = core.join("fdp_1_a", "", "a")
    events: list[spb.SelectorEvent] = []
    core.sessions[session.session_id].outbox = _Recorder(events)  # type: ignore[assignment]
    return core, events


class _Recorder:
    def __init__(self, into: list[spb.SelectorEvent]) -> None:
        self.into = into

    def put(self, event: spb.SelectorEvent | None) -> None:
        if event is not None:
            self.into.append(event)


@pytest.mark.parametrize(
    ("status", "expected"),
    [("finished", spb.RUN_STATUS_FINISHED), ("failed", spb.RUN_STATUS_FAILED), ("stopped", spb.RUN_STATUS_STOPPED)],
)
def test_the_selector_passes_the_end_on_and_refuses_joins_saying_how_the_run_ended(status: str, expected: int) -> None:
    core, events = _selector()
    core.on_run_finished(f"why it {status}", status)
    assert [(e.shutdown.status, e.shutdown.reason, e.shutdown.rejoin) for e in events] == [
        (expected, f"why it {status}", False)
    ]
    with pytest.raises(SelectorError) as refused:
        core.join("fdp_2_b", "", "b")
    assert refused.value.code == "FAILED_PRECONDITION"
    assert (refused.value.run_status, refused.value.run_reason) == (status, f"why it {status}")
    # A coordinator that welcomes the selector again (a next run, a resumed one) opens it again.
    core.on_welcome(cpb.Welcome(run_id=2, fab_sha256="f" * 64, fab_size=1))
    core.join("fdp_2_b", "", "b")


def test_a_stopping_selector_sends_its_clients_elsewhere_unless_the_run_is_over() -> None:
    core, events = _selector()
    assert core.going_away("shutting down") == 1
    assert events[-1].shutdown.rejoin and events[-1].shutdown.status == spb.RUN_STATUS_UNSPECIFIED
    core, events = _selector()
    core.on_run_finished("the coordinator was stopped (SIGTERM)", "stopped")
    assert core.going_away("shutting down") == 0
    assert [e.shutdown.status for e in events] == [spb.RUN_STATUS_STOPPED]


# ---- client: what a shutdown means ------------------------------------------------------------


def test_a_shutdown_says_how_the_run_ended() -> None:
    assert _end_of(spb.Shutdown(reason="r", status=spb.RUN_STATUS_FAILED)) == RunEnd("failed", "r")
    assert _end_of(spb.Shutdown(reason="r", status=spb.RUN_STATUS_STOPPED)).status == "stopped"
    # Without a status: access withdrawn, or an older selector's "run over".
    assert _end_of(spb.Shutdown(reason="access withdrawn: revoked")).status == "withdrawn"
    assert _end_of(spb.Shutdown(reason="run finished")).status == "finished"
    assert RunEnd("finished", "run finished").describe() == "the run finished"
    assert RunEnd("stopped", "the coordinator was stopped (SIGTERM)").describe() == (
        "the run was stopped: the coordinator was stopped (SIGTERM)"
    )
    assert RunEnd("failed", "the run failed: nothing accepted").describe() == "the run failed: nothing accepted"


# ---- client: the join loop ---------------------------------------------------------------------


class _Unavailable(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses; Connection refused"


class ScriptedNode(Node):
    """A Node whose sessions follow a script; time passes only when it sleeps."""

    def __init__(self, script: list[Callable[[], RunEnd]], **setup: object) -> None:
        fields: dict[str, object] = {
            "selectors": ["s1:1"],
            "credential": "",
            "fab_sha256": "",
            "data_path": Path("/data"),
            "partition_id": 0,
            "num_partitions": 1,
            "cache_dir": Path("/tmp"),
            "display_name": "a",
            "max_join_wait": 120.0,
            "max_reconnect_wait": 300.0,
        }
        fields.update(setup)
        super().__init__(NodeSetup(**fields))  # type: ignore[arg-type]
        self.script = script
        self.now = 0.0
        self.clock = lambda: self.now
        self.sleep = self._advance
        self.context = object()

    def _advance(self, seconds: float) -> None:
        self.now += seconds

    def _session(self, target: str) -> RunEnd:
        step = self.script.pop(0) if self.script else _refused
        return step()


def _refused() -> RunEnd:
    raise _Unavailable()


def _serves_then(node_ref: list[ScriptedNode], outcome: Callable[[], RunEnd]) -> Callable[[], RunEnd]:
    def step() -> RunEnd:
        node_ref[0]._held = True
        node_ref[0].now += 30
        return outcome()

    return step


def _dropped() -> RunEnd:
    raise _Dropped("this selector is shutting down")


def test_a_client_that_loses_every_selector_gives_up_after_the_reconnect_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ref: list[ScriptedNode] = []
    node = ScriptedNode([])
    ref.append(node)
    node.script = [_refused, _serves_then(ref, _dropped)]
    with pytest.raises(FederationLost) as lost:
        node.serve()
    assert "lost the federation: no selector answered for 30" in str(lost.value)
    assert 300 < node.now - 30 < 320  # joined at 0-30 s, gave up just after 300 s more
    err = capsys.readouterr().err
    assert "the session with the selector at s1:1 ended (this selector is shutting down); joining again" in err
    assert "giving up in" in err  # said every minute meanwhile


def test_with_follow_a_client_waits_for_the_next_run_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    ref: list[ScriptedNode] = []
    node = ScriptedNode([], follow=True)
    ref.append(node)
    late = RunEnd("stopped", "the coordinator was stopped (SIGTERM)", late=True)
    node.script = [
        _serves_then(ref, lambda: RunEnd("finished", "run finished")),
        *[lambda: late] * 5,  # the old run's selectors linger, saying the run is over
        *[_refused] * 40,  # then they are gone for minutes
        _serves_then(ref, lambda: RunEnd("withdrawn", "access withdrawn: revoked")),
    ]
    end = node.serve()
    assert end.status == "withdrawn"  # only that ends a following client
    err = capsys.readouterr().err
    assert err.count("the run finished; --follow: waiting for the problem's next run") == 1
    assert "waiting for the problem's next run (" in err  # the minute line
    assert node.context is None  # the next run starts with a fresh Context


def test_without_follow_a_run_found_over_at_the_start_ends_the_client() -> None:
    node = ScriptedNode([lambda: RunEnd("failed", "the ServerApp failed: boom", late=True)])
    assert node.serve() == RunEnd("failed", "the ServerApp failed: boom", late=True)


# ---- client: exit codes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "code", "says"),
    [
        (RunEnd("finished", "run finished"), exits.OK, "the run finished. This client is done"),
        (RunEnd("stopped", "the coordinator was stopped (SIGTERM)"), exits.OK, "the run was stopped: the coordinator"),
        (RunEnd("failed", "the ServerApp failed: boom"), exits.RUN_FAILED, "error: the run failed: the ServerApp"),
        (RunEnd("withdrawn", "access withdrawn: revoked"), exits.REFUSED, "error: the selector ended"),
        (FederationLost("lost the federation: ..."), exits.LOST, "error: lost the federation"),
    ],
)
def test_the_exit_code_says_how_the_run_ended(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    outcome: RunEnd | Exception,
    code: int,
    says: str,
) -> None:
    class FakeNode:
        tasks_done = 2

        def __init__(self, setup: NodeSetup) -> None:
            assert setup.max_reconnect_wait == 42.0 and setup.follow is False

        def serve(self) -> RunEnd:
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

    monkeypatch.setattr(client_main, "Node", FakeNode)
    settings = client_main.Settings.from_env(
        {"FEDOTA_MAX_RECONNECT_WAIT": "42"},
        ["--selector", "127.0.0.1:1", "--insecure", "--data-path", str(tmp_path)],
    )
    assert client_main.run(settings) == code
    assert says in capsys.readouterr().err


def test_follow_is_a_switch_and_an_environment_variable() -> None:
    assert client_main.Settings.from_env({}, ["--follow"]).follow is True
    assert client_main.Settings.from_env({"FEDOTA_FOLLOW": "1"}, []).follow is True
    assert client_main.Settings.from_env({}, []).follow is False
