"""A real Prometheus server scrapes a live federation and answers for its rounds.

A local federation (`python -m coordinator.local`, the echo app, two selectors, two
clients) runs with FEDOTA_METRICS_LISTEN on loopback; Debian's `prometheus` (installed by
scripts/system-deps.sh) scrapes the coordinator's and both selectors' /metrics every
second, and the test asks Prometheus's own HTTP API what an operator's dashboard would.

No Prometheus binary: the test fails under CI or FEDOTA_REQUIRE_DOCKER=1 (CI installs it),
and elsewhere is skipped with the reason. Never silently.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.e2e.conftest import ENV, REPO
from tests.ports import free_port
from tests.servers import serving

PROMETHEUS = Path("/usr/bin/prometheus")
ECHO = str(REPO / "tests" / "apps" / "echo")


def _unavailable(reason: str) -> NoReturn:
    message = f"NO PROMETHEUS: {reason}. Install Debian's package: bash scripts/system-deps.sh"
    if os.environ.get("FEDOTA_REQUIRE_DOCKER") == "1" or os.environ.get("CI"):
        pytest.fail(message + " (CI: this test must run)", pytrace=False)
    pytest.skip(message)


def _state(path: Path, proc: subprocess.Popen[str], timeout: float = 90.0) -> dict[str, Any]:
    """A service's state file once it names its metrics address."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            try:
                state: dict[str, Any] = json.loads(path.read_text())
            except json.JSONDecodeError:
                state = {}
            if state.get("metrics"):
                return state
        assert proc.poll() is None, f"the federation exited with {proc.returncode}: {proc.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"{path} did not name a metrics address within {timeout:.0f} s")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A running federation's metrics addresses: {"coordinator": ..., "selector-1": ..., "selector-2": ...}."""
    data = tmp_path / "clients"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.local", "--out", str(out), "--app", ECHO, "--data-dir", str(data)]
        + ["--selectors", "2", "--insecure", "--run-config", "model-size-mb=0.01 num-server-rounds=100000"],
        cwd=REPO,
        # Every service the launcher starts serves its metrics on a loopback port of its own.
        env={**ENV, "FEDOTA_METRICS_LISTEN": "127.0.0.1:0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        addresses = {"coordinator": str(_state(out / "coordinator" / "coordinator.json", proc)["metrics"])}
        for name in ("selector-1", "selector-2"):
            addresses[name] = str(_state(out / "selectors" / f"{name}.json", proc)["metrics"])
        yield addresses
    finally:
        # On SIGTERM the launcher stops every service it started. Not SIGINT: a process started
        # in the background by a non-interactive shell (as CI may start this suite) ignores it,
        # and the federations of two tests went on training through the rest of a CI run.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        # Whatever outlived the launcher: each service leads a process group of its own.
        pids = out / "pids.json"
        for pid in json.loads(pids.read_text()).values() if pids.exists() else ():
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextmanager
def running_prometheus(tmp_path: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[str]:
    """A Prometheus server with these scrape configs, scraping every second; its base URL."""
    if not PROMETHEUS.is_file() or not os.access(PROMETHEUS, os.X_OK):
        _unavailable(f"{PROMETHEUS} is not installed")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": scrape_configs,
    }
    # JSON is YAML: Prometheus reads it as its configuration file.
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    argv = [str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}"]
    argv += [f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"]
    url = f"http://127.0.0.1:{port}"
    with serving(argv, ready_url=f"{url}/-/ready", log=tmp_path / "prometheus.log", cwd=tmp_path):
        yield url


@pytest.fixture
def prometheus(tmp_path: Path, federation: dict[str, str]) -> Iterator[str]:
    """A Prometheus server scraping the federation every second; its base URL."""
    scrape = [
        {"job_name": "fedota-coordinator", "static_configs": [{"targets": [federation["coordinator"]]}]},
        {
            "job_name": "fedota-selector",
            "static_configs": [{"targets": [federation["selector-1"], federation["selector-2"]]}],
        },
    ]
    with running_prometheus(tmp_path, scrape) as url:
        yield url


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API: the result vector."""
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    vector: list[dict[str, Any]] = body["data"]["result"]
    return vector


def _eventually(url: str, promql: str, ok: Any, timeout: float = 90.0) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if ok(result):
            return result
        assert time.monotonic() < end, f"{promql}: {result} after {timeout:.0f} s"
        time.sleep(0.5)


@pytest.mark.timeout(300)
def test_prometheus_scrapes_the_rounds_of_a_live_federation(prometheus: str) -> None:
    rounds = _eventually(
        prometheus,
        "fedota_coordinator_rounds_completed_total",
        lambda r: len(r) == 1 and float(r[0]["value"][1]) >= 2,
    )
    assert rounds[0]["metric"]["job"] == "fedota-coordinator"
    print(f"Prometheus: fedota_coordinator_rounds_completed_total = {rounds[0]['value'][1]}")
    # Every target answers, and what they say adds up: two clients, spread over two selectors.
    up = _eventually(prometheus, "up == 1", lambda r: len(r) == 3)
    assert {s["metric"]["job"] for s in up} == {"fedota-coordinator", "fedota-selector"}
    clients = _eventually(
        prometheus, "sum(fedota_selector_clients_connected)", lambda r: bool(r) and float(r[0]["value"][1]) == 2
    )
    assert float(clients[0]["value"][1]) == 2
    assert float(query(prometheus, "fedota_coordinator_clients_connected")[0]["value"][1]) == 2
    # The histogram answers the dashboard's question (a finite median round time).
    median = _eventually(
        prometheus,
        "histogram_quantile(0.5, rate(fedota_coordinator_round_duration_seconds_bucket[10s]))",
        lambda r: bool(r) and r[0]["value"][1] not in ("NaN", "+Inf"),
    )
    assert 0 < float(median[0]["value"][1]) < 60
    moved = _eventually(prometheus, "sum(fedota_selector_received_bytes_total)", lambda r: bool(r))
    assert float(moved[0]["value"][1]) > 0


@pytest.mark.timeout(300)
def test_every_query_of_the_grafana_board_runs_on_prometheus(prometheus: str) -> None:
    board = json.loads((REPO / "deploy" / "grafana" / "fedota.json").read_text())
    website = {"HTTP latency p95 by route", "HTTP requests by status class", "Celery task outcomes per minute"}
    end = time.monotonic() + 90
    while True:
        answered: dict[str, bool] = {}
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                # Grafana's own variable, as it would fill it in for a 1 s scrape interval.
                expr = target["expr"].replace("$__rate_interval", "15s")
                answered[panel["title"]] = bool(query(prometheus, expr)) or answered.get(panel["title"], False)
        # The website is not scraped here: only its panels may stay empty.
        empty = {title for title, ok in answered.items() if not ok} - website
        if not empty:
            break
        assert time.monotonic() < end, f"panels without data after 90 s: {sorted(empty)}"
        time.sleep(1.0)
    assert len(answered) >= 14


DISCOVERY_TOKEN = "prometheus-discovery-token"


@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_prometheus_finds_a_published_problems_services_through_the_website(
    settings: Any, tmp_path: Path, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process backend serves each service's metrics on loopback; /metrics/targets lists them
    for Prometheus's HTTP service discovery, labelled with their problem; Prometheus scrapes them."""
    from tests.integration.conftest import make_user
    from tests.integration.test_celery_worker import _port_base_for, _problem
    from webserver.problems import lifecycle, tasks
    from webserver.problems.models import Run, RunStatus
    from webserver.spawner.process import ProcessSpawner

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FEDOTA_STATE_DIR = tmp_path / "problems"
    settings.FEDOTA_METRICS_TOKEN = DISCOVERY_TOKEN
    settings.FEDOTA_INTERNAL_URL = "http://127.0.0.1:9"
    owner = make_user("owner", "setter")
    problem = _problem(owner)
    settings.FEDOTA_SELECTOR_PORT_BASE = _port_base_for(problem.pk)
    spawner = ProcessSpawner(settings.FEDOTA_STATE_DIR, metrics=True)
    scrape = [
        {
            "job_name": "fedota-problems",
            "http_sd_configs": [
                {
                    "url": f"{live_server.url}/metrics/targets",
                    "refresh_interval": "1s",
                    # `type` spelled out: Debian's Prometheus 2.42 sent the bare token without it.
                    "authorization": {"type": "Bearer", "credentials": DISCOVERY_TOKEN},
                }
            ],
        }
    ]
    # The launch runs here, not in a worker: nothing is left in the broker for another test's worker.
    monkeypatch.setattr(tasks.publish, "delay_on_commit", lambda *args, **kwargs: None)
    try:
        run = lifecycle.run_start(problem=problem, user=owner)
        lifecycle.run_launch(run_id=run.pk, spawner=spawner)
        run = Run.objects.get(pk=run.pk)
        assert run.status == RunStatus.RUNNING, run.status_detail
        served = dict(run.services.values_list("role", "metrics").order_by("role", "index"))
        assert all(address.startswith("127.0.0.1:") for address in served.values()), served
        with running_prometheus(tmp_path, scrape) as url:
            up = _eventually(url, 'up{job="fedota-problems"} == 1', lambda r: len(r) == 3)
            labels = sorted((s["metric"]["fedota_role"], s["metric"]["fedota_index"]) for s in up)
            assert labels == [("coordinator", "0"), ("selector", "0"), ("selector", "1")]
            assert {s["metric"]["fedota_problem"] for s in up} == {str(problem.pk)}
            assert {s["metric"]["fedota_run"] for s in up} == {str(run.number)}
            # What the operator asks per problem: both selectors attached to its coordinator.
            attached = _eventually(
                url,
                f'fedota_coordinator_selectors_connected{{fedota_problem="{problem.pk}"}}',
                lambda r: bool(r) and float(r[0]["value"][1]) == 2,
            )
            assert attached[0]["metric"]["fedota_role"] == "coordinator"
    finally:
        spawner.stop(problem.pk)
