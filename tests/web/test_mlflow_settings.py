"""Linking a problem to MLflow (API and edit page), the token kept secret, and an export that cannot reach MLflow.

No MLflow server here (tests/integration/test_mlflow_export.py runs one): what the website
sends is seen by a tiny recording HTTP server, and an unreachable server is a port nobody
listens on. Runs on SQLite and PostgreSQL like every web test.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from tests.ports import free_port
from tests.web.test_problems import editor_data, login
from webserver.problems.mlflow_client import MlflowClient, MlflowError
from webserver.problems.mlflow_export import open_token, run_mlflow_export
from webserver.problems.models import MlflowExport, Problem, Run

pytestmark = [pytest.mark.web, pytest.mark.django_db]

TOKEN = "mlflow-token-do-not-show"
SERVICE_TOKEN = "service-token"


@pytest.fixture
def problem(users: dict[str, Any], make_problem: Any) -> Problem:
    return make_problem(users["owner"])


def _patch(client: Client, problem: Problem, body: dict[str, Any]) -> Any:
    return client.patch(f"/api/v1/problems/{problem.pk}/", data=json.dumps(body), content_type="application/json")


def test_the_api_links_a_problem_and_never_returns_the_token(
    client: Client, users: dict[str, Any], problem: Problem
) -> None:
    login(client, users["owner"])
    response = _patch(client, problem, {"mlflow_tracking_url": "https://mlflow.example.org/", "mlflow_token": TOKEN})
    assert response.status_code == 200, response.content
    assert response.json()["mlflow"] == {
        "tracking_url": "https://mlflow.example.org",
        "experiment": "",
        "token_set": True,
    }
    stored = Problem.objects.get(pk=problem.pk)
    assert TOKEN not in stored.mlflow_token and open_token(stored.mlflow_token) == TOKEN
    assert TOKEN not in client.get(f"/api/v1/problems/{problem.pk}/").content.decode()
    # Absent: kept. Empty: removed.
    assert _patch(client, problem, {"mlflow_experiment": "cancer"}).json()["mlflow"]["token_set"] is True
    assert _patch(client, problem, {"mlflow_token": ""}).json()["mlflow"]["token_set"] is False
    # Only the owner sees where the runs go.
    login(client, users["holder"])
    assert client.get(f"/api/v1/problems/{problem.pk}/").json()["mlflow"] is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://mlflow.example.org",
        "mlflow.example.org",
        "https://",
        "https://user:pw@mlflow.example.org",
        "javascript:x",
    ],
)
def test_a_bad_tracking_url_is_refused_clearly(
    client: Client, users: dict[str, Any], problem: Problem, url: str
) -> None:
    login(client, users["owner"])
    response = _patch(client, problem, {"mlflow_tracking_url": url})
    assert response.status_code == 400
    assert "MLflow tracking URL" in response.json()["mlflow_tracking_url"][0]
    assert Problem.objects.get(pk=problem.pk).mlflow_tracking_url == ""


def test_only_the_owner_links_a_problem(client: Client, users: dict[str, Any], problem: Problem) -> None:
    login(client, users["other_setter"])
    assert _patch(client, problem, {"mlflow_tracking_url": "https://mlflow.example.org"}).status_code in (403, 404)
    assert Problem.objects.get(pk=problem.pk).mlflow_tracking_url == ""


def test_the_edit_page_links_a_problem(client: Client, users: dict[str, Any], problem: Problem) -> None:
    login(client, users["owner"])
    url = f"/problems/{problem.pk}/edit/"
    bad = client.post(url, editor_data(title=problem.title, **{"p-app_source": "keep", "ml-tracking_url": "ftp://x"}))
    assert bad.status_code == 400
    assert "must be an http:// or https:// address" in bad.content.decode()
    data = editor_data(
        title=problem.title,
        **{"p-app_source": "keep", "ml-tracking_url": "http://127.0.0.1:5000", "ml-token": TOKEN},
    )
    assert client.post(url, data).status_code == 302
    stored = Problem.objects.get(pk=problem.pk)
    assert stored.mlflow_tracking_url == "http://127.0.0.1:5000" and open_token(stored.mlflow_token) == TOKEN
    page = client.get(url).content.decode()
    assert "A token is stored" in page and TOKEN not in page
    detail = client.get(f"/problems/{problem.pk}/").content.decode()
    assert "each run is logged to http://127.0.0.1:5000" in detail and "a token is set" in detail
    assert TOKEN not in detail
    # Saved again with the token box empty: the token stays; ticking "remove" removes it.
    client.post(url, {**data, "ml-token": ""})
    assert open_token(Problem.objects.get(pk=problem.pk).mlflow_token) == TOKEN
    client.post(url, {**data, "ml-token": "", "ml-remove_token": "on"})
    assert Problem.objects.get(pk=problem.pk).mlflow_token == ""


class Recorder:
    """A stand-in MLflow server that answers get-by-name and records the Authorization header."""

    def __init__(self) -> None:
        self.headers: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.headers.append(self.headers.get("Authorization", ""))
                body = json.dumps({"experiment": {"experiment_id": "7", "name": "x"}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_the_token_is_sent_as_a_bearer_token(recorder: Recorder) -> None:
    assert MlflowClient(recorder.url, TOKEN, local_network=True).experiment_id("x") == "7"
    assert MlflowClient(recorder.url, local_network=True).experiment_id("x") == "7"
    assert recorder.headers == [f"Bearer {TOKEN}", ""]


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["::1"],
        ["fd00::5"],
        ["100.64.0.9"],
        ["8.8.8.8", "192.168.1.4"],
    ],
)
def test_a_tracking_url_off_the_public_internet_is_refused_before_any_connection(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    """A setter's URL is dialled by the website's worker: loopback, private and link-local addresses (a cloud's
    metadata service) are refused unless the installation allows them, whatever name leads there."""
    import socket

    def resolve(host: str, port: int, *_: Any) -> list[Any]:
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[6 if ":" in a else 4], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    before = len(recorder.headers)
    with pytest.raises(MlflowError, match="off the public internet.*FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK=1"):
        MlflowClient(f"http://mlflow.example.org:{recorder.url.rsplit(':', 1)[1]}", TOKEN).experiment_id("x")
    assert len(recorder.headers) == before  # nothing reached the (loopback) server


def test_the_export_refuses_a_loopback_server_unless_allowed(
    problem: Problem, recorder: Recorder, settings: Any
) -> None:
    from webserver.problems.mlflow_export import seal_token

    problem.mlflow_tracking_url, problem.mlflow_token = recorder.url, seal_token(TOKEN)
    problem.save(update_fields=["mlflow_tracking_url", "mlflow_token"])
    run = Run.objects.create(problem=problem, number=1, fab_sha256=problem.fab_sha256, status="running")
    settings.FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK = False
    with pytest.raises(MlflowError, match="refused: 127.0.0.1 is an address off the public internet"):
        run_mlflow_export(run_id=run.pk)
    assert recorder.headers == []
    assert "FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK" in MlflowExport.objects.get(run=run).last_error


def test_an_unreachable_server_fails_the_export_visibly_not_the_run(
    client: Client, users: dict[str, Any], problem: Problem, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from webserver.monitoring import tasks

    settings.FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK = True  # a loopback port nobody listens on
    from webserver.monitoring.models import LogLine, RoundRecord

    queued: list[int] = []
    monkeypatch.setattr(tasks.mlflow_export, "delay", lambda run_id: queued.append(run_id))
    login(client, users["owner"])
    nobody = f"http://127.0.0.1:{free_port()}"
    assert _patch(client, problem, {"mlflow_tracking_url": nobody, "mlflow_token": TOKEN}).status_code == 200
    run = Run.objects.create(
        problem=problem,
        number=1,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(SERVICE_TOKEN.encode()).hexdigest(),
    )
    event = {"event_id": uuid.uuid4().hex, "ts": time.time(), "kind": "round_finished", "round": 1, "train_loss": 0.5}
    response = client.post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps([event]),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {SERVICE_TOKEN}",
    )
    assert response.status_code == 200  # the coordinator's report is taken whatever MLflow does
    with pytest.raises(MlflowError, match="cannot be reached"):
        run_mlflow_export(run_id=run.pk)
    assert RoundRecord.objects.filter(run=run, number=1, train_loss=0.5).exists()
    export = MlflowExport.objects.get(run=run)
    assert nobody in export.last_error and export.mlflow_run_id == "" and export.lease_until is None
    line = LogLine.objects.get(run=run, source="platform")
    assert line.level == "WARNING" and "cannot be reached" in line.message and TOKEN not in line.message
    dashboard = client.get(f"/api/v1/problems/{problem.pk}/dashboard/")
    assert dashboard.json()["run"]["mlflow"]["error"] == export.last_error
    page = client.get(f"/monitoring/problems/{problem.pk}/").content.decode()
    assert "The last export failed" in page and TOKEN not in page


def test_a_run_the_platform_ends_is_exported_too(
    problem: Problem,
    make_problem: Any,
    users: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """A run failed by the platform (a broken start, the reconciler) or stopped by its owner may never
    hear from its coordinator again: its MLflow run is closed from there, not left RUNNING."""
    from webserver.monitoring import tasks
    from webserver.problems import lifecycle

    class Spawner:
        def stop(self, problem_id: int, **_: Any) -> None:
            pass

    queued: list[int] = []
    monkeypatch.setattr(tasks.mlflow_export, "delay", lambda run_id: queued.append(run_id))
    problem.mlflow_tracking_url = "http://mlflow.example.org"
    problem.save(update_fields=["mlflow_tracking_url"])
    failed = Run.objects.create(problem=problem, number=1, fab_sha256=problem.fab_sha256, status="running")
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.run_fail(run_id=failed.pk, reason="the coordinator's image is missing", spawner=Spawner())
    stopped = Run.objects.create(problem=problem, number=2, fab_sha256=problem.fab_sha256, status="stopping")
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.run_teardown(problem_id=problem.pk, spawner=Spawner())  # type: ignore[arg-type]
    assert queued == [failed.pk, stopped.pk]
    assert Run.objects.get(pk=stopped.pk).status == "stopped"

    # A problem linked to no MLflow server enqueues nothing.
    other = make_problem(users["owner"], title="Not linked")
    unlinked = Run.objects.create(problem=other, number=1, fab_sha256=other.fab_sha256, status="running")
    with django_capture_on_commit_callbacks(execute=True):
        lifecycle.run_fail(run_id=unlinked.pk, reason="broken", spawner=Spawner())
    assert queued == [failed.pk, stopped.pk]
