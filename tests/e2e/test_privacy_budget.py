"""A site's privacy budget, end to end: real clients, selectors and a coordinator over TLS.

- A site with a small cap trains until the accountant says the next round would pass it,
  then declines and leaves (exit code 7); the selector and the coordinator see only that,
  with its self-reported spend; the rest of the federation finishes the run.
- The budget is kept on the site's side: a new run (a new coordinator, the same ledger)
  finds it spent, and the site stops at check-in without training.
- Flower's SecAgg+ with client-side DP on every site: the noise is added inside the mask,
  the aggregate is the mean of the clipped updates plus noise, and no train reply the
  coordinator receives holds a site's update.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client_image import exits, privacy
from tests.e2e.conftest import REPO, RunResult, run_local
from tests.e2e.test_secagg import _json_lines as _records
from tests.e2e.test_secagg import _task

pytestmark = pytest.mark.e2e

TABULAR = REPO / "apps" / "tabular"
SECAGG = REPO / "tests" / "apps" / "secagg"


def _ledger(folder: Path) -> dict[str, Any]:
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.timeout(300)
def test_a_site_with_a_small_cap_stops_at_the_predicted_round_and_stays_stopped(tmp_path: Path, demo: Path) -> None:
    cap, z, rounds = 6.0, 1.5, 6
    fit = max(n for n in range(1, rounds + 1) if privacy.epsilon({z: n}, privacy.DEFAULT_DELTA) <= cap)
    assert fit + 1 < rounds  # the stop falls inside the run
    data = demo / "breast_cancer" / "clients"
    site = sorted(p.name for p in data.iterdir() if p.is_dir())[0]
    state = tmp_path / "state"
    budget = f"{site}=--dp-epsilon {cap} --dp-noise-multiplier {z} --dp-clipping-norm 5 --dp-state {state}"

    res: RunResult = run_local(
        tmp_path / "run1",
        *("--app", str(TABULAR), "--data-dir", str(data), "--rounds", str(rounds), "--client-args", budget),
        timeout=240,
    )
    assert res.code == 0, res.explain()
    assert f"{site} (exit {exits.BUDGET})" in res.stderr, res.explain()

    client = res.log(f"client-{site}")
    assert f"one more round would bring ε to {privacy.epsilon({z: fit + 1}, privacy.DEFAULT_DELTA):.3f}" in client
    assert f"exit code {exits.BUDGET}" in client
    ledger = _ledger(state)
    assert len(ledger["releases"]) == fit, ledger
    assert [r["round"] for r in ledger["releases"]] == list(range(1, fit + 1))
    assert ledger["stops"][0]["round"] == fit + 1

    # The selector relayed what the site reported; the coordinator saw a site that declined.
    relayed = [r for r in _records(res.log("coordinator")) if r.get("msg") == "site privacy report (self-reported)"]
    assert [r["state"] for r in relayed] == ["active"] * fit + ["exhausted"], relayed
    assert relayed[-1]["site"] == site and relayed[-1]["releases"] == fit
    assert relayed[-1]["epsilon"] == pytest.approx(privacy.epsilon({z: fit}, privacy.DEFAULT_DELTA), abs=1e-4)
    left = [r for r in _records(res.log("coordinator")) if r.get("msg") == "node left"]
    assert any("privacy budget is spent" in r["reason"] for r in left), left
    # The others finished every round; from the stop on, the round had one client fewer.
    assert len(res.rounds) == rounds
    sites = len([p for p in data.iterdir() if p.is_dir()])
    assert [len(r["participants"]) for r in res.rounds[:fit]] == [sites] * fit, res.rounds
    assert [len(r["participants"]) for r in res.rounds[fit + 1 :]] == [sites - 1] * (rounds - fit - 1), res.rounds
    assert res.rounds[fit]["failures"] == 1, res.rounds[fit]

    # A new run: the ledger on the site's side still says spent; it leaves at check-in.
    again = run_local(
        tmp_path / "run2",
        *("--app", str(TABULAR), "--data-dir", str(data), "--rounds", "2", "--client-args", budget),
        # The site leaves at check-in: start with the others instead of waiting the default 120 s.
        *("--wait-timeout", "15"),
        timeout=240,
    )
    assert again.code == 0, again.explain()
    client = again.log(f"client-{site}")
    assert f"{site} (exit {exits.BUDGET})" in again.stderr, again.explain()
    assert "(0 tasks served)" in client, client
    assert len(_ledger(state)["releases"]) == fit


@pytest.mark.timeout(200)
def test_secure_aggregation_with_client_side_dp_never_shows_the_coordinator_an_update(tmp_path: Path) -> None:
    clients, z, norm = 4, 0.05, 1.0
    data = tmp_path / "clients"
    extra: list[str] = []
    for i in range(clients):
        (data / f"site-{i}").mkdir(parents=True)
        extra += [
            "--client-args",
            f"site-{i}=--dp-epsilon 1000 --dp-noise-multiplier {z} --dp-clipping-norm {norm} "
            f"--dp-state {tmp_path / f'state-{i}'}",
        ]
    res = run_local(
        tmp_path / "run",
        *("--app", str(SECAGG), "--data-dir", str(data), "--selectors", "2"),
        *("--run-config", json.dumps({"record-replies": True}), *extra),
        timeout=150,
    )
    assert res.code == 0, res.explain()
    coordinator = res.log("coordinator")
    assert coordinator.count("Secure aggregation completed.") == 2, res.explain()

    # Every train reply the coordinator received: no array data, only SecAgg+'s configs; the
    # masked vectors came with the collect stage.
    state = res.out / "coordinator"
    replies = [json.loads(line) for line in (state / "replies.jsonl").read_text().splitlines()]
    assert replies and all(r["arrays"] == 0 for r in replies), replies
    masked = [r for r in replies if "masked_params" in r["configs"].get("secaggplus_configs", [])]
    assert len(masked) == 2 * 3, replies  # 3 sampled sites, 2 rounds

    # Each site clipped and noised its update before SecAgg+ masked it, and spent its budget.
    task = _task()
    released = 0
    for i in range(clients):
        ledger = _ledger(tmp_path / f"state-{i}")
        for entry in ledger["releases"]:
            step = np.concatenate([a.ravel() for a in task.step(i)])
            assert entry["update_norm"] == pytest.approx(float(np.linalg.norm(step)), rel=1e-5)
            assert entry["clipped"] is True and entry["noise_multiplier"] == z
        released += len(ledger["releases"])
    assert released == 2 * 3

    # The aggregate is the weighted mean of the clipped updates plus the sites' noise: off the
    # plain mean by noise of the expected size, never by a whole update.
    rounds = [json.loads(line) for line in (state / "fit.jsonl").read_text().splitlines()]
    model = [np.zeros_like(a) for a in task.initial_model()]
    models = {m["round"]: m["arrays"] for m in map(json.loads, (state / "models.jsonl").read_text().splitlines())}
    std = 2 * z * norm
    for number, fits in enumerate(rounds, start=1):
        parts = [f["partition-id"] for f in fits]
        weights = np.array([task.num_examples(p) for p in parts], dtype=float)
        clipped = []
        for p in parts:
            step = task.step(p)
            scale = min(1.0, norm / float(np.sqrt(sum(float((a**2).sum()) for a in step))))
            clipped.append([a * scale for a in step])
        want = [
            m + sum(w * c[k] for w, c in zip(weights, clipped, strict=True)) / weights.sum()
            for k, m in enumerate(model)
        ]
        got = [np.asarray(a) for a in models[number]]
        deviation = np.concatenate([(g - w).ravel() for g, w in zip(got, want, strict=True)])
        spread = std * float(np.sqrt((weights**2).sum()) / weights.sum())
        assert np.abs(deviation).max() < 6 * spread, (number, deviation, spread)
        assert np.abs(deviation).max() > 1e-3, (number, deviation)  # noise was added
        model = got
