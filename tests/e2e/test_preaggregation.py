"""Pre-aggregation for an uploaded app: folded only where Flower would compute the same thing.

The app (tests/apps/weighted, built into a FAB) runs each of Flower's weighted-mean strategies in
turn, from the Message API and from the compatibility API, plus a FedAvg
subclass that overrides `aggregate_train`; every data holder returns its own
arrays and metrics. The same app runs twice, 4 clients over 2 selectors: with
`--aggregation auto` (the default: the coordinator looks at the running
strategy and lets the selectors fold when it may) and with `individual` (every
reply reaches the ServerApp, as on Flower's runtime). Models and aggregated
metrics must agree strategy by strategy.

They agree to float tolerance, not bit for bit: a float32 sum depends on the
order of its terms, and Flower's own FedAvg gives run-to-run differences of
this size as replies arrive in a different order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import REPO, RunResult, start_local

APP = str(REPO / "tests" / "apps" / "weighted")
FOLDED = ["FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad", "legacy-FedAvg"]


def _both(tmp_path: Path) -> dict[str, RunResult]:
    from flwr.cli.build import build_fab_from_disk

    data = tmp_path / "clients"
    for name in "abcd":
        (data / name).mkdir(parents=True)
    # Uploaded as a problem setter uploads it: a FAB built by Flower.
    fab = tmp_path / "weighted.fab"
    fab.write_bytes(build_fab_from_disk(Path(APP)))
    procs = {
        mode: (
            tmp_path / mode,
            start_local(
                tmp_path / mode, "--app", str(fab), "--data-dir", str(data), "--selectors", "2", "--aggregation", mode
            ),
        )
        for mode in ("auto", "individual")
    }
    results = {}
    for mode, (out, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        results[mode] = RunResult(proc.returncode, stdout, stderr, out)
    return results


def _close(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: {a} vs {b}"
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    else:
        np.testing.assert_allclose(
            np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-5, atol=5e-6, err_msg=where
        )


@pytest.mark.timeout(300)
def test_folded_rounds_give_what_flowers_strategies_compute_from_every_reply(tmp_path: Path) -> None:
    runs = _both(tmp_path)
    for res in runs.values():
        assert res.code == 0, res.explain()
    got = {mode: json.loads((res.out / "coordinator" / "weighted.json").read_text()) for mode, res in runs.items()}
    folded, individual = got["auto"], got["individual"]
    assert list(folded) == FOLDED[:-1] + ["Overridden", "legacy-FedAvg"]
    for name in folded:
        _close(folded[name], individual[name], name)

    log = runs["auto"].log("coordinator")
    decisions = [
        json.loads(line) for line in log.splitlines() if '"replies folded at' in line or "sent individually" in line
    ]
    said = {(d["type"], d["reason"].split(" ")[0]): d["msg"] for d in decisions}
    for name in ["FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad"]:
        assert said[("train", name)] == said[("evaluate", name)] == "replies folded at the selectors", said
    assert said[("train", "FedAvg")] == "replies folded at the selectors"  # the compatibility API's too
    # A subclass that overrides aggregation is never folded: its aggregate_train saw every reply.
    assert said[("train", "Overridden")] == "replies sent individually"
    assert folded["Overridden"]["replies_seen"] == individual["Overridden"]["replies_seen"] == [4, 4]
    # Folded for real: both selectors sent partial aggregates, and nothing was refused.
    for selector in ("selector-1", "selector-2"):
        assert "partial aggregate sent" in runs["auto"].log(selector), runs["auto"].log(selector)[-2000:]
        assert "reply rejected" not in runs["auto"].log(selector)
    assert '"aggregation": "weighted-mean"' not in runs["individual"].log("coordinator")
    # The Message API's strategies got the two partial means as one reply (coordinator/merging.py),
    # the compatibility API's as they came.
    merged = [json.loads(line) for line in log.splitlines() if '"partial means merged"' in line]
    assert merged and all(m["results"] == 2 for m in merged), log[-3000:]
    assert "partial means merged" not in runs["individual"].log("coordinator")
