"""One trace from publishing a problem to its first round, across the website and real processes.

The website runs in this process with the SDK's in-memory exporter; the run's coordinator
and selector are real processes started by the process backend, which write their spans
as JSON lines to one file (FEDOTA_TRACE_FILE, handed to them by the website). A client
joins with its bundle and trains one round over TLS. The parent links are checked across
every hop: publish → run start → (Celery task) launch → spawn → coordinator run → round
→ each selector's part of the round.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from fedota_common import tracing
from tests.e2e.test_credentials import _client, _join, _stop, _user, _wait

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def web_spans() -> Iterator[InMemorySpanExporter]:
    """The website's spans, kept in memory (this process is the website)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def _ids(span: ReadableSpan) -> tuple[str, str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    parent = format_span_id(span.parent.span_id) if span.parent is not None else ""
    return format_trace_id(ctx.trace_id), format_span_id(ctx.span_id), parent


def _file_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.django_db(transaction=True)
def test_one_trace_from_publish_to_the_first_round(
    process_site: str,
    settings: Any,
    web_spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    demo: Path,
) -> None:
    from webserver.problems import tasks
    from webserver.problems.models import Run
    from webserver.problems.services import problem_create, problem_publish

    trace_file = tmp_path / "spans.jsonl"
    settings.FEDOTA_TRACE_FILE = str(trace_file)
    # What the broker would carry: the task's arguments, as JSON.
    queued: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(tasks.publish, "delay", lambda *args, **kwargs: queued.append((args, kwargs)))

    owner, holder = _user("setter", "setter"), _user("ada", "holder")
    problem = problem_create(
        owner=owner,
        title="Traced",
        contract=json.loads((demo / "breast_cancer" / "contract.json").read_text()),
        app_template="tabular",
        run_config={"rounds": 1, "min_clients": 1, "clients_per_round": 0, "round_timeout": 60, "num_selectors": 1},
    )
    run = problem_publish(problem=problem, user=owner)
    assert len(queued) == 1
    args, kwargs = json.loads(json.dumps(queued[0]))
    assert set(kwargs) == {"trace"} and kwargs["trace"]["traceparent"]
    # The worker's side: the task as Celery runs it, with what came over the broker.
    tasks.publish.apply(args=args, kwargs=kwargs)
    run.refresh_from_db()
    assert run.status == "running", run.status_detail
    problem.refresh_from_db()

    _, bundle = _join(problem, holder, tmp_path)
    log = tmp_path / "client.log"
    client = _client(bundle, demo / "breast_cancer" / "clients" / "hospital_0", log)
    try:
        # The run span ends when the coordinator is done (one round), after the round's.
        _wait(
            lambda: any(s["name"] == "coordinator.run" for s in _file_spans(trace_file)),
            180,
            f"the coordinator to finish its run\n{log.read_text()[-2000:] if log.exists() else ''}",
        )
    finally:
        _stop(client)
    assert Run.objects.get(pk=run.pk).rounds.filter(number=1).exists()

    # The website's part, in this process: publish → run start → launch → spawn.
    web = {s.name: s for s in web_spans.get_finished_spans()}
    assert {"problem.publish", "run.start", "run.launch", "spawner.start"} <= set(web), sorted(web)
    trace_id, publish_id, publish_parent = _ids(web["problem.publish"])
    assert publish_parent == "", "publishing starts the trace"
    _, start_id, start_parent = _ids(web["run.start"])
    _, launch_id, launch_parent = _ids(web["run.launch"])
    _, spawn_id, spawn_parent = _ids(web["spawner.start"])
    assert (start_parent, launch_parent, spawn_parent) == (publish_id, start_id, launch_id)
    assert web["run.launch"].parent is not None and web["run.launch"].parent.is_remote, "came over the task's args"
    assert {_ids(s)[0] for s in web.values()} == {trace_id}

    # The services' part, from their processes: coordinator run → round 1 → selector rounds.
    spans = _file_spans(trace_file)
    assert {s["trace_id"] for s in spans} == {trace_id}, "every service span is in the publish's trace"
    (coordinator_run,) = [s for s in spans if s["name"] == "coordinator.run"]
    assert coordinator_run["service"] == "fedota-coordinator"
    assert coordinator_run["parent_id"] == spawn_id and coordinator_run["remote_parent"]
    assert coordinator_run["attributes"]["fedota.run_id"] == run.pk
    rounds = [s for s in spans if s["name"] == "coordinator.round"]
    (first,) = [s for s in rounds if s["attributes"]["fedota.round"] == 1]
    assert first["parent_id"] == coordinator_run["span_id"]
    assert first["attributes"]["fedota.results"] >= 1
    selector_rounds = [s for s in spans if s["name"] == "selector.round"]
    assert selector_rounds, "the selector traced its part of the round"
    for part in selector_rounds:
        assert part["service"] == "fedota-selector"
        assert part["parent_id"] == first["span_id"] and part["remote_parent"], part
    # Round 1 sent training and evaluation to the selector: its part of each is a span.
    assert {s["attributes"]["fedota.type"] for s in selector_rounds} == {"train", "evaluate"}
    assert all(first["start"] <= s["start"] and s["end"] <= coordinator_run["end"] for s in selector_rounds)
