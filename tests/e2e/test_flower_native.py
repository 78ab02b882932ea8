"""bench/flower_native.py end to end: both runtimes run the bench app, and nothing they started is left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "flower_native.py"
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _left_behind(work: Path) -> list[str]:
    """Live processes (not zombies) that run in `work` or name it on their command line."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_text().replace("\0", " ")
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        if str(work) in cmd or cwd.startswith(str(work)):
            found.append(f"{name}: {cmd}")
    return found


def _wait_gone(work: Path, seconds: float = 10.0) -> list[str]:
    end = time.monotonic() + seconds
    while (left := _left_behind(work)) and time.monotonic() < end:
        time.sleep(0.2)
    return left


def test_both_runtimes_run_the_app_and_print_both_figures(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--runtime", "both", "--clients", "2", "--rounds", "2", "--model-mb", "0.1"]
        + ["--keep", str(work)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines()}
    for what in ("median round (from round 2)", "server: coordinator | SuperLink + ServerApp", "all processes"):
        cells = rows[what].split()
        # Both figures and their ratio: nothing missing.
        assert "-" not in cells[-5:], rows[what]
        assert cells[-1].endswith("x"), rows[what]
    assert "folded at the selectors" in proc.stdout
    assert _wait_gone(work) == []


def test_a_superlink_port_in_use_is_reported_and_everything_is_stopped(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, str(BENCH), "--runtime", "flower", "--clients", "2", "--rounds", "1"]
            + ["--model-mb", "0.1", "--superlink-port", str(port), "--keep", str(work)],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode != 0
    assert f"SuperLink (port {port}) exited" in proc.stderr
    assert "address already in use" in proc.stderr
    assert _wait_gone(work) == []
