"""A coordinator restarted while the website is down still knows who may join its run.

The participant list (ids and credential hashes) is saved in the coordinator's state
folder each time it changes; a new start of the same run enforces it until the
website answers. Another run's saved list is never used.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path
from typing import Any

from coordinator.hub import Hub
from coordinator.report import Target
from coordinator.roster import RosterPoller
from tests.ports import free_port

DIGEST = hashlib.sha256(b"fdp_3_secret").hexdigest()
LIST = {"participants": [{"participant": "3", "credential_sha256": DIGEST}]}


class _Website(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps(LIST).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _allowed(hub: Hub) -> list[tuple[str, str]] | None:
    if hub.participants is None:
        return None
    return [(a.participant, a.credential_sha256) for a in hub.participants.allowed]


def test_a_restarted_coordinator_enforces_its_runs_saved_list_while_the_website_is_down(tmp_path: Path) -> None:
    cache = tmp_path / "participants.json"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Website)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/internal/v1/runs/1/"
    first = RosterPoller(Target(url, "t"), Hub(), cache=cache)
    assert first.poll_once()
    saved = json.loads(cache.read_text())
    assert saved["participants"] == LIST["participants"] and "secret" not in cache.read_text()
    server.shutdown()
    server.server_close()

    # The same run starts again (a crash, a relaunch) and the website does not answer.
    hub = Hub()
    again = RosterPoller(Target(url, "t", timeout=1.0), hub, cache=cache, interval=60.0)
    again.start()
    try:
        assert _allowed(hub) == [("3", DIGEST)]
        assert not again.poll_once()
        assert _allowed(hub) == [("3", DIGEST)], "the saved list stays in force"
    finally:
        again.stop()

    # Another run of the platform: the saved list is not its own, so nobody is admitted yet.
    other = Hub()
    RosterPoller(Target(f"http://127.0.0.1:{port}/internal/v1/runs/2/", "t"), other, cache=cache)._restore()
    assert _allowed(other) is None


def test_a_damaged_saved_list_is_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "participants.json"
    url = f"http://127.0.0.1:{free_port()}/internal/v1/runs/1/"
    bad_entry = {"for": url, "participants": [{"participant": "x", "credential_sha256": DIGEST}]}
    for text in ("not json", json.dumps({"for": url}), json.dumps(bad_entry)):
        cache.write_text(text)
        hub = Hub()
        RosterPoller(Target(url, "t"), hub, cache=cache)._restore()
        assert hub.participants is None, text
