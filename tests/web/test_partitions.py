"""Partition ids like Flower's deployment runtime: each approved site's `partition-id` and every site's
`num-partitions` reach the ClientApp's context.node_config through the join bundle (issue 14, part 6)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.web.test_participation import panel_html
from webserver.errors import ApplicationError, Conflict
from webserver.participation import queries, services
from webserver.participation.models import Participant, ParticipantStatus
from webserver.problems.models import JoinPolicy

pytestmark = [pytest.mark.web, pytest.mark.django_db]


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _holder(name: str) -> Any:
    from tests.web.conftest import _user

    return _user(name, "holder", organisation=f"{name} hospital")


def _ask(problem: Any, user: Any) -> Participant:
    return services.participant_request(
        problem=problem, user=user, site_name=f"{user.username} site", contact_email=f"{user.username}@example.org"
    )


def _approve(problem: Any, owner: Any, user: Any) -> Participant:
    return services.participant_approve(participant=_ask(problem, user), by=owner)


def _bundle(participant: Participant) -> dict[str, Any]:
    response = _client(participant.user).post(reverse("participant-bundle", args=[participant.pk]))
    assert response.status_code == 200, response.content
    return dict(json.loads(response.content))


def test_sites_get_partition_ids_in_order_of_approval_and_bundles_carry_them(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    sites = [_approve(problem, users["owner"], _holder(f"h{i}")) for i in range(3)]
    assert [s.partition_id for s in sites] == [0, 1, 2]
    bundles = [_bundle(s) for s in sites]
    assert [b["node_config"] for b in bundles] == [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    for site in sites:
        site.refresh_from_db()
        assert not queries.bundle_partition_outdated(site)
    panel = re.sub(r"<[^>]+>", "", panel_html(sites[1].user, problem))
    assert "partition-id 1 of num-partitions 3" in panel and "context.node_config" in panel


def test_a_change_needs_a_new_bundle_and_the_page_says_so(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    first = _approve(problem, users["owner"], _holder("first"))
    assert _bundle(first)["node_config"] == {"partition-id": 0, "num-partitions": 1}
    second = _approve(problem, users["owner"], _holder("second"))
    first.refresh_from_db()
    # A second approved site makes num-partitions 2: the first site's bundle still says 1.
    assert queries.bundle_partition_outdated(first)
    assert "changed your partition since your last join bundle" in panel_html(first.user, problem)
    owner_panel = panel_html(users["owner"], problem)
    assert "bundle outdated: issued for 0 of 1" in owner_panel
    assert "A change reaches a site only with a new join bundle" in owner_panel
    assert _bundle(first)["node_config"] == {"partition-id": 0, "num-partitions": 2}
    first.refresh_from_db()
    assert not queries.bundle_partition_outdated(first)

    # The setter swaps the two sites' ids over the page.
    response = _client(users["owner"]).post(reverse("participant-partition", args=[second.pk]), {"partition_id": 0})
    assert response.status_code == 302
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.partition_id, second.partition_id) == (1, 0)
    assert queries.bundle_partition_outdated(first)
    assert "bundle outdated: issued for 0 of 2" in panel_html(users["owner"], problem)


def test_partition_ids_stay_unique_and_below_num_partitions(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    a = _approve(problem, users["owner"], _holder("a"))
    _approve(problem, users["owner"], _holder("b"))
    with pytest.raises(ApplicationError, match=r"below num-partitions \(2: one per approved site\); got 2"):
        services.participant_set_partition(participant=a, by=users["owner"], partition_id=2)
    with pytest.raises(ApplicationError, match="whole number from 0"):
        services.participant_set_partition(participant=a, by=users["owner"], partition_id=-1)
    with pytest.raises(Exception, match="setter"):
        services.participant_set_partition(participant=a, by=users["other_setter"], partition_id=1)
    refused = _client(users["owner"]).post(reverse("participant-partition", args=[a.pk]), {"partition_id": "7"})
    assert refused.status_code == 400 and "below num-partitions" in refused.content.decode()

    # The setter may fix num-partitions above the number of sites, never below an id in use.
    services.problem_set_num_partitions(problem=problem, by=users["owner"], num_partitions=5)
    assert services.participant_set_partition(participant=a, by=users["owner"], partition_id=4).partition_id == 4
    with pytest.raises(ApplicationError, match="a site has partition-id 4|partition-id 4, so num-partitions"):
        services.problem_set_num_partitions(problem=problem, by=users["owner"], num_partitions=3)
    problem.refresh_from_db()
    assert queries.problem_num_partitions(problem) == 5


def test_revoking_frees_the_id_without_moving_the_others(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    sites = [_approve(problem, users["owner"], _holder(f"r{i}")) for i in range(3)]
    services.participant_revoke(participant=sites[1], by=users["owner"])
    sites[1].refresh_from_db()
    assert sites[1].partition_id is None
    # The others keep 0 and 2, so num-partitions stays 3 (partition 1 is simply not served).
    assert queries.problem_num_partitions(problem) == 3
    late = _approve(problem, users["owner"], _holder("late"))
    assert late.partition_id == 1


def test_when_the_setters_partitions_are_full_approval_waits(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"], join_policy=JoinPolicy.OPEN)
    services.problem_set_num_partitions(problem=problem, by=users["owner"], num_partitions=1)
    assert _ask(problem, _holder("one")).status == ParticipantStatus.APPROVED
    waiting = _ask(problem, _holder("two"))
    assert waiting.status == ParticipantStatus.PENDING and waiting.partition_id is None
    with pytest.raises(Conflict, match="all 1 partitions are taken"):
        services.participant_approve(participant=waiting, by=users["owner"])
    services.problem_set_num_partitions(problem=problem, by=users["owner"], num_partitions=None)
    assert services.participant_approve(participant=waiting, by=users["owner"]).partition_id == 1


def test_the_api_reads_and_sets_partitions(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    problem = make_problem(users["owner"])
    a = _approve(problem, users["owner"], _holder("api_a"))
    _approve(problem, users["owner"], _holder("api_b"))
    owner = _client(users["owner"])
    listed = owner.get(f"/api/v1/problems/{problem.pk}/participants/").json()["results"]
    assert [(p["partition_id"], p["bundle_partition_outdated"]) for p in listed] == [(0, False), (1, False)]
    answer = owner.put(
        f"/api/v1/problems/{problem.pk}/partitions/", {"num_partitions": 4}, content_type="application/json"
    )
    assert answer.status_code == 200 and answer.json() == {"num_partitions": 4, "effective": 4}
    moved = owner.post(f"/api/v1/participants/{a.pk}/partition/", {"partition_id": 3}, content_type="application/json")
    assert moved.status_code == 200 and moved.json()["partition_id"] == 3
    too_big = owner.post(
        f"/api/v1/participants/{a.pk}/partition/", {"partition_id": 4}, content_type="application/json"
    )
    assert too_big.status_code == 400 and "below num-partitions (4" in json.dumps(too_big.json())
    holder = _client(a.user)
    assert holder.post(f"/api/v1/participants/{a.pk}/partition/", {"partition_id": 0}).status_code == 403
    bundle = holder.post(f"/api/v1/participants/{a.pk}/bundle/").json()
    assert bundle["node_config"] == {"partition-id": 3, "num-partitions": 4}


@pytest.mark.django_db(transaction=True)
def test_the_migration_numbers_approved_sites_in_order_of_approval() -> None:
    from datetime import UTC, datetime

    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("participation", "0002_bundle_issued_at_decision_note"), ("problems", "0003_seal_ca_keys")]
    after = [("participation", "0003_partitions"), ("problems", "0004_partitions")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    User = old.get_model("auth", "User")
    Problem = old.get_model("problems", "Problem")
    Participant = old.get_model("participation", "Participant")
    owner = User.objects.create(username="m-owner")
    problem = Problem.objects.create(owner=owner, title="p", contract={"kind": "none"}, fab="fabs/x.fab")
    for name, status, day in (("late", "approved", 3), ("early", "approved", 1), ("no", "pending", 2)):
        user = User.objects.create(username=f"m-{name}")
        Participant.objects.create(
            problem=problem,
            user=user,
            site_name=name,
            contact_email="x@example.org",
            status=status,
            decided_at=datetime(2026, 1, day, tzinfo=UTC),
        )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    new = executor.loader.project_state(after).apps
    rows = new.get_model("participation", "Participant").objects.order_by("site_name")
    assert {p.site_name: p.partition_id for p in rows} == {"early": 0, "late": 1, "no": None}
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
