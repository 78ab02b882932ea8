"""Selector and client memory stay bounded by a few copies of the model, whatever the number of clients."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, start_local, wait_for

pytestmark = pytest.mark.e2e

MODEL_MIB = 96
CLIENTS = 4
# The selector holds the instruction (1x), the running sum (1x) and one reply
# being folded (1x); streaming the aggregate back adds no copy. Measured here:
# 3.7x above the idle process, of which about 0.5x is glibc keeping freed 1 MiB
# chunk buffers in its per-thread arenas. One copy per client would give at
# least 6x with 4 clients; the code before this bound reached 12.5x here.
BOUND = 5.0


def _kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_selector_peak_memory_stays_a_few_model_copies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(CLIENTS):
        (data / f"client_{i}").mkdir(parents=True)
    out = tmp_path / "run"
    proc = start_local(
        out,
        "--app",
        str(REPO / "tests" / "apps" / "echo"),
        "--data-dir",
        str(data),
        "--selectors",
        "1",
        "--rounds",
        "2",
        "--overselect",
        "1.0",
        "--aggregation",
        "weighted-mean",
        "--run-config",
        json.dumps({"model-size-mb": float(MODEL_MIB), "min-available-nodes": CLIENTS}),
    )
    try:
        pids = out / "pids.json"
        wait_for(lambda: pids.exists() and "selector-1" in pids.read_text(), 60, "the selector to start")
        pid = int(json.loads(pids.read_text())["selector-1"])
        log = out / "logs" / "selector-1.log"
        wait_for(lambda: log.exists() and "run info received" in log.read_text(), 60, "the selector to attach")
        # Everything the process needs before any model arrives (interpreter, gRPC, Flower).
        idle = _kib(pid, "VmHWM")
        peak = [idle]
        stop = threading.Event()

        def sample() -> None:
            # VmHWM is the process's own high-water mark; sampling only has to outlive it.
            while not stop.wait(0.2):
                peak[0] = max(peak[0], _kib(pid, "VmHWM"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            stop.set()
            sampler.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{stdout}\n{stderr}"
    assert len([line for line in stdout.splitlines() if line.startswith("round ")]) == 2, stdout
    sent = [json.loads(x) for x in log.read_text().splitlines() if "partial aggregate sent" in x]
    assert len(sent) == 2 and all(s["clients"] == CLIENTS for s in sent), log.read_text()[-3000:]
    growth = (peak[0] - idle) / 1024 / MODEL_MIB
    print(f"selector peak: idle {idle // 1024} MiB + {growth:.2f}x the model")  # shown with -s
    assert growth < BOUND, f"selector peak grew by {growth:.2f}x the model size (idle {idle // 1024} MiB)"


# A client holds the decoded instruction (1x, Flower's Arrays) while the app builds its
# reply: the distinct app's `Array.numpy()` copy, the sum, and `Array(nd)`'s bytes (up to 3x
# more, briefly). The received buffer is freed once decoded; when the client kept it for
# the whole task (a regression found at 100 MB) the peak was 1x higher.
CLIENT_BOUND = 4.0


def test_client_peak_memory_holds_no_received_buffer_beside_the_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(2):
        (data / f"client_{i}").mkdir(parents=True)
    out = tmp_path / "run"
    proc = start_local(
        out,
        "--app",
        str(REPO / "tests" / "apps" / "distinct"),
        "--data-dir",
        str(data),
        "--selectors",
        "1",
        "--rounds",
        "2",
        "--overselect",
        "1.0",
        "--run-config",
        json.dumps({"model-size-mb": float(MODEL_MIB), "min-available-nodes": 2}),
    )
    try:
        pids = out / "pids.json"
        wait_for(lambda: pids.exists() and "client-client_0" in pids.read_text(), 60, "the client to start")
        pid = int(json.loads(pids.read_text())["client-client_0"])
        log = out / "logs" / "client-client_0.log"
        wait_for(lambda: log.exists() and "checked in" in log.read_text(), 60, "the client to check in")
        idle = _kib(pid, "VmHWM")  # app loaded, no task yet
        peak = [idle]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], _kib(pid, "VmHWM"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stdout, stderr = proc.communicate(timeout=240)
        finally:
            stop.set()
            sampler.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{stdout}\n{stderr}"
    assert log.read_text().count('"task done"') == 2, log.read_text()[-3000:]
    growth = (peak[0] - idle) / 1024 / MODEL_MIB
    print(f"client peak: idle {idle // 1024} MiB + {growth:.2f}x the model")  # shown with -s
    assert growth < CLIENT_BOUND, f"client peak grew by {growth:.2f}x the model size (idle {idle // 1024} MiB)"
