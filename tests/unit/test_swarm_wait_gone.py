"""The swarm backend's stop waits for removed services' tasks to end, but not for a lost node's."""

from __future__ import annotations

from typing import Any

import pytest

from webserver.spawner import swarm
from webserver.spawner.swarm import SwarmSpawner


class _Api:
    """inspect_task / inspect_node of an engine: task states advance one step per inspection."""

    def __init__(self, tasks: dict[str, tuple[str, list[str]]], nodes: dict[str, str]) -> None:
        self.tasks = tasks  # task id -> (node id, states it reports in turn; the last one stays)
        self.nodes = nodes  # node id -> "ready" | "down"
        self.asked: list[str] = []

    def inspect_task(self, task_id: str) -> dict[str, Any]:
        self.asked.append(task_id)
        node, states = self.tasks[task_id]
        state = states.pop(0) if len(states) > 1 else states[0]
        return {"NodeID": node, "Status": {"State": state}}

    def inspect_node(self, node_id: str) -> dict[str, Any]:
        return {"Status": {"State": self.nodes[node_id]}}


class _Client:
    def __init__(self, api: _Api) -> None:
        self.api = api

    def info(self) -> dict[str, Any]:
        return {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "manager"}}


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(swarm.time, "sleep", slept.append)
    return slept


def test_a_task_on_a_lost_node_is_not_waited_for(sleeps: list[float]) -> None:
    api = _Api({"t1": ("gone-node", ["running"])}, {"gone-node": "down"})
    SwarmSpawner(client=_Client(api))._wait_gone(["t1"])
    assert api.asked == ["t1"] and sleeps == []


def test_a_task_on_a_live_node_is_waited_for_until_it_ends(sleeps: list[float]) -> None:
    api = _Api(
        {"t1": ("n1", ["running", "running", "shutdown"]), "t2": ("n2", ["complete"])}, {"n1": "ready", "n2": "ready"}
    )
    SwarmSpawner(client=_Client(api))._wait_gone(["t1", "t2"])
    assert api.asked == ["t1", "t1", "t1", "t2"] and len(sleeps) == 2
