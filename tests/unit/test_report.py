"""The coordinator's reporter against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from coordinator.hub import Hub
from coordinator.report import NodeInfo, Reporter, Target, checkpoint_path
from coordinator.rounds import RoundRecord
from protos.coordinator.v1 import coordinator_pb2 as cpb
from protos.selector.v1 import selector_pb2 as spb
from selector.core import OpenAuthenticator, SelectorCore
from tests.ports import free_port

TOKEN = "svc-token-123"


class Recorder:
    """What the fake webserver received."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.uploads: dict[str, tuple[int, str]] = {}
        self.largest_read = 0
        self.refuse_kind = ""
        self.busy_until = 0.0  # answer 500 until then (time.monotonic()), as a locked database does


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: bytes = b"{}") -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            rec.auth.append(self.headers.get("Authorization", ""))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._reply(401)
                return
            events = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if time.monotonic() < rec.busy_until:
                self._reply(500, b"database is locked")
                return
            if rec.refuse_kind and any(e["kind"] == rec.refuse_kind for e in events):
                self._reply(400, b'{"detail": "events[0].round: required"}')
                return
            rec.events.extend(events)
            self._reply(200)

        def do_PUT(self) -> None:  # noqa: N802
            remaining = int(self.headers["Content-Length"])
            digest = hashlib.sha256()
            while remaining:
                block = self.rfile.read(min(remaining, 1 << 16))
                rec.largest_read = max(rec.largest_read, len(block))
                digest.update(block)
                remaining -= len(block)
            rec.uploads[self.path] = (int(self.headers["Content-Length"]), digest.hexdigest())
            self._reply(200)

    return Handler


def _serve(rec: Recorder, port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(rec))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def webserver() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder()
    server = _serve(rec)
    yield rec, f"http://127.0.0.1:{server.server_address[1]}/internal/v1/runs/7/"
    server.shutdown()
    server.server_close()


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _kinds(rec: Recorder) -> list[str]:
    return [e["kind"] for e in rec.events]


def test_events_arrive_with_the_token_and_participants_resolved(webserver: tuple[Recorder, str]) -> None:
    rec, url = webserver
    nodes = [NodeInfo(11, "p1-r1-s0", "42", "Clinic A"), NodeInfo(12, "p1-r1-s1", "", "site 12")]
    reporter = Reporter(Target(url, TOKEN), nodes=lambda: nodes, selectors=lambda: ["p1-r1-s0", "p1-r1-s1"])
    reporter.start()
    reporter.run_started(total_rounds=3, app="fedota-tabular", fab_sha256="ab" * 32)
    reporter.round_finished(
        {
            "round": 1,
            "started": 1.0,
            "finished": 3.5,
            "seconds": 2.5,
            "participants": [11, 12],
            "failures": 2,
            "rejected": 2,
            "train_metrics": {"train_loss": 0.7},
            "eval_metrics": {"eval_loss": 0.5, "eval_acc": 0.81},
            "eval_nodes": [11],
            "checkpoint": "checkpoints/round_0001.npz",
        }
    )
    reporter.run_finished(ok=True, detail="run finished")
    assert reporter.close(timeout=10.0)

    assert set(rec.auth) == {f"Bearer {TOKEN}"}
    kinds = _kinds(rec)
    assert kinds.index("run_started") < kinds.index("round_finished") < kinds.index("run_finished")
    assert "pool" in kinds
    assert len({e["event_id"] for e in rec.events}) == len(rec.events)
    started = next(e for e in rec.events if e["kind"] == "run_started")
    assert started["total_rounds"] == 3 and started["app"] == "fedota-tabular"
    rnd = next(e for e in rec.events if e["kind"] == "round_finished")
    assert rnd["round"] == 1 and rnd["train_loss"] == 0.7 and rnd["eval_loss"] == 0.5 and rnd["eval_acc"] == 0.81
    # Replies refused as malformed or hostile reach the website, apart from other failures.
    assert (rnd["failures"], rnd["rejected"]) == (2, 2)
    assert rnd["participants"] == [
        {"node_id": 11, "participant": "42", "site": "Clinic A"},
        {"node_id": 12, "participant": "", "site": "site 12"},
    ]
    assert rnd["eval_participants"] == [{"node_id": 11, "participant": "42", "site": "Clinic A"}]
    pool = next(e for e in rec.events if e["kind"] == "pool")
    assert pool["selectors"] == {"p1-r1-s0": 1, "p1-r1-s1": 1}
    assert isinstance(rnd["ts"], float)


