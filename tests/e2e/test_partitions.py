"""Partition ids like Flower's deployment runtime, end to end (issue 14, parts 6 and 8).

The real website (process spawner: real coordinator and selector processes, TLS), an
uploaded test app whose ClientApp reports the `context.node_config` it was given, and two
real `fedota-client` processes started with nothing but their join bundles. The setter
fixes num-partitions at 3 and moves the second site to partition 2; each ClientApp must
see exactly what its bundle carries, as a SuperNode started with
`--node-config "partition-id=2 num-partitions=3"` would. The contract is `none`, so the
clients start with a data folder that does not even exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_credentials import REPO, _client, _stop, _user, _wait

pytestmark = [pytest.mark.e2e]


@pytest.mark.django_db(transaction=True)
def test_each_client_app_gets_its_partition_from_the_bundle(process_site: str, tmp_path: Path) -> None:
    from fedota_common.fab import load_app
    from webserver.participation import services
    from webserver.problems.lifecycle import run_launch, run_start
    from webserver.problems.models import Problem, ProblemState, Run
    from webserver.problems.services import problem_create

    reports = tmp_path / "reports"
    reports.mkdir()
    app = load_app(REPO / "tests" / "apps" / "node_config")
    owner = _user("setter", "setter")
    problem = problem_create(
        owner=owner,
        title="Partitions",
        contract={"kind": "none"},
        fab_bytes=app.content,
        fab_name="node_config.fab",
        run_config={
            "rounds": 1,
            "min_clients": 2,
            "round_timeout": 120,
            "num_selectors": 1,
            "app_config": {"report-dir": str(reports)},
        },
    )
    Problem.objects.filter(pk=problem.pk).update(state=ProblemState.PUBLISHED)
    problem.refresh_from_db()
    sites: list[Any] = []
    for name in ("ada", "bea"):
        user = _user(name, "holder")
        asked = services.participant_request(
            problem=problem, user=user, site_name=name, contact_email=f"{name}@example.org"
        )
        sites.append(services.participant_approve(participant=asked, by=owner))
    assert [s.partition_id for s in sites] == [0, 1]
    services.problem_set_num_partitions(problem=problem, by=owner, num_partitions=3)
    services.participant_set_partition(participant=sites[1], by=owner, partition_id=2)

    run = run_start(problem=problem, user=owner)
    run_launch(run_id=run.pk)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "running", run.status_detail

    bundles = {}
    for site in sites:
        doc = services.participant_issue_bundle(participant=site, by=site.user)
        bundles[site.site_name] = tmp_path / f"{site.site_name}.json"
        bundles[site.site_name].write_text(json.dumps(doc))
    assert json.loads(bundles["bea"].read_text())["node_config"] == {"partition-id": 2, "num-partitions": 3}

    logs = {name: tmp_path / f"{name}.log" for name in bundles}
    procs = [_client(bundles[name], tmp_path / "no-data-here", logs[name]) for name in bundles]
    try:
        expected = {"partition-0.json", "partition-2.json"}
        _wait(lambda: {p.name for p in reports.iterdir()} >= expected, 180, "both ClientApps to report")
        seen = {p.name: json.loads(p.read_text()) for p in reports.iterdir()}
        assert {k: {i: v for i, v in c.items() if i != "data-path"} for k, c in seen.items()} == {
            "partition-0.json": {"partition-id": 0, "num-partitions": 3},
            "partition-2.json": {"partition-id": 2, "num-partitions": 3},
        }
        for name in bundles:
            text = logs[name].read_text()
            assert "loads its own data" in text and "nothing in" in text, text[-2000:]
    except Exception:
        for name, path in logs.items():
            if path.exists():
                print(f"--- {name}\n{path.read_text()[-2500:]}")
        raise
    finally:
        for proc in procs:
            _stop(proc)
