"""Flower's secure aggregation (SecAgg+), unedited, over two selectors.

Our own app (tests/apps/secagg) is written as the Flower docs show it: FedAvg in a
DefaultWorkflow whose fit workflow is SecAggPlusWorkflow, and a NumPyClient behind
secaggplus_mod. Each round samples 3 of the 4 clients, so the launcher's default
over-selection has spare nodes it could (wrongly) pull into a SecAgg+ stage. The run
uses every default of the launcher, TLS included: the securely aggregated model must
be the plain weighted mean of the clients' updates.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import REPO, RunResult, run_local

APP = REPO / "tests" / "apps" / "secagg"
CLIENTS = 4

# SecAgg+ quantises each client's weighted update onto 2**22 levels over [-8, 8] (a step of
# 3.8e-6, stochastically rounded) and its weight num_examples / max_weight onto 1 / 2**22:
# three clients, two rounds, weights summing to at least 0.6 keep the error below 5e-5
# (a run shows about 6e-6). Any real fault (a dropped or double-counted client, an unweighted
# mean, a round that did not aggregate) is off by more than 0.1.
TOLERANCE = 1e-4


def _task() -> ModuleType:
    """The app's own task module: the updates the clients send (one source for app and test)."""
    spec = importlib.util.spec_from_file_location("secagg_task", APP / "fedota_secagg" / "task.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _plain_weighted_means(task: ModuleType, rounds: list[list[dict[str, int]]]) -> list[list[np.ndarray]]:
    """The global model after each round, had the server seen every update in the clear."""
    model = task.initial_model()
    models = []
    for fits in rounds:
        parts = [f["partition-id"] for f in fits]
        weights = [task.num_examples(p) for p in parts]
        # Each client returns model + step(p); FedAvg's weighted mean of those.
        updated = [[m + s for m, s in zip(model, task.step(p), strict=True)] for p in parts]
        model = [
            sum(w * arrays[i] for w, arrays in zip(weights, updated, strict=True)) / sum(weights)
            for i in range(len(model))
        ]
        models.append(model)
    return models


def _assert_model(got: list[object], want: list[np.ndarray], what: str) -> None:
    assert len(got) == len(want), what
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=TOLERANCE, err_msg=what)