def test_a_client_that_left_is_still_credited(webserver: tuple[Recorder, str]) -> None:
    rec, url = webserver
    current = [NodeInfo(5, "s0", "9", "Clinic B")]
    reporter = Reporter(Target(url, TOKEN), nodes=lambda: list(current))
    reporter._refresh_nodes()  # the pool snapshot saw the client once
    current.clear()
    reporter.round_finished({"round": 2, "participants": [5], "train_metrics": {}, "eval_metrics": {}})
    reporter.start()
    assert reporter.close(timeout=10.0)
    rnd = next(e for e in rec.events if e["kind"] == "round_finished")
    assert rnd["participants"] == [{"node_id": 5, "participant": "9", "site": "Clinic B"}]
    assert (rnd["failures"], rnd["rejected"]) == (0, 0)  # a round document without the counts


def test_a_sites_privacy_report_reaches_the_webserver_as_it_came(webserver: tuple[Recorder, str]) -> None:
    rec, url = webserver
    reporter = Reporter(Target(url, TOKEN), nodes=lambda: [NodeInfo(5, "s0", "9", "Clinic B")])
    active = spb.PrivacyReport(
        state="active",
        epsilon=2.5,
        delta=1e-5,
        noise_multiplier=1.2,
        clipping_norm=1.0,
        releases=4,
        run_releases=2,
        round=2,
    )
    active.epsilon_cap = 8.0
    reporter.site_privacy(cpb.SitePrivacy(node_id=5, report=active))
    # A site that stopped at check-in was never announced: the selector names it.
    stopped = spb.PrivacyReport(state="exhausted", epsilon=7.9, delta=1e-5, reason="budget spent")
    reporter.site_privacy(cpb.SitePrivacy(node_id=6, report=stopped, participant="10", display_name="Clinic C"))
    reporter.start()
    assert reporter.close(timeout=10.0)
    first, second = (e for e in rec.events if e["kind"] == "site_privacy")
    assert {k: first[k] for k in ("node_id", "participant", "site", "state", "epsilon", "epsilon_cap")} == {
        "node_id": 5,
        "participant": "9",
        "site": "Clinic B",
        "state": "active",
        "epsilon": 2.5,
        "epsilon_cap": 8.0,
    }
    assert (first["releases"], first["run_releases"], first["round"], first["noise_multiplier"]) == (4, 2, 2, 1.2)
    assert (second["participant"], second["site"], second["state"], second["reason"]) == (
        "10",
        "Clinic C",
        "exhausted",
        "budget spent",
    )
    assert second["epsilon_cap"] is None and second["round"] is None


def test_the_rounds_rejected_replies_reach_the_webserver(webserver: tuple[Recorder, str]) -> None:
    rec, url = webserver
    # The round document exactly as the coordinator's round tracker writes it to rounds.jsonl.
    record = RoundRecord("3", started=1.0, finished=2.0, participants={4}, failures=3, rejected=2)
    record.secure_aggregation = "completed"
    reporter = Reporter(Target(url, TOKEN))
    reporter.round_finished(record.as_json())
    reporter.round_finished(RoundRecord("4").as_json())
    reporter.start()
    assert reporter.close(timeout=10.0)
    rnd, plain = (e for e in rec.events if e["kind"] == "round_finished")
    assert (rnd["round"], rnd["failures"], rnd["rejected"]) == (3, 3, 2)
    # Whether Flower's SecAgg+ made the round's model (the manifests record it); "" when unused.
    assert (rnd["secure_aggregation"], plain["secure_aggregation"]) == ("completed", "")


