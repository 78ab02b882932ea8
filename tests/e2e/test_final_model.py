"""The final model is the last round's, also for an app that never evaluates.

The coordinator sees the models it sends out; a Message-API app without an
evaluate round never sends its last round's model, so the final model used to
be one round behind and the last round had no checkpoint. The model Flower's
`Strategy.start` returns now closes the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import REPO, run_local


@pytest.mark.timeout(120)
def test_an_app_without_evaluation_ends_with_its_last_rounds_model(tmp_path: Path) -> None:
    data = tmp_path / "clients"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
    res = run_local(
        tmp_path / "run",
        *("--app", str(REPO / "tests" / "apps" / "distinct"), "--data-dir", str(data), "--selectors", "1"),
        *("--insecure", "--run-config", json.dumps({"num-server-rounds": 2, "model-size-mb": 0.01})),
        timeout=100,
    )
    assert res.code == 0, res.explain()
    state = res.out / "coordinator"
    with np.load(state / "checkpoints" / "round_0001.npz") as one, np.load(state / "final_model.npz") as final:
        after_one, last = one["weights"], final["weights"]
    with np.load(state / "checkpoints" / "round_0002.npz") as two:
        np.testing.assert_array_equal(two["weights"], last)
    # Round 2 moved the model once more: clients add 0.001 (p + 1), weighted 10 (p + 1): +0.00167.
    np.testing.assert_allclose(last - after_one, 0.001 * 5 / 3, rtol=1e-3)
