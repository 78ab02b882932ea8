"""The dashboard of a long run: a poll costs the same at round 2,000 as at round 10."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from webserver.monitoring.models import Checkpoint, LogLine, RoundRecord
from webserver.participation.models import Contribution, Participant
from webserver.problems.models import Run, Service

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _long_run(problem: Any, users: dict[str, Any], *, number: int, rounds: int) -> Run:
    """A running run with `rounds` rounds, a model per round, three sites contributing to each, log lines."""
    run = Run.objects.create(
        problem=problem,
        number=number,
        fab_sha256="x",
        status="running",
        current_round=rounds,
        total_rounds=rounds,
        phase="training",
    )
    Service.objects.create(run=run, role="coordinator", index=0, health="healthy", address="127.0.0.1:9091")
    RoundRecord.objects.bulk_create(
        RoundRecord(
            run=run,
            number=i,
            phase="done",
            clients=2,
            train_loss=1 / i,
            eval_loss=1 / i,
            eval_acc=1 - 1 / (i + 1),
            seconds=2.5,
            finished_at=T0 + timedelta(seconds=i),
            metrics={"train": {"train_loss": 1 / i}, "evaluate": {"eval_acc": 1 - 1 / (i + 1)}, "failures": 0},
        )
        for i in range(1, rounds + 1)
    )
    Checkpoint.objects.bulk_create(
        Checkpoint(run=run, round=i, npz=f"checkpoints/r{i}.npz") for i in range(1, rounds + 1)
    )
    hospitals = [
        Participant.objects.get_or_create(
            problem=problem,
            user=users[who],
            defaults={"site_name": f"Hospital {who}", "contact_email": "p@x.org", "status": "approved"},
        )[0]
        for who in ("participant", "holder")
    ]
    Contribution.objects.bulk_create(
        [
            Contribution(run=run, participant=p, site_name=p.site_name, round=i, kind="train")
            for i in range(1, rounds + 1)
            for p in hospitals
        ]
        + [Contribution(run=run, site_name="site 77", round=i, kind="evaluate") for i in range(1, rounds + 1)]
    )
    LogLine.objects.bulk_create(
        LogLine(run=run, event_id=f"e{i}", ts=T0 + timedelta(seconds=i), message=f"round {i}")
        # At least the 50 lines the dashboard shows, so a short run shows as many as a long one.
        for i in range(1, max(rounds, 60) + 1)
    )
    return run


def _poll(client: Client, url: str) -> tuple[int, int, dict[str, Any]]:
    """(SQL queries, response bytes, body) of one dashboard request."""
    with CaptureQueriesContext(connection) as captured:
        resp = client.get(url)
    assert resp.status_code == 200
    return len(captured), len(resp.content), resp.json()


def test_a_poll_of_a_long_run_costs_what_a_short_one_does(
    client: Client, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    short_problem, long_problem = (
        make_problem(users["owner"], title="Short"),
        make_problem(users["owner"], title="Long"),
    )
    _long_run(short_problem, users, number=1, rounds=10)
    long_run = _long_run(long_problem, users, number=1, rounds=2000)
    assert Contribution.objects.filter(run=long_run).count() == 6000
    client.force_login(users["owner"])

    short_count, short_bytes, _ = _poll(client, f"/api/v1/problems/{short_problem.pk}/dashboard/?since=8")
    long_count, long_bytes, data = _poll(client, f"/api/v1/problems/{long_problem.pk}/dashboard/?since=1998")

    assert long_count == short_count
    # The same size but for longer numbers in the text (round 2000 against round 10).
    assert long_bytes < short_bytes * 1.1
    assert [r["round"] for r in data["rounds"]] == [1999, 2000]
    assert data["rounds"][-1]["downloads"]["npz"] == f"/monitoring/runs/{long_run.pk}/checkpoints/2000.npz"
    sites = {p["site"]: p for p in data["participants"]}
    assert (sites["Hospital holder"]["last_round"], sites["Hospital holder"]["rounds"]) == (2000, 2000)
    assert sites["site 77"]["last_kind"] == "evaluate"
    assert len(data["logs"]) == 50 and data["logs"][-1]["message"] == "round 2000"

    # Without `since`, the first load still gets every round.
    _, _, full = _poll(client, f"/api/v1/problems/{long_problem.pk}/dashboard/")
    assert [r["round"] for r in full["rounds"]] == list(range(1, 2001))


def test_the_page_of_a_long_run_is_a_shell(
    client: Client, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    run = _long_run(problem, users, number=1, rounds=2000)
    client.force_login(users["owner"])

    html = client.get(f"/monitoring/problems/{problem.pk}/").content.decode()

    assert html.count("<tr") < 20
    assert "round 2000 of 2000" in html and "Hospital holder" in html
    csv = client.get(f"/monitoring/runs/{run.pk}/metrics.csv").content.decode()
    assert len(csv.strip().splitlines()) == 2001  # the header and every round


def test_download_links_are_what_reverse_gives_under_any_script_prefix(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    from django.urls import reverse, set_script_prefix

    from webserver.monitoring import queries

    run = _long_run(make_problem(users["owner"]), users, number=1, rounds=3)
    Checkpoint.objects.create(run=run, round=2, attempt=2, npz="checkpoints/r2b.npz", pt="checkpoints/r2b.pt")
    try:
        for prefix in ("/", "/fedota/"):
            set_script_prefix(prefix)
            links = queries.run_checkpoints(run=run)
            for round_ in (1, 3):
                kwargs = {"run_id": run.pk, "round": round_, "kind": "npz"}
                url = reverse("checkpoint-download", kwargs=kwargs)
                manifest = reverse("checkpoint-manifest", kwargs=kwargs)
                assert links[(1, round_)] == {"npz": url, "pt": None, "npz_manifest": manifest, "pt_manifest": None}
            # A round two attempts stored is linked per attempt.
            pt = reverse("checkpoint-download", kwargs={"run_id": run.pk, "round": 2, "kind": "pt"})
            assert links[(2, 2)]["pt"] == f"{pt}?attempt=2" and pt.startswith(prefix)
    finally:
        set_script_prefix("/")
