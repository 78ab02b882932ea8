"""Whole federations (real processes, gRPC over loopback) under each reply policy.

An int64 model whose clients answer in float64: under `flower` the ServerApp gets
the float replies and trains on them; under `strict` every reply is rejected, each
round says why, and the run fails instead of "finishing". Zero examples and a
changed shape reach the ServerApp under `flower` too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, RunResult, run_local

APP = str(REPO / "tests" / "apps" / "replies")


def _run(tmp_path: Path, policy: str, mode: str = "float") -> RunResult:
    data = tmp_path / "clients"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True, exist_ok=True)
    return run_local(
        tmp_path / "run",
        "--app",
        APP,
        "--data-dir",
        str(data),
        "--selectors",
        "1",
        "--insecure",
        "--overselect",
        "1.0",
        "--reply-policy",
        policy,
        "--run-config",
        json.dumps({"reply-mode": mode}),
        timeout=180,
    )


def _seen(res: RunResult) -> list[dict[str, object]]:
    path = res.out / "coordinator" / "seen.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(240)
def test_under_flower_float_replies_to_an_int_model_reach_the_server_app_and_train(tmp_path: Path) -> None:
    res = _run(tmp_path, "flower")
    assert res.code == 0, res.explain()
    seen = _seen(res)
    assert all(s.get("dtype") == "float64" and s.get("shape") == [4] for s in seen), seen
    # RecordingFedAvg overrides aggregate_train, so no round is folded: each reply on its own.
    assert sorted((s["round"], s["examples"]) for s in seen) == [(1, 10), (1, 20), (2, 10), (2, 20)], seen
    final = json.loads((res.out / "coordinator" / "final.json").read_text())
    # FedAvg of (w + 0.5) twice, as Flower computes it: float64.
    assert final["dtype"] == "float64"
    assert final["values"] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    selector = res.log("selector-1")
    assert "reply rejected" not in selector and "reply rejected" not in res.log("coordinator")
    assert "replies sent individually" in res.log("coordinator")
    assert "warning:" not in res.stdout and all(r["rejected"] == 0 for r in res.rounds)


@pytest.mark.timeout(240)
def test_under_strict_the_same_run_is_rejected_round_by_round_and_fails(tmp_path: Path) -> None:
    res = _run(tmp_path, "strict")
    assert res.code != 0, res.explain()
    reason = "array 'w' has dtype float64; the model's is int64"
    warnings = [line for line in res.stdout.splitlines() if line.startswith("warning: round")]
    assert any(f"2 replies rejected: {reason} (x2)" in w for w in warnings), res.stdout
    assert any("no results accepted" in w for w in warnings), res.stdout
    assert "run failed: no round got a single accepted training reply: 4 asked for, 4 rejected" in res.stdout
    assert "the run failed" in res.stderr, res.stderr
    rounds = res.rounds
    assert [r["no_results"] for r in rounds] == [True, True]
    assert all(r["rejected_reasons"] == {reason: 2} for r in rounds), rounds
    # Not folded (the app's strategy aggregates its own way), so judged where the ServerApp is.
    assert "reply rejected" in res.log("coordinator")
    # The ServerApp saw only the rejections, never a float reply.
    assert all("error" in s for s in _seen(res))


@pytest.mark.timeout(240)
def test_under_flower_zero_examples_and_a_changed_shape_reach_the_server_app(tmp_path: Path) -> None:
    res = _run(tmp_path, "flower", "zero-weight-reshape")
    assert res.code == 0, res.explain()
    first = [s for s in _seen(res) if s["round"] == 1]
    assert sorted((s["examples"], s["shape"], s["dtype"]) for s in first) == [
        (0, [5], "int64"),
        (20, [5], "int64"),
    ], first
