"""A run's export to a real MLflow tracking server (`mlflow server`, SQLite backend, artifacts in tmp).

The problem is linked through the REST API, the run's coordinator reports through the
internal API as a real one does, the export task runs (called as the worker calls it), and
the test asks the MLflow server — through MLflow's own client — what a researcher would see:
params, each round's metrics by step, the final model's bytes, the run's status. A small
recording proxy sits in front of the server to see what the website sends (the token, as
`Authorization: Bearer`) and to play an unreachable server.

mlflow is in the dev extra (scripts/setup.sh installs it); without it the test fails, saying so.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry
from django.core.files.base import ContentFile
from django.test import Client

from fedota_common.fab import load_app
from tests.integration.conftest import make_user
from tests.ports import free_port
from tests.servers import serving

pytestmark = [pytest.mark.web, pytest.mark.django_db]

REPO = Path(__file__).resolve().parents[2]
SERVICE_TOKEN = "the-run-service-token"
MLFLOW_TOKEN = "mlflow-secret-token-42"
# How long `mlflow server` may take to answer /health (about 25 s here with its default workers).
START_TIMEOUT = 120


def _mlflow_binary() -> str:
    binary = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if binary is None:
        pytest.fail("mlflow is not installed; it comes with the dev extra (pip install -e '.[dev]')", pytrace=False)
    return binary


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port: SQLite backend store, artifacts proxied into tmp."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {
        **os.environ,
        # No background job runner (huey consumers): the export needs tracking and artifacts only.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    argv = [_mlflow_binary(), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    argv += ["--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with serving(
        argv + ["--workers", "1"],
        ready_url=f"{url}/health",
        log=folder / "server.log",
        cwd=folder,
        env=env,
        timeout=START_TIMEOUT,
    ):
        yield url


@pytest.fixture(autouse=True)
def _local_mlflow(settings: Any) -> None:
    """This module's MLflow server listens on loopback, which the export refuses by default."""
    settings.FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK = True