def test_a_rejected_reply_reaches_the_dashboard_log_with_its_reason(webserver: tuple[Recorder, str]) -> None:
    import logging

    from coordinator.report import ReportHandler

    rec, url = webserver
    reporter = Reporter(Target(url, TOKEN))
    logger = logging.getLogger("coordinator.hub.test-forwarding")
    handler = ReportHandler(reporter)
    logger.addHandler(handler)
    try:
        # As coordinator/hub.py logs it: the why is in the record's fields, not its message.
        logger.warning("reply rejected", extra={"rejected": "non-finite", "detail": "array 'w' holds NaN or Inf"})
        logger.info("not forwarded", extra={"detail": "below WARNING"})
    finally:
        logger.removeHandler(handler)
    reporter.start()
    assert reporter.close(timeout=10.0)
    assert [e["message"] for e in rec.events if e["kind"] == "log"] == ["reply rejected: array 'w' holds NaN or Inf"]


def test_events_are_delivered_once_the_webserver_comes_back() -> None:
    port = free_port()
    reporter = Reporter(Target(f"http://127.0.0.1:{port}/internal/v1/runs/1/", TOKEN), backoff_cap=0.2)
    reporter.start()
    reporter.run_started(total_rounds=2, app="a", fab_sha256="x")
    reporter.log_line("WARNING", "selector p1-r1-s0 lost")
    time.sleep(0.6)  # several failed attempts while nobody listens
    assert reporter.delivered == 0

    rec = Recorder()
    server = _serve(rec, port)
    try:
        assert _until(lambda: len(rec.events) == 2)
        assert _kinds(rec) == ["run_started", "log"]
        assert rec.events[1]["message"] == "selector p1-r1-s0 lost"
        assert reporter.close(timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()


def test_close_gives_up_after_its_deadline_when_the_webserver_stays_down() -> None:
    reporter = Reporter(Target(f"http://127.0.0.1:{free_port()}/r/", TOKEN), backoff_cap=0.2)
    reporter.start()
    reporter.run_finished(ok=True, detail="done")
    t0 = time.monotonic()
    assert reporter.close(timeout=1.0) is False
    assert time.monotonic() - t0 < 3.0


def test_a_run_s_last_reports_wait_out_a_busy_webserver_that_took_its_earlier_ones(
    webserver: tuple[Recorder, str],
) -> None:
    """A webserver busy for longer than the old 10 s at the run's end lost the run's outcome."""
    from coordinator.main import FINAL_REPORTS_PATIENCE, final_reports_deadline

    rec, url = webserver
    reporter = Reporter(Target(url, TOKEN), backoff_cap=0.2)
    reporter.start()
    reporter.run_started(total_rounds=1, app="fedota-tabular", fab_sha256="ab" * 32)
    assert _until(lambda: reporter.delivered == 1)
    rec.busy_until = time.monotonic() + 10.5
    reporter.run_finished(ok=True, detail="run finished")
    deadline = final_reports_deadline(reporter)
    assert deadline >= FINAL_REPORTS_PATIENCE
    assert reporter.close(timeout=deadline)
    assert _kinds(rec) == ["run_started", "run_finished"]


def test_a_webserver_never_reached_gets_ten_seconds_at_the_end() -> None:
    from coordinator.main import final_reports_deadline

    reporter = Reporter(Target(f"http://127.0.0.1:{free_port()}/r/", TOKEN))
    reporter.run_finished(ok=True, detail="done")
    assert final_reports_deadline(reporter) == 10.0


def test_a_big_checkpoint_streams_without_loading_the_file(webserver: tuple[Recorder, str], tmp_path: Path) -> None:
    rec, url = webserver
    big = tmp_path / "round_0003.npz"
    size = 64 * 1024 * 1024
    with big.open("wb") as fh:
        for i in range(64):
            fh.write(bytes([i]) * (1024 * 1024))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    reporter = Reporter(Target(url, TOKEN), spool_dir=tmp_path / "spool", round_pt_max_bytes=0)

    tracemalloc.start()
    try:
        reporter.checkpoint(3, big, "npz")
        reporter.start()
        assert reporter.close(timeout=60.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert rec.uploads["/internal/v1/runs/7/checkpoints/3/npz"] == (size, digest)
    assert peak < 8 * 1024 * 1024, f"upload held {peak} bytes in memory"
    # The pinned copy is gone after upload; the original stays.
    assert big.exists() and not list((tmp_path / "spool").iterdir())


def test_a_checkpoint_pruned_from_disk_is_still_uploaded(webserver: tuple[Recorder, str], tmp_path: Path) -> None:
    rec, url = webserver
    ckpt = tmp_path / "round_0001.npz"
    ckpt.write_bytes(b"model bytes")
    reporter = Reporter(Target(url, TOKEN), spool_dir=tmp_path / "spool")
    reporter.checkpoint(1, ckpt, "npz")
    ckpt.unlink()  # RoundTracker prunes old checkpoints (keep-checkpoints)
    reporter.start()
    assert reporter.close(timeout=10.0)
    assert rec.uploads["/internal/v1/runs/7/checkpoints/1/npz"][0] == len(b"model bytes")


def test_full_buffer_drops_log_lines_first() -> None:
    reporter = Reporter(Target("http://127.0.0.1:9/r/", TOKEN), max_events=4)
    reporter.run_started(total_rounds=2, app="a", fab_sha256="x")
    for i in range(3):
        reporter.log_line("WARNING", f"line {i}")
    reporter.round_finished({"round": 1, "participants": [], "train_metrics": {}, "eval_metrics": {}})
    reporter.round_finished({"round": 2, "participants": [], "train_metrics": {}, "eval_metrics": {}})
    kinds = [e["kind"] for e in reporter.events]
    assert kinds == ["run_started", "log", "round_finished", "round_finished"]
    assert reporter.events[1]["message"] == "line 2"  # the oldest went first
    assert reporter.dropped == 2
    reporter.run_finished(ok=True, detail="")
    assert reporter.dropped == 3 and reporter.events[-1]["kind"] == "run_finished"
    assert not any(e["kind"] == "log" for e in reporter.events)


def test_an_event_the_webserver_refuses_is_dropped_and_the_rest_delivered(
    webserver: tuple[Recorder, str], caplog: pytest.LogCaptureFixture
) -> None:
    rec, url = webserver
    rec.refuse_kind = "round_finished"
    reporter = Reporter(Target(url, TOKEN))
    reporter.run_started(total_rounds=1, app="a", fab_sha256="x")
    reporter.round_finished({"round": 1, "participants": [], "train_metrics": {}, "eval_metrics": {}})
    reporter.run_finished(ok=True, detail="")
    reporter.start()
    assert reporter.close(timeout=10.0)
    assert _kinds(rec) == ["run_started", "run_finished"]
    assert reporter.refused == 1
    assert "webserver refused an event" in caplog.text


def test_a_wrong_token_is_not_retried_forever(webserver: tuple[Recorder, str]) -> None:
    rec, url = webserver
    reporter = Reporter(Target(url, "wrong"))
    reporter.run_started(total_rounds=1, app="a", fab_sha256="x")
    reporter.start()
    assert reporter.close(timeout=5.0)
    assert rec.events == [] and reporter.refused == 1


def test_selector_sends_the_participant_id_never_the_credential() -> None:
    assert OpenAuthenticator().check("fdp_42_s3cr3t-v4lue") == "42"
    assert OpenAuthenticator().check("not-a-participant-credential") == ""
    core = SelectorCore("p1-r1-s0", OpenAuthenticator())
    core.on_welcome(cpb.Welcome(run_id=1, fab_sha256="f" * 64, fab_size=1))
    session, _ = core.join("fdp_42_s3cr3t-v4lue", "", "")
    assert session.participant == "42"
    assert "s3cr3t" not in session.display_name and "fdp_" not in session.display_name
    assert session.display_name == f"site {session.node_id}"
    hello = core.hello_nodes()
    assert hello == []  # not subscribed yet
    core.subscribe(session)
    (joined,) = core.hello_nodes()
    assert joined.participant == "42" and "s3cr3t" not in joined.SerializeToString().decode("latin-1")

    hub = Hub()
    hub.attach("p1-r1-s0", [(joined.node_id, joined.display_name, joined.participant)])
    hub.node_joined("p1-r1-s0", 77, "", "43")
    assert hub.nodes[joined.node_id].participant == "42"
    assert hub.nodes[77].display_name == "site 77" and hub.nodes[77].participant == "43"


def test_a_rounds_model_is_also_offered_as_a_pytorch_state_dict(
    webserver: tuple[Recorder, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import torch

    rec, url = webserver
    weights = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc.bias": np.ones(2, dtype=np.float32)}
    npz = tmp_path / "round_0002.npz"
    np.savez(npz, **weights)  # type: ignore[arg-type]
    received: dict[str, bytes] = {}
    original_send = Target.send

    def keep(self: Target, method: str, path: str, body: Any, headers: dict[str, str]) -> None:
        data = body.read() if hasattr(body, "read") else body
        received[path] = data
        original_send(self, method, path, data, headers)

    monkeypatch.setattr(Target, "send", keep)
    reporter = Reporter(Target(url, TOKEN), spool_dir=tmp_path / "spool")
    reporter.checkpoint(2, npz, "npz")
    reporter.start()
    assert reporter.close(timeout=30.0)

    assert set(rec.uploads) == {"/internal/v1/runs/7/checkpoints/2/npz", "/internal/v1/runs/7/checkpoints/2/pt"}
    pt = tmp_path / "received.pt"
    pt.write_bytes(received["checkpoints/2/pt"])
    state = torch.load(pt)
    assert list(state) == ["fc.weight", "fc.bias"]
    assert torch.equal(state["fc.weight"], torch.from_numpy(weights["fc.weight"]))
    assert not list((tmp_path / "spool").iterdir())  # no converted or pinned file left behind


def test_a_file_that_is_not_an_npz_is_still_uploaded(webserver: tuple[Recorder, str], tmp_path: Path) -> None:
    rec, url = webserver
    odd = tmp_path / "round_0001.npz"
    odd.write_bytes(b"not a zip")
    reporter = Reporter(Target(url, TOKEN), spool_dir=tmp_path / "spool")
    reporter.checkpoint(1, odd, "npz")
    reporter.start()
    assert reporter.close(timeout=10.0)
    assert list(rec.uploads) == ["/internal/v1/runs/7/checkpoints/1/npz"]


def test_the_reporter_is_off_unless_configured_and_needs_a_token() -> None:
    from coordinator.main import Settings
    from fedota_common.settings import SettingsError

    assert Settings.from_env({"FEDOTA_APP": "apps/tabular", "FEDOTA_INSECURE": "1"}, []).report_url == ""
    with pytest.raises(SettingsError, match="FEDOTA_REPORT_TOKEN"):
        Settings.from_env({"FEDOTA_APP": "a", "FEDOTA_REPORT_URL": "http://web:8000/internal/v1/runs/1/"}, [])
    with pytest.raises(SettingsError, match="FEDOTA_REPORT_URL"):
        Settings.from_env({"FEDOTA_APP": "a", "FEDOTA_REPORT_URL": "web:8000", "FEDOTA_REPORT_TOKEN": "t"}, [])


def test_pool_snapshots_say_how_many_clients_a_round_waits_for(webserver: tuple[Recorder, str]) -> None:
    rec, url = webserver
    waiting = [3]
    nodes = [NodeInfo(11, "s0", "", "a"), NodeInfo(12, "s0", "", "b")]
    reporter = Reporter(
        Target(url, TOKEN), nodes=lambda: nodes, selectors=lambda: ["s0"], waiting=lambda: waiting[0], pool_interval=60
    )
    reporter.start()
    assert _until(lambda: any(e.get("waiting_for") == 3 for e in rec.events))
    waiting[0] = 0  # the third client came: a new snapshot, although the counts did not change
    assert _until(lambda: any(e.get("waiting_for") == 0 for e in rec.events))
    assert reporter.close(timeout=10.0)
    first = next(e for e in rec.events if e["kind"] == "pool")
    assert (first["clients"], first["waiting_for"]) == (2, 3)


def test_a_checkpoint_goes_to_its_attempts_address() -> None:
    # Attempt 1's address is the one coordinators older than attempts used: a website takes it as attempt 1.
    assert checkpoint_path(4, "npz") == checkpoint_path(4, "npz", 1) == "checkpoints/4/npz"
    assert checkpoint_path(0, "pt", 3) == "checkpoints/0/pt?attempt=3"


def test_a_restarted_coordinators_models_are_uploaded_as_its_attempt(
    webserver: tuple[Recorder, str], tmp_path: Path
) -> None:
    rec, url = webserver
    model = tmp_path / "round_0001.npz"
    model.write_bytes(b"not a zip, so no .pt")
    reporter = Reporter(Target(url, TOKEN), spool_dir=tmp_path / "spool")
    reporter.run_started(total_rounds=2, app="a", fab_sha256="x", attempt=2)
    reporter.checkpoint(1, model, "npz")
    reporter.checkpoint(0, model, "npz")
    reporter.start()
    assert reporter.close(timeout=10.0)
    assert set(rec.uploads) == {
        "/internal/v1/runs/7/checkpoints/1/npz?attempt=2",
        "/internal/v1/runs/7/checkpoints/0/npz?attempt=2",
    }
    assert next(e for e in rec.events if e["kind"] == "run_started")["attempt"] == 2


def _with_rounds_queued(url: str, tmp_path: Path, rounds: int) -> Reporter:
    """A reporter (not started) with rounds 1..`rounds` queued as .npz only."""
    reporter = Reporter(Target(url, TOKEN), spool_dir=tmp_path / "spool", round_pt_max_bytes=0)
    for number in range(1, rounds + 1):
        model = tmp_path / f"round_{number:04d}.npz"
        model.write_bytes(b"round %d" % number)
        reporter.checkpoint(number, model, "npz")
    return reporter


def test_the_final_model_goes_ahead_of_round_checkpoints_still_waiting(
    webserver: tuple[Recorder, str], tmp_path: Path
) -> None:
    """Rounds faster than their uploads: the run's result is sent next, not after the backlog."""
    rec, url = webserver
    reporter = _with_rounds_queued(url, tmp_path, 5)
    final = tmp_path / "final_model.npz"
    final.write_bytes(b"final")
    reporter.checkpoint(0, final, "npz")
    assert reporter.pending_uploads() == 6
    reporter.start()
    assert reporter.close(timeout=10.0)
    sent = [path.rsplit("/checkpoints/", 1)[1] for path in rec.uploads]
    assert sent == ["0/npz", "1/npz", "2/npz", "3/npz", "4/npz", "5/npz"], sent


def test_a_final_model_queued_during_an_upload_waits_only_for_that_one(
    webserver: tuple[Recorder, str], tmp_path: Path
) -> None:
    rec, url = webserver
    reporter = _with_rounds_queued(url, tmp_path, 3)
    # As the upload loop does when it takes the first file.
    reporter._sending = reporter.uploads[0]
    final = tmp_path / "final_model.npz"
    final.write_bytes(b"final")
    reporter.checkpoint(0, final, "npz")
    reporter.checkpoint(0, final, "pt")
    assert [(u.round, u.kind) for u in reporter.uploads] == [(1, "npz"), (0, "npz"), (0, "pt"), (2, "npz"), (3, "npz")]
    reporter._sending = None
    reporter.start()
    assert reporter.close(timeout=10.0)
    assert len(rec.uploads) == 5
