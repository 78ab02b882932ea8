"""Flower's differential-privacy building blocks, unedited, over the coordinator and selectors.

One app of ours (tests/apps/dp) wraps FedAvg in each of Flower's central-DP
strategies (server-side or client-side clipping, fixed or adaptive) or puts
LocalDpMod on the ClientApp. Three data holders each add a fixed update to the
model (norms 5, 10 and 1; 10, 20 and 30 examples), so without noise every round's
step is predictable: the weighted mean of the clipped updates. With noise, the
step is that mean plus Gaussian noise of the scale Flower's formulas give.

Every federation runs with the launcher's defaults (over-selection, automatic
aggregation), as a problem setter's would. The nine federations run side by side
in one module fixture (each takes ~8 s alone, mostly process start-up; together
~45 s on two cores), so even one selected test starts all of them.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import REPO, RunResult, run_local

APP = str(REPO / "tests" / "apps" / "dp")
ROUNDS = 2
# What the app's clients do (tests/apps/dp/fedota_dp/client_app.py), partition by partition.
UPDATES = [np.array([3.0, 4.0, 0.0, 0.0]), np.array([0.0, 0.0, 6.0, 8.0]), np.array([1.0, 0.0, 0.0, 0.0])]
WEIGHTS = np.array([10.0, 20.0, 30.0])
# The app's run config defaults.
CLIPPING_NORM = 4.0
TARGET_QUANTILE = 0.5
CLIP_NORM_LR = 0.5
LOCAL_STD = 0.01 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 1.0  # LocalDpMod: sensitivity, delta, epsilon
NOISE = 0.05  # below 3 / 10, the most Flower's adaptive wrappers allow for 3 clients by default
CENTRAL = ("server-fixed", "client-fixed", "server-adaptive", "client-adaptive")

RUNS: dict[str, dict[str, object]] = {
    **{mode: {"dp-mode": mode} for mode in CENTRAL},
    **{f"{mode}-noisy": {"dp-mode": mode, "noise-multiplier": NOISE} for mode in CENTRAL},
    "local-dp": {"dp-mode": "local-dp"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    """Every federation of this module, run side by side."""
    base = tmp_path_factory.mktemp("dp")
    data = base / "clients"
    for name in ("a", "b", "c"):  # partition-ids 0, 1, 2 in this order
        (data / name).mkdir(parents=True)

    def run(name: str) -> RunResult:
        return run_local(
            base / name,
            "--app",
            APP,
            "--data-dir",
            str(data),
            "--selectors",
            "2",
            "--insecure",
            "--run-config",
            json.dumps(RUNS[name]),
            timeout=240,
        )

    with ThreadPoolExecutor(max_workers=len(RUNS)) as pool:
        return dict(zip(RUNS, pool.map(run, RUNS), strict=True))


def _clip(update: np.ndarray, norm: float) -> np.ndarray:
    return update * min(1.0, norm / float(np.linalg.norm(update)))


def _mean_step(norm: float) -> np.ndarray:
    """FedAvg of the three updates, each clipped to `norm`."""
    return sum(w * _clip(u, norm) for w, u in zip(WEIGHTS, UPDATES, strict=True)) / WEIGHTS.sum()


def _finished(res: RunResult) -> dict[str, Any]:
    """The ServerApp's record of a run that finished every round with every reply accepted."""
    assert res.code == 0, res.explain()
    for i in (1, 2):
        assert "reply rejected" not in res.log(f"selector-{i}"), res.explain()
    assert [r["round"] for r in res.rounds] == [1, 2], res.rounds
    assert all(r["failures"] == 0 and r["rejected"] == 0 for r in res.rounds), res.rounds
    doc = json.loads((res.out / "coordinator" / "dp.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2], doc
    return doc


def _steps(doc: dict[str, Any]) -> list[np.ndarray]:
    models = [np.array(r["w"]) for r in doc["rounds"]]
    return [b - a for a, b in zip(models, models[1:], strict=False)]


def _norms(doc: dict[str, Any]) -> list[float]:
    """The clipping norm each round used (recorded before round 1 and after each round)."""
    return [float(r["clipping_norm"]) for r in doc["rounds"]][:ROUNDS]


def _saw_each_reply(res: RunResult) -> bool:
    """The DP wrapper got one reply per client each round, not partial means from selectors."""
    # Flower's wrapper and the FedAvg inside it each log what they received.
    received = [line for line in res.log("coordinator").splitlines() if "aggregate_train: Received" in line]
    return len(received) == 2 * ROUNDS and all("Received 3 results and 0 failures" in line for line in received)


def _adaptive_norms(initial: float) -> list[float]:
    """Andrew et al.'s geometric update, with no noise on the clipped count."""
    norms = [initial]
    for _ in range(ROUNDS - 1):
        clipped = sum(float(np.linalg.norm(u)) > norms[-1] for u in UPDATES)
        norms.append(norms[-1] * math.exp(-CLIP_NORM_LR * (clipped / len(UPDATES) - TARGET_QUANTILE)))
    return norms


def _check_noise(noise: np.ndarray, std: float) -> None:
    """Noise is there, of the right order: not zero, not a rounding error, not far beyond `std`."""
    biggest = float(np.max(np.abs(noise)))
    assert 0.01 * std < biggest < 6 * std, (noise, std)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["server-fixed", "client-fixed"])
def test_fixed_clipping_without_noise_gives_the_weighted_mean_of_the_clipped_updates(
    runs: dict[str, RunResult], mode: str
) -> None:
    res = runs[mode]
    doc = _finished(res)
    assert _saw_each_reply(res), res.explain()
    expected = _mean_step(CLIPPING_NORM)
    # Two updates are clipped, the third is not: unclipped FedAvg would step by [1, 2/3, 2, 8/3].
    assert expected == pytest.approx(np.array([10 * 2.4 + 30, 10 * 3.2, 20 * 2.4, 20 * 3.2]) / 60)
    for step in _steps(doc):
        assert step == pytest.approx(expected, abs=1e-9), doc
    assert _norms(doc) == [CLIPPING_NORM] * ROUNDS


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["server-adaptive", "client-adaptive"])
def test_adaptive_clipping_without_noise_moves_the_norm_and_clips_with_it(
    runs: dict[str, RunResult], mode: str
) -> None:
    res = runs[mode]
    doc = _finished(res)
    assert _saw_each_reply(res), res.explain()
    norms = _adaptive_norms(CLIPPING_NORM)
    # Two of three updates clipped (above the 0.5 target): the norm shrinks.
    assert norms[1] < norms[0]
    assert _norms(doc) == pytest.approx(norms, abs=1e-9), doc
    for step, norm in zip(_steps(doc), norms, strict=True):
        assert step == pytest.approx(_mean_step(norm), abs=1e-9), doc
    if mode == "client-adaptive":
        # adaptiveclipping_mod's norm bit crossed both hops: 10 + 20 of 60 examples were clipped.
        assert [doc["train"][str(r)]["norm_bit"] for r in (1, 2)] == pytest.approx([0.5, 0.5])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", CENTRAL)
