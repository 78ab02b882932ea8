"""The `process` backend: a run's coordinator and selectors as child processes.

For development and hosts without Docker. Each service is its own process
group (so it outlives the Celery task that started it and can be stopped as a
whole) and has its own folder under `<state_dir>/problem_<id>/`. Selectors
listen on the problem's fixed ports (`RunSpec.selector_ports`), so the
endpoints in participants' join bundles stay valid from run to run; the
coordinator listens on a loopback port the OS picks, and selectors dial it at
127.0.0.1 (the name in its TLS certificate). Each service also has a plaintext
loopback health port, which `status()` asks.

What was started is recorded in `services.json`. Every process carries a tag
in its environment naming this installation (its state folder) and the
problem; a process is only ever signalled after checking that tag, so a
recycled pid, or another installation's problem with the same id, is never hit.

How each service was started (its command line and environment) is kept in
`<run folder>/<service>.launch.json`, readable by this user only (the
environment holds the run's tokens and TLS keys), so `restart()` can start
one dead service again exactly as it was: a selector on its port with its
certificate, a coordinator on its port (its selectors dial it there) with its
state folder and credentials.

Each service runs under a one-line `sh` wrapper that writes the service's exit
code to a file when it ends, so `status()` can tell a coordinator that
finished its run (code 0) from one that crashed, even from another process
than the one that started it.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedota_common.grpcutil import check_health
from fedota_common.priority import start_service
from webserver.spawner.base import RunSpec, ServiceState, SpawnError, metrics_env

REPO_ROOT = Path(__file__).resolve().parents[2]
TAG_VAR = "FEDOTA_SPAWN_TAG"
# The whole start (coordinator and every selector listening) must fit in this,
# comfortably inside the publish task's time limit.
START_TIMEOUT = 120.0
STOP_GRACE = 10.0
# A stopped coordinator announces the stop (up to 3 s) before its selectors are stopped.
COORDINATOR_GRACE = 5.0
# A restart of one service runs inside the reconciler (Celery soft limit 120 s), among other runs'.
RESTART_TIMEOUT = 60.0
# A service just killed may hold its port a moment longer (its group still exiting, sockets
# closing): a restart waits this long for the port before blaming another program.
PORT_RELEASE_WAIT = 10.0
# `sh -c SCRIPT EXIT_FILE CMD...`: run CMD, then record its exit code. Not `exec`:
# the shell must outlive the service to write the file.
WRAPPER = '"$@"; code=$?; echo $code > "$0"; exit $code'
# Where the coordinator listens and selectors dial it (a name in its certificate).
COORDINATOR_HOST = "127.0.0.1"


def _proc_environ(pid: int) -> list[bytes] | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # A zombie has exited; only its parent's wait() is missing.
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return None
    return environ.split(b"\0")


def _alive_with_tag(pid: int, tag: str) -> bool:
    environ = _proc_environ(pid)
    return environ is not None and f"{TAG_VAR}={tag}".encode() in environ


def tagged_pids(tag: str) -> list[int]:
    """Every live process carrying `tag`, including ones a service forked."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            environ = _proc_environ(int(entry.name))
            if environ is not None and needle in environ:
                found.append(int(entry.name))
    return found


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _port_free(host: str, port: int) -> bool:
    # gRPC binds with SO_REUSEPORT, so a selector would silently share a port
    # another gRPC server holds; a plain bind here notices the clash first.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _port_freed(host: str, port: int, wait: float = PORT_RELEASE_WAIT) -> bool:
    """Whether `port` is free, or becomes free within `wait` seconds."""
    deadline = time.monotonic() + wait
    while not _port_free(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _bind_host(selector_host: str) -> str:
    """Where selectors listen: the advertised host if it is an address, else every interface."""
    if selector_host == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(selector_host)
    except ValueError:
        return "0.0.0.0"
    return selector_host


class ProcessSpawner:
    name = "process"

    def __init__(
        self,
        state_dir: Path,
        *,
        selector_host: str = "127.0.0.1",
        python: str | None = None,
        niceness: int = 0,
        metrics: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        # Each service serves Prometheus metrics on a loopback port of its own (plain HTTP, no
        # credentials: never where data holders reach), listed for discovery (`ServiceState.metrics`).
        self.metrics = metrics
        self.selector_host = selector_host
        self.python = python or sys.executable
        # On a shared host the website serves people and training is batch work: a positive
        # niceness keeps pages responsive while a federation saturates the CPU.
        self.niceness = niceness
        # Two installations on one machine (or two test sessions) may both have
        # a problem 1; the tag keeps their processes apart.
        self._install = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]

    # ---- Spawner interface ----------------------------------------------------------------

    def coordinator_hosts(self, problem_id: int) -> list[str]:
        return [COORDINATOR_HOST]

    def start(self, spec: RunSpec) -> list[ServiceState]:
        self.stop(spec.problem_id)
        bind_host = _bind_host(self.selector_host)
        ports = spec.selector_ports or (0,) * spec.num_selectors
        if len(ports) != spec.num_selectors:
            raise SpawnError(f"{spec.num_selectors} selectors need {spec.num_selectors} ports, got {len(ports)}")
        for i, port in enumerate(ports):
            if port and not _port_free(bind_host, port):
                raise SpawnError(
                    f"selector {i} cannot listen on port {port}: another program is using it "
                    f"(set FEDOTA_SELECTOR_PORT_BASE to move this installation's selector ports)"
                )
        root = self._root(spec.problem_id)
        run_dir = root / f"run_{spec.run_number:03d}"
        logs = run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = self._env(spec)
        deadline = time.monotonic() + START_TIMEOUT
        records: list[dict[str, object]] = []

        coord_dir = run_dir / "coordinator"
        # A restart of the same run reuses its folder (checkpoints); stale state must not count as "up".
        (coord_dir / "coordinator.json").unlink(missing_ok=True)
        coord_cmd = [
            self.python,
            "-m",
            "coordinator",
            # `--flag=value` throughout: a value may begin with "-", which argparse would take for a flag.
            f"--app={spec.fab_path}",
            f"--state-dir={coord_dir}",
            f"--listen={COORDINATOR_HOST}:0",
            f"--run-id={spec.run_id}",
            f"--run-config={json.dumps(spec.run_config)}",
            f"--round-timeout={spec.round_timeout}",
            f"--wait-for-nodes={spec.min_clients}",
            *([f"--reply-policy={spec.reply_policy}"] if spec.reply_policy else []),
        ]
        coord_env = {**env, **spec.coordinator_tls_env()}
        coord = self._spawn(coord_cmd, coord_env, logs / "coordinator.log", run_dir / "coordinator.exit")
        records.append(self._record("coordinator", 0, coord.pid, run_dir / "coordinator", logs / "coordinator.log"))
        records[0]["state_file"] = str(coord_dir / "coordinator.json")
        records[0]["launch"] = self._keep_launch(run_dir / "coordinator.launch.json", coord_cmd, coord_env)
        self._write(root, records)
        coord_state = self._wait_for_file(
            coord, coord_dir / "coordinator.json", logs / "coordinator.log", spec, deadline
        )
        coord_address = str(coord_state["address"])
        # Its gRPC port may speak TLS; the health port is plaintext on loopback.
        records[0].update(
            address=coord_address,
            probe=str(coord_state.get("health") or coord_address),
            metrics=str(coord_state.get("metrics") or ""),
        )
        self._write(root, records)

        for i, port in enumerate(ports):
            state_file = run_dir / f"selector_{i}.json"
            state_file.unlink(missing_ok=True)
            cmd = [
                self.python,
                "-m",
                "selector",
                f"--coordinator={coord_address}",
                f"--listen={bind_host}:{port}",
                f"--selector-id=p{spec.problem_id}-r{spec.run_number}-s{i}",
                f"--state-file={state_file}",
            ]
            log_path = logs / f"selector_{i}.log"
            selector_env = {**env, **spec.selector_tls_env()}
            proc = self._spawn(cmd, selector_env, log_path, run_dir / f"selector_{i}.exit")
            records.append(self._record("selector", i, proc.pid, run_dir / f"selector_{i}", log_path))
            records[-1]["state_file"] = str(state_file)
            records[-1]["launch"] = self._keep_launch(run_dir / f"selector_{i}.launch.json", cmd, selector_env)
            self._write(root, records)
            state = self._wait_for_file(proc, state_file, log_path, spec, deadline)
            listening = str(state["address"])
            # The health port is plaintext on loopback; the clients' port may speak TLS.
            probe = str(state.get("health") or listening)
            records[-1].update(
                address=f"{self.selector_host}:{listening.rsplit(':', 1)[1]}",
                probe=probe,
                metrics=str(state.get("metrics") or ""),
            )
            self._write(root, records)
        return self.status(spec.problem_id)

    def status(self, problem_id: int) -> list[ServiceState]:
        tag = self.tag(problem_id)
        out: list[ServiceState] = []
        for rec in self._read(self._root(problem_id)):
            pid = int(str(rec["pid"]))
            address = str(rec.get("address", ""))
            probe = str(rec.get("probe", "") or address)
            exit_code: int | None = None
            if not _alive_with_tag(pid, tag):
                health = "exited"
                exit_code = self._exit_code(rec)
                how = "was killed" if exit_code is None else f"exited with code {exit_code}"
                tail = _tail(Path(str(rec.get("log", ""))), lines=8)
                detail = f"the process {how}" + (f":\n{tail}" if tail and exit_code else "")
            elif not address:
                health, detail = "starting", ""
            elif check_health(probe, timeout=1.0):
                health, detail = "healthy", ""
            else:
                health, detail = "unhealthy", "the gRPC health check did not answer SERVING"
            out.append(
                ServiceState(
                    str(rec["role"]),
                    int(str(rec["index"])),
                    str(pid),
                    address,
                    health,
                    detail,
                    exit_code,
                    metrics=str(rec.get("metrics", "")) if health != "exited" else "",
                )
            )
        return out

    def restart(self, problem_id: int, role: str, index: int) -> ServiceState:
        root = self._root(problem_id)
        tag = self.tag(problem_id)
        what = f"{role} {index}" if role == "selector" else role
        root.mkdir(parents=True, exist_ok=True)
        # Two reconcilers at once must not start the same service twice.
        with open(root / "restart.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self._read(root)
            rec = next((r for r in records if (r.get("role"), r.get("index")) == (role, index)), None)
            if rec is None:
                raise SpawnError(f"problem {problem_id} has no {what} on record; it cannot be restarted as it was")
            if not _alive_with_tag(int(str(rec["pid"])), tag):
                self._respawn(rec, what, tag)
                self._write(root, records)
        return next(s for s in self.status(problem_id) if (s.role, s.index) == (role, index))

    def _respawn(self, rec: dict[str, object], what: str, tag: str) -> None:
        """Start `rec`'s service again from its launch file, on the address it had; updates `rec`."""
        try:
            launch = json.loads(Path(str(rec.get("launch", ""))).read_text())
            cmd, env = [str(a) for a in launch["cmd"]], {str(k): str(v) for k, v in launch["env"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SpawnError(f"how the {what} was started is not on record ({exc}); it cannot be restarted") from None
        if env.get(TAG_VAR) != tag:
            raise SpawnError(f"the {what}'s launch record belongs to another installation or problem")
        address = str(rec.get("address", ""))
        port = address.rsplit(":", 1)[1] if ":" in address else ""
        if port:
            # Its peers know it at this port: a selector's clients (join bundles), a coordinator's selectors.
            cmd = [
                f"{a.rsplit(':', 1)[0]}:{port}" if a.startswith("--listen=") and a.endswith(":0") else a for a in cmd
            ]
        listen = next((a.removeprefix("--listen=") for a in cmd if a.startswith("--listen=")), "")
        host, _, listen_port = listen.rpartition(":")
        if listen_port.isdigit() and int(listen_port) and not _port_freed(host, int(listen_port)):
            raise SpawnError(f"the {what} cannot listen on {listen} again: another program is using it")
        state_file = Path(str(rec.get("state_file", "")))
        state_file.unlink(missing_ok=True)
        log_path = Path(str(rec.get("log", "")))
        proc = self._spawn(cmd, env, log_path, Path(str(rec["exit_file"])))
        rec.update(pid=proc.pid, probe="", metrics="")
        state = self._await_file(proc, state_file, time.monotonic() + RESTART_TIMEOUT)
        if state is None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SpawnError(f"the restarted {what} did not come up (exit code {proc.returncode}):\n{_tail(log_path)}")
        rec["probe"] = str(state.get("health") or state["address"])
        rec["metrics"] = str(state.get("metrics") or "")

    @staticmethod
    def _keep_launch(path: Path, cmd: list[str], env: dict[str, str]) -> str:
        """Write how a service was started, for `restart`; only this user may read it (it holds secrets)."""
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"cmd": cmd, "env": env}, out)
        tmp.replace(path)
        return str(path)

    def stop(self, problem_id: int, *, remove_data: bool = False) -> None:
        root = self._root(problem_id)
        tag = self.tag(problem_id)
        records = self._read(root)
        recorded = [int(str(rec["pid"])) for rec in records]
        # The coordinator first: on SIGTERM it tells its selectors the run was stopped and they
        # tell their clients (which then exit instead of looking for a selector). The selectors
        # go once it has exited, or after COORDINATOR_GRACE.
        first = [int(str(r["pid"])) for r in records if r.get("role") == "coordinator"]
        for group in (first, [pid for pid in recorded if pid not in first]):
            for pid in group:
                if _alive_with_tag(pid, tag):
                    try:
                        os.killpg(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            if group is first:
                until = time.monotonic() + COORDINATOR_GRACE
                while time.monotonic() < until and any(_alive_with_tag(pid, tag) for pid in first):
                    self._reap(first)
                    time.sleep(0.1)
        # Anything else with the tag (a service whose wrapper died first, a fork) goes too.
        self._signal_all(tag, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and tagged_pids(tag):
            self._reap(recorded)
            time.sleep(0.1)
        self._signal_all(tag, signal.SIGKILL)
        self._reap(recorded)
        (root / "services.json").unlink(missing_ok=True)
        if remove_data and root.exists():
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
            tag = self.tag(problem_id)
            if any(_alive_with_tag(int(str(r["pid"])), tag) for r in self._read(path.parent)):
                found.add(problem_id)
        return found

    # ---- internals --------------------------------------------------------------------------

    def tag(self, problem_id: int) -> str:
        """The environment tag every process of the problem carries (see the module docstring)."""
        return f"{self._install}-problem-{problem_id}"

    def _root(self, problem_id: int) -> Path:
        return self.state_dir / f"problem_{problem_id}"

    @staticmethod
    def _record(role: str, index: int, pid: int, base: Path, log: Path) -> dict[str, object]:
        return {
            "role": role,
            "index": index,
            "pid": pid,
            "address": "",
            "probe": "",
            "exit_file": str(base.with_suffix(".exit")),
            "log": str(log),
        }

    @staticmethod
    def _exit_code(rec: dict[str, object]) -> int | None:
        try:
            return int(Path(str(rec.get("exit_file", ""))).read_text().strip())
        except (OSError, ValueError):
            return None

    def _env(self, spec: RunSpec) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDOTA_", "DJANGO_", "CELERY_", "DATABASE_"))}
        env.update(
            {
                TAG_VAR: self.tag(spec.problem_id),
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FEDOTA_REPORT_URL": spec.report_url,
                "FEDOTA_REPORT_TOKEN": spec.service_token,
                # Secrets in the environment, not on the command line any local user can read.
                "FEDOTA_SELECTOR_TOKEN": spec.selector_token,
            }
        )
        env.update(metrics_env(self.metrics, "127.0.0.1:0"))
        env.update(spec.extra_env)
        return env

    def _spawn(self, cmd: list[str], env: dict[str, str], log_path: Path, exit_path: Path) -> subprocess.Popen[bytes]:
        exit_path.unlink(missing_ok=True)
        with open(log_path, "ab") as log:
            try:
                return start_service(
                    ["/bin/sh", "-c", WRAPPER, str(exit_path), *cmd],
                    self.niceness,
                    env=env,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                raise SpawnError(f"cannot start {cmd[2]}: {exc}") from exc

    @staticmethod
    def _await_file(proc: subprocess.Popen[bytes], path: Path, deadline: float) -> dict[str, object] | None:
        """The state file `proc` writes once it listens; None if it exits or the deadline passes first."""
        while time.monotonic() < deadline:
            if path.exists():
                try:
                    data = json.loads(path.read_text())
                except json.JSONDecodeError:
                    data = None
                if isinstance(data, dict) and data.get("address"):
                    return data
            if proc.poll() is not None:
                return None
            time.sleep(0.1)
        return None

    def _wait_for_file(
        self, proc: subprocess.Popen[bytes], path: Path, log_path: Path, spec: RunSpec, deadline: float
    ) -> dict[str, object]:
        data = self._await_file(proc, path, deadline)
        if data is not None:
            return data
        code = proc.poll()
        self.stop(spec.problem_id)
        if code is not None:
            raise SpawnError(f"{log_path.stem} exited with code {code} while starting:\n{_tail(log_path)}")
        raise SpawnError(f"{log_path.stem} did not start within {START_TIMEOUT:.0f} s:\n{_tail(log_path)}")

    @staticmethod
    def _signal_all(tag: str, sig: signal.Signals) -> None:
        for pid in tagged_pids(tag):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

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
