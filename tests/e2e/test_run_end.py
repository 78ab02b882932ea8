"""What data holders' clients do when a run ends: whole federations, real processes over loopback.

By default a client exits when its run is over: 0 when the run finished or was stopped,
`exits.RUN_FAILED` when it failed, each time saying so. Stopping the coordinator with
SIGTERM (what the website does to stop a run) reaches every client through the selectors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from client_image import exits
from tests.e2e.conftest import REPO, RunResult, run_local, start_local

ECHO = str(REPO / "tests" / "apps" / "echo")
REPLIES = str(REPO / "tests" / "apps" / "replies")


def _data(tmp_path: Path) -> Path:
    data = tmp_path / "clients"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True, exist_ok=True)
    return data


def _client_logs(out: Path) -> dict[str, str]:
    return {name: (out / "logs" / f"client-{name}.log").read_text() for name in ("a", "b")}


@pytest.mark.timeout(240)
def test_clients_exit_0_saying_the_run_finished(tmp_path: Path) -> None:
    res = run_local(
        tmp_path / "run",
        *("--app", ECHO, "--data-dir", str(_data(tmp_path)), "--selectors", "2", "--insecure"),
        *("--run-config", "model-size-mb=0.01 num-server-rounds=2"),
        timeout=180,
    )
    assert res.code == 0, res.explain()
    assert "clients that failed" not in res.stderr, res.explain()
    for name, log in _client_logs(res.out).items():
        assert "the run finished. This client is done" in log and "exit code 0" in log, f"{name}:\n{log[-2000:]}"


@pytest.mark.timeout(240)
def test_clients_exit_with_the_failed_code_when_the_run_failed(tmp_path: Path) -> None:
    # Under `strict` every reply of this app is refused, so the run fails (tests/e2e/test_reply_policy.py).
    res: RunResult = run_local(
        tmp_path / "run",
        *("--app", REPLIES, "--data-dir", str(_data(tmp_path)), "--selectors", "1", "--insecure"),
        *("--overselect", "1.0", "--reply-policy", "strict", "--run-config", json.dumps({"reply-mode": "float"})),
        timeout=180,
    )
    assert res.code != 0, res.explain()
    # The launcher waits for the coordinator and lists clients by exit code.
    assert "every client has stopped" not in res.stderr, res.explain()
    assert f"a (exit {exits.RUN_FAILED})" in res.stderr and f"b (exit {exits.RUN_FAILED})" in res.stderr, res.explain()
    for name, log in _client_logs(res.out).items():
        assert "error: the run failed: no round got a single accepted training reply" in log, f"{name}:\n{log[-2000:]}"
        assert f"exit code {exits.RUN_FAILED}" in log


@pytest.mark.timeout(240)
def test_a_coordinator_stopped_with_sigterm_makes_clients_exit_0_saying_stopped(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start_local(
        out,
        *("--app", ECHO, "--data-dir", str(_data(tmp_path)), "--selectors", "2", "--insecure"),
        *("--run-config", "model-size-mb=0.01 num-server-rounds=100000"),
    )
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        for line in proc.stdout:
            if line.startswith("round 3/"):
                break
            assert time.monotonic() - started < 120, "no third round within 120 s"
        pids = json.loads((out / "pids.json").read_text())
        os.kill(pids["coordinator"], signal.SIGTERM)
        killed = time.monotonic()
        stdout, stderr = proc.communicate(timeout=90)
        # The launcher gives clients 15 s after the coordinator exits before it stops them itself.
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            # SIGTERM: the launcher stops its federation too (SIGKILL would leave it running).
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    logs = _client_logs(out)
    explain = f"stdout:\n{stdout[-2000:]}\nstderr:\n{stderr}\n" + "\n".join(
        f"--- {n}\n{t[-2000:]}" for n, t in logs.items()
    )
    assert "run stopped (SIGTERM); telling the selectors" in stdout, explain
    assert f"the coordinator exited with code {128 + signal.SIGTERM}" in stderr, explain
    assert "clients that failed" not in stderr, explain
    for log in logs.values():
        assert "the run was stopped: the coordinator was stopped (SIGTERM). This client is done" in log, explain
        assert "exit code 0" in log, explain
    assert took < 15, explain
