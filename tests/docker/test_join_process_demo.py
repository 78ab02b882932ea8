"""The process demo's join line: selectors as host processes, the client in a container.

scripts/start.sh runs the problem's coordinator and selectors as processes of this
machine (the `process` backend) and shows data holders the same `docker run` line as
every deployment. Here a platform starts that way with nothing set (no
FEDOTA_SELECTOR_HOST, a loopback FEDOTA_PUBLIC_URL), a hospital joins an open problem
and runs the line its problem page shows, with only its data folder and bundle filled
in: the container reaches the selector processes at the Docker host gateway the
platform announces, trains both rounds and exits 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker.joining import readable
from tests.docker.test_e2e_docker import HOLDERS, SETTER, Platform, _tail, running_platform

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def process_platform(
    docker_client: Any, docker_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("join-process")
    with running_platform(docker_client, docker_prefix, tmp, spawner="process") as made:
        try:
            yield made
        finally:
            from webserver.spawner.process import ProcessSpawner

            # The platform's own stop for whatever still runs (the reconciler may not have got to it).
            spawner = ProcessSpawner(tmp / "var" / "problems")
            for problem_id in spawner.problems():
                spawner.stop(problem_id)


def test_the_shown_line_joins_selectors_running_as_processes(process_platform: Platform, tmp_path: Path) -> None:
    from scripts.make_demo_data import make_breast_cancer

    platform = process_platform
    demo = make_breast_cancer(tmp_path / "demo", 1, seed=0)
    readable(tmp_path)
    contract = json.loads((demo / "contract.json").read_text())
    setter, holder = platform.token(SETTER), platform.token(HOLDERS[0])
    problem = platform.api(
        "POST",
        "/api/v1/problems/",
        setter,
        {
            "title": "Process demo",
            "description": "One hospital, two rounds.",
            "contract": contract,
            "app_template": "tabular",
            "run_config": {"rounds": 2, "num_selectors": 1, "min_clients": 1, "clients_per_round": 0},
            "join_policy": "open",
        },
        expect=(201,),
    )
    problem_id = int(problem["id"])
    platform.api("POST", f"/api/v1/problems/{problem_id}/publish/", setter, expect=(201,))
    platform.wait_run(setter, problem_id, "running", 180)

    joined = platform.api(
        "POST", f"/api/v1/problems/{problem_id}/participants/", holder, {"site_name": "Demo Hospital"}, expect=(201,)
    )
    assert joined["status"] == "approved", joined
    bundle = platform.api("POST", f"/api/v1/participants/{joined['id']}/bundle/", holder)
    assert not any(s.startswith(("127.", "localhost")) for s in bundle["selectors"]), bundle["selectors"]
    shown = platform.shown_docker_run(HOLDERS[0], problem_id)
    assert shown == bundle["docker_run"]

    client = platform.start_client(
        problem_id, bundle, demo / "clients" / "hospital_0", f"{platform.prefix}-process-client", shown
    )
    t0 = time.monotonic()
    platform.wait(f"{client.name} to exit", lambda: client.code() is not None, 420, interval=1.0)
    assert client.code() == 0, f"{client.name} exited with {client.code()}:\n{_tail(client.log)}"
    print(f"[join-process] the client trained and exited in {time.monotonic() - t0:.0f} s")
    platform.wait(
        f"problem {problem_id}'s run to finish",
        lambda: platform.latest_run(setter, problem_id)["status"] == "finished",
        120,
        problems=(problem_id,),
    )
    dash = platform.api("GET", f"/api/v1/problems/{problem_id}/dashboard/", setter)
    assert [r["round"] for r in dash["rounds"]] == [1, 2], dash["rounds"]
    assert {p["site"]: p["rounds"] for p in dash["participants"]} == {"Demo Hospital": 2}