def test_central_noise_is_added_to_the_clipped_mean(runs: dict[str, RunResult], mode: str) -> None:
    res = runs[f"{mode}-noisy"]
    doc = _finished(res)
    assert _saw_each_reply(res), res.explain()
    norms = _norms(doc)
    if mode.endswith("adaptive"):
        # The clipped count is noised too (Flower's default stddev: clients / 20), so the norm
        # moves off its noiseless path, and the model noise is the remainder after the count's share.
        assert norms[0] == CLIPPING_NORM and norms[1] != pytest.approx(_adaptive_norms(CLIPPING_NORM)[1], abs=1e-9)
        multiplier = (NOISE**-2 - (2 * 3 / 20) ** -2) ** -0.5
    else:
        assert norms == [CLIPPING_NORM] * ROUNDS
        multiplier = NOISE
    for step, norm in zip(_steps(doc), norms, strict=True):
        _check_noise(step - _mean_step(norm), multiplier * norm / 3)


@pytest.mark.timeout(300)
def test_local_dp_clients_clip_and_noise_their_own_updates(runs: dict[str, RunResult]) -> None:
    doc = _finished(runs["local-dp"])
    # FedAvg of the three noised updates: the noise of a weighted mean.
    std = LOCAL_STD * float(np.sqrt((WEIGHTS**2).sum())) / WEIGHTS.sum()
    for step in _steps(doc):
        _check_noise(step - _mean_step(CLIPPING_NORM), std)