@pytest.mark.timeout(120)
def test_secagg_plus_over_two_selectors_gives_the_plain_weighted_mean(tmp_path: Path) -> None:
    data = tmp_path / "clients"
    for i in range(CLIENTS):
        (data / f"site-{i}").mkdir(parents=True)
    res: RunResult = run_local(
        tmp_path / "run", "--app", str(APP), "--data-dir", str(data), "--selectors", "2", timeout=100
    )
    assert res.code == 0, res.explain()
    state = res.out / "coordinator"
    coordinator = res.log("coordinator")

    # Both rounds went through all four SecAgg+ stages and reached FedAvg.
    assert coordinator.count("Secure aggregation completed.") == 2, res.explain()
    assert "Secure aggregation halted." not in coordinator, res.explain()

    # Who took part, as the ServerApp saw it (SecAgg+ leaves num_examples and metrics in
    # the clear): 3 distinct clients each round, each with its own weight.
    task = _task()
    rounds = [json.loads(line) for line in (state / "fit.jsonl").read_text().splitlines()]
    assert len(rounds) == 2, rounds
    for fits in rounds:
        parts = [f["partition-id"] for f in fits]
        assert len(set(parts)) == 3 and set(parts) <= set(range(CLIENTS)), rounds
        assert all(f["examples"] == task.num_examples(f["partition-id"]) for f in fits), rounds

    want = _plain_weighted_means(task, rounds)
    models = {m["round"]: m["arrays"] for m in map(json.loads, (state / "models.jsonl").read_text().splitlines())}
    assert sorted(models) == [0, 1, 2], sorted(models)
    _assert_model(models[1], want[0], "global model after round 1")
    _assert_model(models[2], want[1], "global model after round 2")
    final = json.loads((state / "final.json").read_text())
    _assert_model(final["model"]["arrays"], want[1], "the ServerApp's final model")
    # The model the platform hands the problem owner is the same one.
    with np.load(state / "final_model.npz") as npz:
        _assert_model([npz[k] for k in sorted(npz.files, key=int)], want[1], "final_model.npz")
    # Federated evaluation ran on all four clients each round: loss p + 1 weighted by 10 (p + 1).
    assert final["losses_distributed"] == [[1, pytest.approx(3.0)], [2, pytest.approx(3.0)]], final

    # The clients really were spread over both selectors, and every round's sample spanned both.
    records = _json_lines(coordinator)
    selector_of = {r["node_id"]: r["selector"] for r in records if r.get("msg") == "node joined"}
    assert sorted(selector_of.values()) == ["selector-1", "selector-1", "selector-2", "selector-2"], selector_of
    for name in ("selector-1", "selector-2"):
        assert res.log(name).count('"client joined"') == 2, res.log(name)
    for rnd in res.rounds:
        participants = rnd["participants"]
        assert isinstance(participants, list)
        assert {selector_of[n] for n in participants} == {"selector-1", "selector-2"}, rnd

    # SecAgg+ stage messages went to exactly the clients the workflow chose (no over-selected
    # extras) and came back one by one: nothing folded at a selector.
    train = [r for r in records if r.get("msg") == "instructions pushed" and r.get("type") == "train"]
    assert len(train) == 2 * 4, train  # 4 stages a round
    assert all(r["aggregation"] == "individual" and r["extra_nodes"] == 0 for r in train), train
    train_batches = {r["batch"] for r in train}
    for name in ("selector-1", "selector-2"):
        folded = {r.get("batch") for r in _json_lines(res.log(name)) if r.get("msg") == "partial aggregate sent"}
        assert not folded & train_batches, (name, folded & train_batches)

    logs = "\n".join(p.read_text() for p in (res.out / "logs").glob("*.log"))
    assert "reply rejected" not in logs

    # The round records say so, and their train metrics are the fit results' weighted mean:
    # the stage replies, which carry no metrics, do not dilute them.
    for rnd, fits in zip(res.rounds, rounds, strict=True):
        assert rnd["secure_aggregation"] == "completed", rnd
        weights = [task.num_examples(f["partition-id"]) for f in fits]
        mean = sum(w * f["partition-id"] for w, f in zip(weights, fits, strict=True)) / sum(weights)
        assert rnd["train_metrics"]["partition-id"] == pytest.approx(mean), rnd


@pytest.mark.timeout(120)
def test_a_run_whose_secure_aggregation_halts_every_round_fails_and_says_why(tmp_path: Path) -> None:
    data = tmp_path / "clients"
    for i in range(CLIENTS):
        (data / f"site-{i}").mkdir(parents=True)
    res = run_local(
        tmp_path / "run",
        *("--app", str(APP), "--data-dir", str(data), "--selectors", "2", "--insecure"),
        *("--run-config", json.dumps({"fail-fit": True})),
        timeout=100,
    )
    # On Flower's runtime this run "completes" with the initial model; here it fails, saying why.
    assert res.code != 0, res.explain()
    halted = [line for line in res.stdout.splitlines() if "secure aggregation halted" in line]
    assert halted[:2] == [
        "warning: round 1: secure aggregation halted, the model was not updated: "
        "Insufficient available nodes. (stage collect_masked_vectors: 0 of 3 nodes replied without an error)",
        "warning: round 2: secure aggregation halted, the model was not updated: "
        "Insufficient available nodes. (stage collect_masked_vectors: 0 of 3 nodes replied without an error)",
    ], res.stdout
    assert "run failed: secure aggregation halted in all 2 rounds that used it" in res.stdout, res.stdout
    assert all(r["secure_aggregation"].startswith("Insufficient available nodes.") for r in res.rounds), res.rounds
