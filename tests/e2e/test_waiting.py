"""A round waiting for clients says so while it waits, and a wait past the limit fails the run.

Issue 15 measured a run stalled 71 s on Flower's "Waiting for nodes to connect"
with nothing on the dashboard. Here the app's strategy needs 3 clients and only
2 exist: the coordinator warns live (its warnings also go to the dashboard's
events) and, after the round timeout, fails the run saying why. Both Flower
APIs: the Message API's `sample_nodes` loop and the compatibility API's client
manager.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, run_local


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("app", "needs"),
    [("tests/apps/echo", "min-available-nodes"), ("tests/apps/compat_numpy", "min-available-clients")],
)
def test_waiting_for_clients_is_said_and_bounded(demo: Path, tmp_path: Path, app: str, needs: str) -> None:
    data = tmp_path / "clients"
    hospitals = sorted((demo / "breast_cancer" / "clients").iterdir())[:2]
    for name, hospital in zip(("a", "b"), hospitals, strict=True):
        shutil.copytree(hospital, data / name)
    res = run_local(
        tmp_path / "run",
        *("--app", str(REPO / app), "--data-dir", str(data), "--selectors", "1", "--insecure"),
        *("--contract", str(demo / "breast_cancer" / "contract.json"), "--round-timeout", "4"),
        *("--run-config", json.dumps({needs: 3})),
        timeout=100,
    )
    assert res.code != 0, res.explain()
    assert "waiting: 2 of 3 clients connected (0 s so far; the run fails if they are not there within 4 s)" in (
        res.stdout
    ), res.stdout
    assert "the ServerApp failed: waited 4 s for clients: 2 of 3 connected (the strategy needs 3" in res.stderr, (
        res.stderr
    )
