"""The reconciler over the real `process` backend: a killed service is restarted alone, as it was."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ports import selector_port_base
from webserver.problems import lifecycle
from webserver.problems.models import RunStatus
from webserver.spawner import ServiceState
from webserver.spawner.process import ProcessSpawner

pytestmark = pytest.mark.web


def _by_service(states: list[ServiceState]) -> dict[tuple[str, int], ServiceState]:
    return {(s.role, s.index): s for s in states}


def _kill(spawner: ProcessSpawner, problem_id: int, role: str, index: int) -> None:
    handle = _by_service(spawner.status(problem_id))[(role, index)].handle
    os.killpg(int(handle), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _by_service(spawner.status(problem_id))[(role, index)].health != "exited":
        assert time.monotonic() < deadline, f"{role} {index} did not die"
        time.sleep(0.1)


def test_a_killed_selector_then_the_coordinator_are_restarted_alone(
    settings: Any, tmp_path: Path, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FEDOTA_STATE_DIR = tmp_path / "problems"
    settings.FEDOTA_INTERNAL_URL = "http://127.0.0.1:9"  # nobody: the coordinator buffers its reports
    settings.FEDOTA_SELECTOR_PORT_BASE = selector_port_base()
    spawner = ProcessSpawner(settings.FEDOTA_STATE_DIR)
    problem = make_problem(users["owner"])
    problem.run_config = {"rounds": 50, "num_selectors": 2}
    problem.save(update_fields=["run_config"])
    run = lifecycle.run_start(problem=problem, user=users["owner"])
    try:
        lifecycle.run_launch(run_id=run.pk, spawner=spawner)
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING, run.status_detail
        before = _by_service(spawner.status(problem.pk))

        _kill(spawner, problem.pk, "selector", 1)
        report = lifecycle.infrastructure_reconcile(spawner=spawner)

        assert report.restarted == [run.pk] and report.relaunched == [] and report.failed == []
        after = _by_service(spawner.status(problem.pk))
        assert after[("coordinator", 0)].handle == before[("coordinator", 0)].handle
        assert after[("selector", 0)].handle == before[("selector", 0)].handle
        assert after[("selector", 1)].handle != before[("selector", 1)].handle
        assert after[("selector", 1)].address == before[("selector", 1)].address  # the port in the bundles
        assert after[("selector", 1)].health == "healthy", after[("selector", 1)]

        _kill(spawner, problem.pk, "coordinator", 0)
        report = lifecycle.infrastructure_reconcile(spawner=spawner)

        assert report.restarted == [run.pk]
        again = _by_service(spawner.status(problem.pk))
        assert again[("coordinator", 0)].handle != before[("coordinator", 0)].handle
        assert again[("coordinator", 0)].address == before[("coordinator", 0)].address  # where its selectors dial
        assert again[("coordinator", 0)].health == "healthy", again[("coordinator", 0)]
        assert [again[("selector", i)].handle for i in (0, 1)] == [after[("selector", i)].handle for i in (0, 1)]
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING
        assert [r["service"] for r in run.restarts] == ["selector 1", "coordinator"]
        # The launch record holds the run's secrets: only this user may read it.
        launch = settings.FEDOTA_STATE_DIR / f"problem_{problem.pk}" / "run_001" / "coordinator.launch.json"
        assert launch.stat().st_mode & 0o077 == 0
    finally:
        spawner.stop(problem.pk)
    assert spawner.problems() == set()