class Proxy:
    """Forwards HTTP to `upstream`, recording each request's method, path and Authorization header.

    With `down` set it drops every connection unanswered, as an unreachable server would.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.seen: list[tuple[str, str, str]] = []
        self.down = False
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                if proxy.down:
                    self.close_connection = True
                    self.connection.close()
                    return
                proxy.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(mlflow_url: str) -> Iterator[Proxy]:
    p = Proxy(mlflow_url)
    yield p
    p.close()


@pytest.fixture
def owner(db: Any) -> Any:
    return make_user(f"owner-{uuid.uuid4().hex[:8]}", "setter")


@pytest.fixture
def owner_client(owner: Any) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def _problem(owner: Any) -> Any:
    from scripts.make_demo_data import breast_cancer_contract
    from webserver.problems.models import Problem, ProblemState

    fab = load_app(REPO / "apps" / "tabular").content
    problem = Problem(
        owner=owner,
        title=f"Breast cancer {uuid.uuid4().hex[:6]}",
        contract=breast_cancer_contract([f"f{i}" for i in range(30)]),
        app_template="tabular",
        fab_sha256=hashlib.sha256(fab).hexdigest(),
        fab_name="tabular.fab",
        run_config={"rounds": 3, "num_selectors": 1, "app_config": {"learning-rate": 0.1}},
        state=ProblemState.PUBLISHED,
    )
    problem.fab.save("tabular.fab", ContentFile(fab), save=False)
    problem.save()
    return problem


def _run(problem: Any) -> Any:
    from webserver.problems.models import Run

    return Run.objects.create(
        problem=problem,
        number=1,
        config=problem.run_config,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(SERVICE_TOKEN.encode()).hexdigest(),
    )


def _link(client: Client, problem: Any, url: str, **extra: str) -> dict[str, Any]:
    response = client.patch(
        f"/api/v1/problems/{problem.pk}/",
        data=json.dumps({"mlflow_tracking_url": url, "mlflow_token": MLFLOW_TOKEN, **extra}),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    return dict(response.json())


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "ts": time.time(), "kind": kind, **data}


def _round(number: int) -> dict[str, Any]:
    loss = 1.0 / number
    return _event(
        "round_finished",
        round=number,
        started=1_700_000_000.0 + 10 * number,
        finished=1_700_000_004.0 + 10 * number,
        seconds=4.0,
        participants=[{"node_id": 1, "site": "General Hospital"}],
        eval_participants=[{"node_id": 1, "site": "General Hospital"}],
        train_metrics={"train_loss": loss, "auc": 0.5 + number / 10},
        eval_metrics={"eval_loss": loss + 0.1, "eval_acc": 0.6 + number / 10},
        train_loss=loss,
        eval_loss=loss + 0.1,
        eval_acc=0.6 + number / 10,
    )


class Coordinator:
    """Reports a run the way coordinator/report.py does, and keeps the export tasks the website enqueued."""

    def __init__(self, run: Any, monkeypatch: pytest.MonkeyPatch, capture: Any) -> None:
        from webserver.monitoring import tasks

        self.run, self.capture, self.client = run, capture, Client()
        self.queued: list[int] = []
        monkeypatch.setattr(tasks.mlflow_export, "delay", lambda run_id: self.queued.append(run_id))

    def events(self, *events: dict[str, Any]) -> None:
        with self.capture(execute=True):
            response = self.client.post(
                f"/internal/v1/runs/{self.run.pk}/events",
                data=json.dumps(list(events)),
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {SERVICE_TOKEN}",
            )
        assert response.status_code == 200, response.content

    def model(self, kind: str, data: bytes) -> None:
        with self.capture(execute=True):
            response = self.client.put(
                f"/internal/v1/runs/{self.run.pk}/checkpoints/0/{kind}",
                data=data,
                content_type="application/octet-stream",
                HTTP_AUTHORIZATION=f"Bearer {SERVICE_TOKEN}",
            )
        assert response.status_code == 201, response.content

    def export_queued(self) -> list[str]:
        """Run every queued export as the worker would (each copy, in order)."""
        from webserver.monitoring import tasks

        done = []
        while self.queued:
            done.append(tasks.mlflow_export(self.queued.pop(0)))
        return done


@pytest.fixture
def coordinator(owner: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any) -> Coordinator:
    return Coordinator(_run(_problem(owner)), monkeypatch, django_capture_on_commit_callbacks)


def _mlflow(url: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url)


def _runs_of(mlflow: Any, experiment: str) -> list[Any]:
    found = mlflow.get_experiment_by_name(experiment)
    return [] if found is None else list(mlflow.search_runs([found.experiment_id]))


def test_a_run_is_logged_to_mlflow(
    coordinator: Coordinator, owner_client: Client, proxy: Proxy, mlflow_url: str, tmp_path: Path
) -> None:
    from webserver.monitoring.models import Checkpoint, LogLine
    from webserver.problems.models import MlflowExport

    run = coordinator.run
    shown = _link(owner_client, run.problem, proxy.url, mlflow_experiment="fedota-test-export")
    assert shown["mlflow"] == {"tracking_url": proxy.url, "experiment": "fedota-test-export", "token_set": True}
    assert MLFLOW_TOKEN not in json.dumps(shown)
    coordinator.export_queued()  # linking exports the latest run at once

    coordinator.events(_event("run_started", total_rounds=3), _round(1), _round(2))
    assert coordinator.queued == [run.pk]  # one export for the batch
    coordinator.export_queued()
    coordinator.events(_round(3))
    coordinator.export_queued()
    model = os.urandom(3000) + b"\x00 final weights"
    coordinator.model("npz", model)
    coordinator.model("pt", b"torch state dict")
    coordinator.events(_event("run_finished", ok=True, detail="3 rounds"))
    coordinator.export_queued()

    export = MlflowExport.objects.get(run=run)
    assert export.last_error == "" and export.status_logged == "FINISHED"
    mlflow = _mlflow(mlflow_url)
    (logged,) = _runs_of(mlflow, "fedota-test-export")
    assert logged.info.run_id == export.mlflow_run_id
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["rounds"] == "3" and params["num_selectors"] == "1"
    assert params["app_config.learning-rate"] == "0.1"
    assert params["fab_sha256"] == run.fab_sha256
    assert logged.data.tags["fedota.problem"] == run.problem.title
    assert logged.data.tags["fedota.run_number"] == "1"
    for key, expected in {
        "train_loss": [1.0, 0.5, 1 / 3],
        "eval_acc": [0.7, 0.8, 0.9],
        "train.auc": [0.6, 0.7, 0.8],
    }.items():
        history = sorted(mlflow.get_metric_history(logged.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], key
        assert [m.value for m in history] == pytest.approx(expected), key
    # The model's bytes as the website stores them.
    stored = Checkpoint.objects.get(run=run, round=0)
    with stored.npz.open("rb") as handle:
        assert handle.read() == model
    downloaded = Path(mlflow.download_artifacts(logged.info.run_id, "model/final_model.npz", str(tmp_path)))
    assert downloaded.read_bytes() == model
    assert (Path(mlflow.download_artifacts(logged.info.run_id, "model", str(tmp_path))) / "final_model.pt").exists()

    # The token went as a bearer token on every call, and is nowhere on the site's pages or events.
    assert proxy.seen and all(auth == f"Bearer {MLFLOW_TOKEN}" for _, _, auth in proxy.seen)
    assert not LogLine.objects.filter(run=run, message__contains=MLFLOW_TOKEN).exists()
    page = owner_client.get(f"/monitoring/problems/{run.problem.pk}/").content.decode()
    assert export.mlflow_run_id in page and MLFLOW_TOKEN not in page
    edit = owner_client.get(f"/problems/{run.problem.pk}/edit/").content.decode()
    assert "A token is stored" in edit and MLFLOW_TOKEN not in edit


def test_redelivered_and_concurrent_exports_do_not_duplicate(
    coordinator: Coordinator, owner_client: Client, proxy: Proxy, mlflow_url: str
) -> None:
    from webserver.monitoring import tasks
    from webserver.problems.models import MlflowExport

    run = coordinator.run
    _link(owner_client, run.problem, proxy.url, mlflow_experiment="fedota-test-redelivery")
    coordinator.events(_round(1), _round(2))
    coordinator.export_queued()
    # The same task delivered again (late acks after a lost worker), twice.
    assert tasks.mlflow_export(run.pk) == "nothing new"
    assert tasks.mlflow_export(run.pk) == "nothing new"
    # A worker that died after MLflow made the run, before its id was saved: the run is found again by its tag.
    MlflowExport.objects.filter(run=run).update(mlflow_run_id="", params_logged=False, rounds_logged=[])
    tasks.mlflow_export(run.pk)
    coordinator.events(_round(3), _event("run_finished", ok=False, detail="the coordinator died"))
    coordinator.export_queued()

    mlflow = _mlflow(mlflow_url)
    (logged,) = _runs_of(mlflow, "fedota-test-redelivery")
    assert logged.info.status == "FAILED"
    history = mlflow.get_metric_history(logged.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]  # each round once, even the ones logged twice


def test_an_unreachable_server_is_said_and_nothing_is_lost(
    coordinator: Coordinator, owner_client: Client, proxy: Proxy, mlflow_url: str
) -> None:
    from webserver.monitoring.models import LogLine, RoundRecord
    from webserver.monitoring.queries import dashboard
    from webserver.problems.models import MlflowExport

    run = coordinator.run
    proxy.down = True
    _link(owner_client, run.problem, proxy.url, mlflow_experiment="fedota-test-unreachable")
    coordinator.queued.clear()
    coordinator.events(_round(1), _round(2))
    with pytest.raises(Retry):
        coordinator.export_queued()  # the task asks the worker to try again later
    assert RoundRecord.objects.filter(run=run).count() == 2  # the federation's rounds are all there
    export = MlflowExport.objects.get(run=run)
    assert "cannot be reached" in export.last_error
    warning = LogLine.objects.get(run=run, source="platform", message__startswith="MLflow export")
    assert "retried" in warning.message and MLFLOW_TOKEN not in warning.message
    shown = dashboard(problem=run.problem, run=run)["run"]["mlflow"]
    assert shown["error"] == export.last_error and shown["url"] == ""
    page = owner_client.get(f"/monitoring/problems/{run.problem.pk}/").content.decode()
    assert "The last export failed" in page

    # A second failure with the same reason is not said again; the server coming back is.
    coordinator.events(_round(3))
    with pytest.raises(Retry):
        coordinator.export_queued()
    assert LogLine.objects.filter(run=run, message__startswith="MLflow export to").count() == 1
    proxy.down = False
    coordinator.events(_event("run_finished", ok=True))
    coordinator.export_queued()
    assert MlflowExport.objects.get(run=run).last_error == ""
    assert LogLine.objects.filter(run=run, message__contains="works again").exists()
    mlflow = _mlflow(mlflow_url)
    (logged,) = _runs_of(mlflow, "fedota-test-unreachable")
    assert sorted(m.step for m in mlflow.get_metric_history(logged.info.run_id, "eval_loss")) == [1, 2, 3]
    assert logged.info.status == "FINISHED"


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_exports_a_run(
    settings: Any, tmp_path: Path, mlflow_url: str, celery_worker_process: Any
) -> None:
    """The website enqueues on commit, a `celery -A webserver worker` finds the task and logs the run."""
    from webserver.problems.mlflow_export import MlflowSettings, problem_mlflow_update
    from webserver.problems.models import MlflowExport

    settings.MEDIA_ROOT = tmp_path / "media"
    owner = make_user(f"owner-{uuid.uuid4().hex[:8]}", "setter")
    run = _run(_problem(owner))
    experiment = f"fedota-test-worker-{uuid.uuid4().hex[:6]}"
    problem_mlflow_update(
        problem=run.problem,
        user=owner,
        changes=MlflowSettings(tracking_url=mlflow_url, token=MLFLOW_TOKEN, experiment=experiment),
    )
    # The site's processes share one SECRET_KEY (the token is sealed with it); here the test's own.
    celery_worker_process(
        FEDOTA_MEDIA_ROOT=str(settings.MEDIA_ROOT),
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK="1",  # the test's MLflow server is on loopback
    )
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {SERVICE_TOKEN}"}
    events = [_round(1), _round(2), _event("run_finished", ok=True)]
    model = b"final model bytes " + os.urandom(64)
    put = client.put(f"/internal/v1/runs/{run.pk}/checkpoints/0/npz", data=model, content_type="x", **auth)
    assert put.status_code == 201
    posted = client.post(
        f"/internal/v1/runs/{run.pk}/events", data=json.dumps(events), content_type="application/json", **auth
    )
    assert posted.status_code == 200
    deadline = time.monotonic() + 90
    while not MlflowExport.objects.filter(run=run, status_logged="FINISHED").exists():
        last = MlflowExport.objects.filter(run=run).values_list("last_error", flat=True).first()
        assert time.monotonic() < deadline, f"the worker did not export the run within 90 s; last error: {last}"
        time.sleep(0.5)
    export = MlflowExport.objects.get(run=run)
    assert export.last_error == "" and sorted(export.rounds_logged) == ["1.1", "1.2"]
    mlflow = _mlflow(mlflow_url)
    (logged,) = _runs_of(mlflow, experiment)
    assert logged.info.status == "FINISHED"
    assert sorted(m.step for m in mlflow.get_metric_history(logged.info.run_id, "eval_acc")) == [1, 2]
    assert (
        Path(mlflow.download_artifacts(logged.info.run_id, "model/final_model.npz", str(tmp_path))).read_bytes()
        == model
    )
