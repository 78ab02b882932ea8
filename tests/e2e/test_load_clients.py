"""bench/load_clients.py end to end: a handful of generated clients join with their own credentials,
check in, answer a FedAvg round, and nothing the bench started is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "load_clients.py"
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _running_in(work: Path) -> list[str]:
    """Live processes (not zombies) that name `work` on their command line."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z" and str(work) in cmd:
            found.append(f"{name}: {cmd}")
    return found


def _run(work: Path, *args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--selectors", "2", "--model-kb", "20", "--out", str(work), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    end = time.monotonic() + 10
    while (left := _running_in(work)) and time.monotonic() < end:
        time.sleep(0.2)
    assert not left, left
    return result


def test_generated_clients_join_with_their_credentials_and_answer_a_round(tmp_path: Path) -> None:
    work = tmp_path / "round"
    result = _run(work, "--clients", "6", "--connecting", "2")
    assert (result["welcomed"], result["tasks_done"], result["errors"]) == (6, 6, 0)
    assert result["coordinator_exit"] == 0
    rounds = result["round_s"]
    assert isinstance(rounds, list) and len(rounds) == 1
    # The selectors checked each credential against the list the bench served as the website.
    logs = "".join(p.read_text() for p in (work / "logs").glob("selector-*.log"))
    assert logs.count('"client joined"') == 6 and "admitting any client" not in logs


def test_idle_clients_are_held_and_measured(tmp_path: Path) -> None:
    result = _run(tmp_path / "idle", "--clients", "8", "--idle", "1")
    assert (result["welcomed"], result["tasks_done"], result["errors"]) == (8, 0, 0)
    assert "selector_kib_per_idle_client" in result and "generator_kib_per_idle_client" in result
