"""The `process` backend: a run's coordinator and selectors as child processes.

For development and hosts without Docker. Each service is its own process
group (so it outlives the Celery task that started it and can be stopped as a
whole), listens on a port the OS picks, and has its own folder under
`<state_dir>/problem_<id>/`. What was started is recorded in `services.json`
there; a process is only ever signalled after checking it carries this
problem's tag in its environment, so a recycled pid is never hit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedota_common.grpcutil import check_health
from webserver.spawner.base import RunSpec, ServiceState, SpawnError

REPO_ROOT = Path(__file__).resolve().parents[2]
TAG_VAR = "FEDOTA_SPAWN_TAG"
START_TIMEOUT = 90.0


def _tag(problem_id: int) -> str:
    return f"problem-{problem_id}"


def _alive_with_tag(pid: int, tag: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return f"{TAG_VAR}={tag}".encode() in environ.split(b"\0")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ProcessSpawner:
    name = "process"

    def __init__(self, state_dir: Path, *, selector_host: str = "127.0.0.1", python: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.selector_host = selector_host
        self.python = python or sys.executable

    # ---- Spawner interface ----------------------------------------------------------------

    def start(self, spec: RunSpec) -> list[ServiceState]:
        self.stop(spec.problem_id)
        root = self._root(spec.problem_id)
        run_dir = root / f"run_{spec.run_number:03d}"
        logs = run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = self._env(spec)
        records: list[dict[str, object]] = []

        coord_dir = run_dir / "coordinator"
        coord_cmd = [
            self.python,
            "-m",
            "coordinator",
            "--app",
            str(spec.fab_path),
            "--state-dir",
            str(coord_dir),
            "--listen",
            "127.0.0.1:0",
            "--run-id",
            str(spec.run_id),
            "--run-config",
            json.dumps(spec.run_config),
            "--round-timeout",
            str(spec.round_timeout),
            "--selector-token",
            spec.selector_token,
            "--wait-for-nodes",
            str(spec.min_clients),
        ]
        coord = self._spawn(coord_cmd, env, logs / "coordinator.log")
        records.append({"role": "coordinator", "index": 0, "pid": coord.pid, "address": ""})
        self._write(root, records)
        coord_state = self._wait_for_file(coord, coord_dir / "coordinator.json", logs / "coordinator.log", spec)
        coord_address = str(coord_state["address"])
        records[0]["address"] = coord_address

        for i in range(spec.num_selectors):
            state_file = run_dir / f"selector_{i}.json"
            cmd = [
                self.python,
                "-m",
                "selector",
                "--coordinator",
                coord_address,
                "--listen",
                f"{self.selector_host}:0",
                "--selector-id",
                f"p{spec.problem_id}-r{spec.run_number}-s{i}",
                "--selector-token",
                spec.selector_token,
                "--state-file",
                str(state_file),
            ]
            proc = self._spawn(cmd, env, logs / f"selector_{i}.log")
            records.append({"role": "selector", "index": i, "pid": proc.pid, "address": ""})
            self._write(root, records)
            state = self._wait_for_file(proc, state_file, logs / f"selector_{i}.log", spec)
            records[-1]["address"] = str(state["address"])
            self._write(root, records)
        return self.status(spec.problem_id)

    def status(self, problem_id: int) -> list[ServiceState]:
        tag = _tag(problem_id)
        out: list[ServiceState] = []
        for rec in self._read(self._root(problem_id)):
            pid = int(rec["pid"])  # type: ignore[call-overload]
            address = str(rec.get("address", ""))
            if not _alive_with_tag(pid, tag):
                health, detail = "exited", "the process is not running"
            elif not address:
                health, detail = "starting", ""
            elif check_health(address, timeout=1.0):
                health, detail = "healthy", ""
            else:
                health, detail = "unhealthy", "the gRPC health check did not answer SERVING"
            out.append(ServiceState(str(rec["role"]), int(rec["index"]), str(pid), address, health, detail))  # type: ignore[call-overload]
        return out

    def stop(self, problem_id: int, *, remove_data: bool = False) -> None:
        root = self._root(problem_id)
        tag = _tag(problem_id)
        pids = [int(rec["pid"]) for rec in self._read(root)]  # type: ignore[call-overload]
        # Selectors first, so clients are not handed to a coordinator that is going away.
        for pid in reversed(pids):
            if _alive_with_tag(pid, tag):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(_alive_with_tag(p, tag) for p in pids):
            self._reap(pids)
            time.sleep(0.1)
        for pid in pids:
            if _alive_with_tag(pid, tag):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._reap(pids)
        services = root / "services.json"
        if services.exists():
            services.unlink()
        if remove_data and root.exists():
            import shutil

            shutil.rmtree(root, ignore_errors=True)

    def problems(self) -> set[int]:
        found: set[int] = set()
        if not self.state_dir.exists():
            return found
        for path in self.state_dir.glob("problem_*/services.json"):
            try:
                problem_id = int(path.parent.name.removeprefix("problem_"))
            except ValueError:
                continue
            tag = _tag(problem_id)
            if any(_alive_with_tag(int(r["pid"]), tag) for r in self._read(path.parent)):  # type: ignore[call-overload]
                found.add(problem_id)
        return found

    # ---- internals --------------------------------------------------------------------------

    def _root(self, problem_id: int) -> Path:
        return self.state_dir / f"problem_{problem_id}"

    def _env(self, spec: RunSpec) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDOTA_", "DJANGO_", "CELERY_", "DATABASE_"))}
        env.update(
            {
                TAG_VAR: _tag(spec.problem_id),
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FEDOTA_REPORT_URL": spec.report_url,
                "FEDOTA_REPORT_TOKEN": spec.service_token,
            }
        )
        env.update(spec.extra_env)
        return env

    def _spawn(self, cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            try:
                return subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise SpawnError(f"cannot start {cmd[2]}: {exc}") from exc

    def _wait_for_file(
        self, proc: subprocess.Popen[bytes], path: Path, log_path: Path, spec: RunSpec
    ) -> dict[str, object]:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if path.exists():
                try:
                    data = json.loads(path.read_text())
                except json.JSONDecodeError:
                    data = None
                if isinstance(data, dict) and data.get("address"):
                    return data
            code = proc.poll()
            if code is not None:
                self.stop(spec.problem_id)
                raise SpawnError(f"{log_path.stem} exited with code {code} while starting:\n{_tail(log_path)}")
            time.sleep(0.1)
        self.stop(spec.problem_id)
        raise SpawnError(f"{log_path.stem} did not start within {START_TIMEOUT:.0f} s:\n{_tail(log_path)}")

    @staticmethod
    def _reap(pids: list[int]) -> None:
        # Only our own services: waitpid(-1) would steal the exit of a Celery pool child.
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    @staticmethod
    def _read(root: Path) -> list[dict[str, object]]:
        path = root / "services.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return []
        return data if isinstance(data, list) else []

    @staticmethod
    def _write(root: Path, records: list[dict[str, object]]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / "services.json.tmp"
        tmp.write_text(json.dumps(records, indent=1))
        tmp.replace(root / "services.json")
