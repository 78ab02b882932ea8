"""A killed coordinator restarted on its state folder resumes the run after its last checkpoint.

The built-in tabular app with FedAdam (a server optimiser whose moments and
step count must survive the restart), 4 hospitals behind one selector, every
service a real process over gRPC. The coordinator is SIGKILLed once round 3's
checkpoint is on disk and started again with the same command: the run goes
on from there as attempt 2, round numbers continue, no round is recorded twice
within an attempt, and the final model is the one an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import ENV, REPO, wait_for
from tests.ports import free_port

ROUNDS = 6
CONFIG = {"strategy": "FedAdam", "num-server-rounds": ROUNDS, "local-epochs": 2}


def _spawn(args: list[str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=ENV,
        stdout=(log.parent / f"{log.stem}.out").open("a"),
        stderr=log.open("a"),
        text=True,
    )


def _records(state: Path) -> list[dict[str, object]]:
    path = state / "rounds.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _final(state: Path) -> dict[str, np.ndarray]:
    with np.load(state / "final_model.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.timeout(400)
def test_a_killed_coordinator_resumes_after_its_last_checkpoint(demo: Path, tmp_path: Path) -> None:
    data = demo / "breast_cancer" / "clients"
    contract = demo / "breast_cancer" / "contract.json"
    # The same run, uninterrupted, in the background meanwhile: what the resumed run must end with.
    reference = subprocess.Popen(
        [sys.executable, "-m", "coordinator.local", "--out", str(tmp_path / "reference"), "--app", "apps/tabular"]
        + ["--data-dir", str(data), "--selectors", "1", "--insecure", "--run-config", json.dumps(CONFIG)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    logs = tmp_path / "logs"
    logs.mkdir()
    state = tmp_path / "coordinator"
    port = free_port()
    coordinator_args = ["-m", "coordinator", "--app", "apps/tabular", "--state-dir", str(state)]
    coordinator_args += ["--listen", f"127.0.0.1:{port}", "--run-config", json.dumps(CONFIG), "--insecure"]
    coordinator_args += ["--wait-for-nodes", "4", "--wait-timeout", "120", "--round-timeout", "60"]
    procs: list[subprocess.Popen[str]] = []
    try:
        coordinator = _spawn(coordinator_args, logs / "coordinator.log")
        procs.append(coordinator)
        wait_for(lambda: (state / "coordinator.json").exists(), 60, "the coordinator")
        selector_state = tmp_path / "selector.json"
        procs.append(
            _spawn(
                ["-m", "selector", "--coordinator", f"127.0.0.1:{port}", "--listen", "127.0.0.1:0"]
                + ["--selector-id", "selector-1", "--state-file", str(selector_state), "--insecure"],
                logs / "selector.log",
            )
        )
        wait_for(selector_state.exists, 60, "the selector")
        address = json.loads(selector_state.read_text())["address"]
        for i, folder in enumerate(sorted(data.iterdir())):
            procs.append(
                _spawn(
                    [
                        "-m",
                        "client_image",
                        "--selector",
                        address,
                        "--data-path",
                        str(folder),
                        "--contract",
                        str(contract),
                    ]
                    + ["--partition-id", str(i), "--num-partitions", "4", "--insecure", "--name", folder.name]
                    + ["--cache-dir", str(tmp_path / "cache" / folder.name)],
                    logs / f"client-{i}.log",
                )
            )

        def round_3_on_disk() -> bool:
            done = {r["round"]: r for r in _records(state)}
            return 3 in done and (state / str(done[3]["checkpoint"])).is_file()

        wait_for(round_3_on_disk, 180, "round 3's checkpoint")
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(timeout=30)

        again = _spawn(coordinator_args, logs / "coordinator.log")
        procs.append(again)
        assert again.wait(timeout=240) == 0, (logs / "coordinator.log").read_text()[-4000:]
        out, _ = reference.communicate(timeout=240)
        assert reference.returncode == 0, out
    finally:
        for proc in procs + [reference]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    printed = (logs / "coordinator.out").read_text()
    records = _records(state)
    first = [r["round"] for r in records if r["attempt"] == 1]
    second = [r["round"] for r in records if r["attempt"] == 2]
    resumed_after = min(second) - 1  # type: ignore[operator]
    assert f"attempt 2: resuming after round {resumed_after} of {ROUNDS}" in printed, printed
    # At most the round in flight was lost, and each attempt records a round once.
    assert resumed_after >= 3 and first[:resumed_after] == list(range(1, resumed_after + 1)), records
    assert second == list(range(resumed_after + 1, ROUNDS + 1)), records
    assert len(set(first)) == len(first)
    # Attempt 2 kept its own checkpoints; attempt 1's are all still there.
    assert all(str(r["checkpoint"]).startswith("checkpoints/attempt-2/") for r in records if r["attempt"] == 2)
    assert all((state / str(r["checkpoint"])).is_file() for r in records if r["round"] <= resumed_after)
    attempts = json.loads((state / "attempts.json").read_text())["attempts"]
    assert [(a["attempt"], a["resumed_after_round"]) for a in attempts] == [(1, None), (2, resumed_after)]
    # FedAdam's moments and its step count came back: the model is the uninterrupted run's.
    got, want = _final(state), _final(tmp_path / "reference" / "coordinator")
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # The state came from beside the checkpoint (without it the model is off by about 0.1).
    assert (state / str(records[resumed_after - 1]["strategy_state"])).is_file()
