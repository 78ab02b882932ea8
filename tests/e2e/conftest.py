"""Helpers for whole-federation tests: demo data, the local launcher, live services."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.ports import selector_port_base

REPO = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


@pytest.fixture
def process_site(settings: Any, live_server: Any, tmp_path: Path) -> Iterator[str]:
    """The website on a live server whose runs start as processes (the `process` spawner).

    Everything a run starts is stopped afterwards, whatever the test did.
    """
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FEDOTA_STATE_DIR = tmp_path / "problems"
    settings.FEDOTA_PUBLIC_URL = live_server.url
    settings.FEDOTA_INTERNAL_URL = live_server.url
    settings.FEDOTA_SPAWNER = "process"
    settings.FEDOTA_SELECTOR_PORT_BASE = selector_port_base()
    yield live_server.url
    from webserver.problems.models import Problem
    from webserver.spawner import get_spawner

    spawner = get_spawner("process")
    for problem_id in Problem.objects.values_list("pk", flat=True):
        spawner.stop(problem_id)


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Breast-cancer hospitals and digits sites, 4 data holders each."""
    from scripts.make_demo_data import make_breast_cancer, make_digits

    out = tmp_path_factory.mktemp("demo")
    make_breast_cancer(out, 4, seed=0)
    make_digits(out, 4, seed=0)
    return out


@dataclass
class RunResult:
    code: int
    stdout: str
    stderr: str
    out: Path

    @property
    def rounds(self) -> list[dict[str, object]]:
        path = self.out / "coordinator" / "rounds.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log(self, name: str) -> str:
        path = self.out / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def explain(self) -> str:
        logs = (
            "\n".join(f"--- {p.name}\n" + p.read_text()[-3000:] for p in sorted((self.out / "logs").glob("*.log")))
            if (self.out / "logs").exists()
            else ""
        )
        return f"exit {self.code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}\n{logs}"


def run_local(out: Path, *args: str, timeout: float = 400) -> RunResult:
    """Run `python -m coordinator.local` to completion."""
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator.local", "--out", str(out), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return RunResult(proc.returncode, proc.stdout, proc.stderr, out)


def start_local(out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator.local", "--out", str(out), *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def app_task(app: str) -> ModuleType:
    """Import a built-in app's `task` module (apps are not installed packages)."""
    folder = REPO / "apps" / app
    package = {"tabular": "fedota_tabular", "image": "fedota_image"}[app]
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(f"{package}.task")


def wait_for(predicate: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Services:
    """A live coordinator and one selector as separate processes."""

    coordinator: subprocess.Popen[str]
    selector: subprocess.Popen[str]
    selector_address: str
    fab_sha256: str
    state: Path

    def alive(self) -> bool:
        return self.coordinator.poll() is None and self.selector.poll() is None


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Coordinator (tabular app, waiting for 50 clients so it never starts) and a selector, plaintext throughout."""
    state = tmp_path / "svc"
    logs = state / "logs"
    logs.mkdir(parents=True)
    coord = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--app",
            str(REPO / "apps" / "tabular"),
            "--state-dir",
            str(state / "coordinator"),
            "--listen",
            "127.0.0.1:0",
            "--wait-for-nodes",
            "50",
            "--wait-timeout",
            "600",
            "--insecure",
        ],
        cwd=REPO,
        env=ENV,
        stdout=(logs / "coordinator.out").open("w"),
        stderr=(logs / "coordinator.log").open("w"),
        text=True,
    )
    info_path = state / "coordinator" / "coordinator.json"
    wait_for(lambda: info_path.exists() or coord.poll() is not None, 60, "the coordinator")
    info = json.loads(info_path.read_text())
    sel_state = state / "selector.json"
    sel = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "selector",
            "--coordinator",
            info["address"],
            "--listen",
            "127.0.0.1:0",
            "--state-file",
            str(sel_state),
            "--selector-id",
            "sel-1",
            "--insecure",
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=(logs / "selector.log").open("w"),
        text=True,
    )
    wait_for(lambda: sel_state.exists() or sel.poll() is not None, 60, "the selector")
    wait_for(lambda: "run info received" in (logs / "selector.log").read_text(), 60, "selector attach")
    svc = Services(coord, sel, json.loads(sel_state.read_text())["address"], info["fab_sha256"], state)
    try:
        yield svc
    finally:
        for proc in (sel, coord):
            proc.terminate()
        for proc in (sel, coord):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
