"""The same Flower app on Flower's own deployment runtime and on Fedota, side by side.

    python bench/flower_native.py                                   # 1 MB, 10 clients, 10 rounds, both runtimes
    python bench/flower_native.py --model-mb 100 --clients 10 --rounds 8
    python bench/flower_native.py --runtime flower --clients 2 --rounds 2 --model-mb 0.1

The app is `bench/apps/sidebyside` (Message API, Flower's own `FedAvg`, every
client returns its own arrays of `model-size-mb` MiB), run unedited by both:

- Flower: `flower-superlink --insecure` and N `flower-supernode --insecure`
  (node config `partition-id=i num-partitions=N`, each with its own Runtime API
  port and Flower home), then `flwr run <app> <connection> --stream` against the
  SuperLink, all from the flwr in this venv, with its defaults: the SuperLink
  runs the ServerApp in a subprocess (through its SuperExec), each SuperNode
  one `flwr-clientapp` process per message. No runtime dependency installation
  (nothing may be downloaded here).
- Fedota: `python -m coordinator.local` with 2 selectors (`--selectors`) and
  TLS on both links (its default), `--overselect 1.0`, aggregation `auto`.

Round times come from the app itself: its ServerApp prints a timestamp before
round 1 and after every round (`BENCH-ROUND`, from FedAvg's `evaluate_fn`), and
a round's time is the gap to the previous stamp: the same code on both
runtimes. Flower delivers the ServerApp's output through `flwr run --stream`,
Fedota's coordinator on its terminal. The median and p90 are taken from round 2
on (round 1 includes loading the app).

Memory per role: every 0.1 s the script reads VmRSS and VmHWM of every process
of each role from /proc (a role is a process and all its descendants). A role's
peak is the highest sum of its processes' RSS in one sample, or, where higher,
the highest VmHWM of one of its processes (which catches a one-process role's
peak between samples). Roles: Flower SuperLink (with the SuperExec it starts),
ServerApp (`flwr-serverapp`), each SuperNode (with its SuperExec and its
`flwr-clientapp` processes); Fedota coordinator, each selector, each client.
The launchers (`flwr run`, `coordinator.local`) are not counted.

Every process started is stopped at the end, also on failure or Ctrl-C: each
runtime's processes and everything they started (found from /proc while they
run). Exits non-zero, saying why, if a runtime fails to start or to finish.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "bench" / "apps" / "sidebyside"
MARK = "BENCH-ROUND"
SAMPLE_SECONDS = 0.1
# The SuperLink, each SuperNode and the coordinator must be up within this (a busy 2-core machine is slow to start
# a dozen Pythons at once).
START_TIMEOUT = 180.0


class BenchError(Exception):
    """A runtime failed to start or to finish; the message says which and why."""


# ---------------------------------------------------------------------------------------------------------------
# Parsing: round stamps, /proc files, statistics


def parse_round_stamps(text: str) -> dict[int, float]:
    """The app's `BENCH-ROUND {"round": r, "t": ...}` stamps in `text` (any other output around them is ignored)."""
    stamps: dict[int, float] = {}
    for line in text.splitlines():
        at = line.find(MARK)
        if at < 0:
            continue
        try:
            doc = json.loads(line[at + len(MARK) :].strip())
            stamps[int(doc["round"])] = float(doc["t"])
        except (ValueError, KeyError, TypeError):
            continue
    return stamps


def round_times(stamps: Mapping[int, float]) -> list[float]:
    """Seconds of rounds 1, 2, ...: each stamp minus the one before it, up to the first missing round."""
    times = []
    r = 1
    while r in stamps and r - 1 in stamps:
        times.append(stamps[r] - stamps[r - 1])
        r += 1
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def steady(times: Sequence[float]) -> list[float]:
    """Rounds from round 2 on (round 1 includes loading the app), or all of them if there is only one."""
    return list(times[1:]) if len(times) > 1 else list(times)


def parse_status(text: str) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from a /proc/<pid>/status text; 0 for a missing field (a zombie has neither)."""
    rss = hwm = 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def parse_stat(text: str) -> tuple[int, int]:
    """(parent pid, start time in clock ticks) from a /proc/<pid>/stat text.

    The command name (field 2) is in parentheses and may itself hold spaces and
    parentheses, so fields are counted from the last ')'.
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, starttime field 22.
    return int(rest[1]), int(rest[19])


def children_of(parents: Mapping[int, int]) -> dict[int, list[int]]:
    """Each process's children, given each process's parent."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    return children


def descendants(children: Mapping[int, Sequence[int]], root: int) -> list[int]:
    """`root` and every process below it."""
    found: dict[int, None] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = None
            todo.extend(children.get(pid, ()))
    return list(found)


@dataclass
class Peaks:
    """Peak memory per role and per group of roles, from samples of (pid, RSS, HWM) per role, in KiB."""

    groups: dict[str, Callable[[str], bool]] = field(default_factory=dict)
    role_peak: dict[str, int] = field(default_factory=dict)
    group_peak: dict[str, int] = field(default_factory=dict)

    def add(self, sample: Mapping[str, Iterable[tuple[int, int, int]]]) -> None:
        """One sample: for each role, its processes' (pid, VmRSS, VmHWM)."""
        sums: dict[str, int] = {}
        hwms: dict[str, int] = {}
        for role, procs in sample.items():
            procs = list(procs)
            sums[role] = sum(rss for _, rss, _ in procs)
            hwms[role] = max((hwm for _, _, hwm in procs), default=0)
            self.role_peak[role] = max(self.role_peak.get(role, 0), sums[role], hwms[role])
        for name, member in self.groups.items():
            roles = [r for r in sample if member(r)]
            total = sum(sums[r] for r in roles)
            one = max((hwms[r] for r in roles), default=0)
            self.group_peak[name] = max(self.group_peak.get(name, 0), total, one)


# ---------------------------------------------------------------------------------------------------------------
# Processes: start, find what they start, sample their memory, stop all of it


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class Tree:
    """Every process on the machine with its parent and start time, updated incrementally from /proc."""

    def __init__(self) -> None:
        self.info: dict[int, tuple[int, int]] = {}  # pid -> (ppid, start time)
        self.children: dict[int, list[int]] = {}

    def refresh(self) -> None:
        live = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for pid in list(self.info):
            if pid not in live:
                del self.info[pid]
        for pid in live - self.info.keys():
            text = _read(f"/proc/{pid}/stat")
            if text:
                try:
                    self.info[pid] = parse_stat(text)
                except (ValueError, IndexError):
                    pass
        self.children = children_of({pid: ppid for pid, (ppid, _) in self.info.items()})

    def below(self, root: int) -> list[int]:
        return descendants(self.children, root)


def _cmdline(pid: int) -> str:
    raw = _read(f"/proc/{pid}/cmdline")
    return raw.replace("\0", " ") if raw else ""


class Fleet:
    """The processes one runtime's run started, and everything they start in turn.

    `roles()` (given by the runtime) names the root process of each role as they
    appear; `split` moves a descendant whose command line contains a key into the
    role named by its value. A sampler thread records peak memory and every
    process ever seen below our own children (pid and start time, so a reused
    pid is never signalled), which `stop()` uses to end even processes whose
    parent already exited.
    """

    def __init__(self, logs: Path, env: Mapping[str, str], peaks: Peaks) -> None:
        self.logs = logs
        self.env = dict(env)
        self.peaks = peaks
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.roles: Callable[[], dict[str, int]] = lambda: {}
        self.split: dict[str, str] = {}
        self.seen: dict[int, int] = {}  # pid -> start time, every process started by us or below us
        self.tree = Tree()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, name="rss-sampler", daemon=True)
        self._cmd: dict[tuple[int, int], str] = {}

    def start(
        self, name: str, cmd: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        # Its own session: a Ctrl-C in the terminal reaches only this script, which stops everything in order.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else self.env,
            start_new_session=True,
        )
        log.close()
        with self._lock:
            self.procs[name] = proc
            start = _start_time(proc.pid)
            if start is not None:
                self.seen[proc.pid] = start
        if not self._sampler.is_alive() and not self._stop.is_set():
            self._sampler.start()

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, name: str, lines: int = 12) -> str:
        return "\n".join("    " + line for line in self.log_text(name).splitlines()[-lines:])

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - the sampler must not die silently mid-run
                print(f"warning: memory sampling failed once: {exc}", file=sys.stderr)
            self._stop.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        self.tree.refresh()
        with self._lock:
            for proc in self.procs.values():
                for pid in self.tree.below(proc.pid):
                    if pid in self.tree.info:
                        self.seen.setdefault(pid, self.tree.info[pid][1])
            roots = self.roles()
        sample: dict[str, list[tuple[int, int, int]]] = {}
        for role, root in roots.items():
            for pid in self.tree.below(root):
                info = self.tree.info.get(pid)
                if info is None:
                    continue
                key = (pid, info[1])
                if key not in self._cmd:
                    self._cmd[key] = _cmdline(pid)
                owner = next((r for k, r in self.split.items() if k in self._cmd[key]), role)
                status = _read(f"/proc/{pid}/status")
                if status is None:
                    continue
                rss, hwm = parse_status(status)
                sample.setdefault(owner, []).append((pid, rss, hwm))
        if sample:
            self.peaks.add(sample)

    def stop(self, first: Mapping[str, int] | None = None, grace: float = 15.0) -> None:
        """Stop everything: `first` names processes to signal first (e.g. SIGINT to a launcher that stops its own
        fleet), then SIGTERM to every process we started or saw below them, then SIGKILL to what is left."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            self._stop.set()
            if self._sampler.is_alive():
                self._sampler.join(timeout=5)
            self._record_tree()
            for name, sig in (first or {}).items():
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is None:
                    proc.send_signal(sig)
            _wait_all(self.procs.values(), grace if first else 0.0)
            self._record_tree()
            alive = self._alive()
            for pid in alive:
                _signal(pid, signal.SIGTERM)
            end = time.monotonic() + 5.0
            while alive and time.monotonic() < end:
                self._reap()
                time.sleep(0.1)
                alive = self._alive()
            for pid in alive:
                _signal(pid, signal.SIGKILL)
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            signal.signal(signal.SIGINT, old)

    def _record_tree(self) -> None:
        self.tree.refresh()
        for proc in self.procs.values():
            for pid in self.tree.below(proc.pid):
                if pid in self.tree.info:
                    self.seen.setdefault(pid, self.tree.info[pid][1])

    def _reap(self) -> None:
        for proc in self.procs.values():
            proc.poll()

    def _alive(self) -> list[int]:
        self._reap()
        return [pid for pid, start in self.seen.items() if _start_time(pid) == start and not _zombie(pid)]


def _start_time(pid: int) -> int | None:
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    try:
        return parse_stat(text)[1]
    except (ValueError, IndexError):
        return None


def _zombie(pid: int) -> bool:
    text = _read(f"/proc/{pid}/stat")
    return text is not None and ")" in text and text[text.rindex(")") + 2 :].startswith("Z")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _wait_all(procs: Iterable[subprocess.Popen[bytes]], seconds: float) -> None:
    end = time.monotonic() + seconds
    for proc in procs:
        try:
            proc.wait(timeout=max(0.01, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's choice); someone may still take it before we bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _venv_tool(name: str) -> str:
    """The console script `name` of the flwr installed beside this Python (the pinned one), not another on PATH."""
    here = Path(sys.executable).parent / name
    if not here.exists():
        raise BenchError(f"{here} not found: run this with the project's venv Python (. .venv/bin/activate)")
    return str(here)


# ---------------------------------------------------------------------------------------------------------------
# The two runtimes


@dataclass
class Result:
    """One runtime's run: round times (s) and peak memory (KiB) per role and per group of roles."""

    runtime: str
    round_s: list[float]
    roles: dict[str, int]
    groups: dict[str, int]
    wall_s: float
    notes: list[str] = field(default_factory=list)


def _base_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_HOME"] = str(home)
    # The SuperLink and SuperNodes start `flower-superexec`, `flwr-serverapp` and `flwr-clientapp` by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _client_role(role: str) -> bool:
    return role.startswith(("client-", "supernode-"))


def run_flower(args: argparse.Namespace, work: Path) -> Result:
    """The app on `flower-superlink` + N `flower-supernode` + `flwr run`, every process stopped at the end."""
    logs = work / "flower"
    logs.mkdir(parents=True)
    home = work / "flower-home"
    home.mkdir()
    peaks = Peaks(
        groups={
            "server": lambda r: r in ("superlink", "serverapp"),
            "clients": _client_role,
            "all": lambda r: True,
        }
    )
    fleet = Fleet(logs, _base_env(home), peaks)
    fleet.split = {"flwr-serverapp": "serverapp"}
    port = args.superlink_port or free_port()
    node_ports: dict[str, int] = {}
    while len(node_ports) < args.clients:
        candidate = free_port()
        if candidate != port and candidate not in node_ports.values():
            node_ports[f"supernode-{len(node_ports):02d}"] = candidate

    def roles() -> dict[str, int]:
        out = {}
        for name, proc in fleet.procs.items():
            if name == "superlink" or name.startswith("supernode-"):
                out[name] = proc.pid
        return out

    fleet.roles = roles
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    started = time.monotonic()
    try:
        fleet.start(
            "superlink",
            [
                _venv_tool("flower-superlink"),
                "--insecure",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            cwd=work,
        )
        for i, (name, node_port) in enumerate(node_ports.items()):
            # A Flower home of its own, as on its own machine: each installs the app it is sent.
            node_home = work / f"{name}-home"
            node_home.mkdir()
            fleet.start(
                name,
                [
                    _venv_tool("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(node_port),
                    "--node-config",
                    f"partition-id={i} num-partitions={args.clients}",
                ],
                cwd=work,
                env=_base_env(node_home),
            )
        _wait_for_log(fleet, "superlink", "Uvicorn running on", f"the Flower SuperLink (port {port})")
        overrides = (
            f"num-server-rounds={args.rounds} model-size-mb={float(args.model_mb)} "
            f"min-available-nodes={args.clients} round-timeout={float(args.round_timeout)}"
        )
        fleet.start(
            "flwr-run",
            [_venv_tool("flwr"), "run", str(APP), "bench", "--stream", "--run-config", overrides],
            cwd=work,
        )
        end = time.monotonic() + args.timeout
        registered_by = time.monotonic() + START_TIMEOUT
        run = fleet.procs["flwr-run"]
        while run.poll() is None:
            for name, proc in fleet.procs.items():
                if name != "flwr-run" and proc.poll() is not None:
                    what = "SuperLink" if name == "superlink" else f"{name} (Runtime API port {node_ports[name]})"
                    raise BenchError(
                        f"Flower's {what} exited with code {proc.returncode} during the run; its log:\n{fleet.tail(name)}"
                    )
            if registered_by and time.monotonic() > registered_by:
                missing = [
                    n for n in fleet.procs if n.startswith("supernode-") and "SuperNode ID" not in fleet.log_text(n)
                ]
                if missing:
                    raise BenchError(
                        f"Flower SuperNodes not connected to the SuperLink after {START_TIMEOUT:.0f} s: "
                        f"{', '.join(missing)}; {missing[0]}'s log:\n{fleet.tail(missing[0])}"
                    )
                registered_by = 0.0
            if time.monotonic() > end:
                raise BenchError(f"the Flower run did not finish within {args.timeout:.0f} s")
            time.sleep(0.2)
        wall = time.monotonic() - started
        output = fleet.log_text("flwr-run")
        times = round_times(parse_round_stamps(output))
        if run.returncode != 0 or len(times) < args.rounds:
            raise BenchError(
                f"the Flower run ended (flwr run exit {run.returncode}) after {len(times)} of {args.rounds} rounds; "
                f"its output:\n{fleet.tail('flwr-run', 20)}\nthe SuperLink's log:\n{fleet.tail('superlink')}"
            )
    finally:
        fleet.stop()
    return Result("flower", times, dict(peaks.role_peak), dict(peaks.group_peak), wall)


def _wait_for_log(fleet: Fleet, name: str, text: str, what: str) -> None:
    end = time.monotonic() + START_TIMEOUT
    proc = fleet.procs[name]
    while text not in fleet.log_text(name):
        if proc.poll() is not None:
            raise BenchError(
                f"{what} exited with code {proc.returncode} before it was ready; its log:\n{fleet.tail(name)}"
            )
        if time.monotonic() > end:
            raise BenchError(f"{what} was not ready within {START_TIMEOUT:.0f} s; its log:\n{fleet.tail(name)}")
        time.sleep(0.1)


def run_fedota(args: argparse.Namespace, work: Path) -> Result:
    """The app on `coordinator.local` (2 selectors, TLS), every process stopped at the end."""
    logs = work / "fedota"
    logs.mkdir(parents=True)
    data = work / "fedota-data"
    for i in range(args.clients):
        (data / f"c{i:02d}").mkdir(parents=True)
    out = work / "fedota-run"
    peaks = Peaks(
        groups={
            "server": lambda r: r == "coordinator",
            "selectors": lambda r: r.startswith("selector-"),
            "server+selectors": lambda r: r == "coordinator" or r.startswith("selector-"),
            "clients": _client_role,
            "all": lambda r: True,
        }
    )
    env = _base_env(work / "fedota-home")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    fleet = Fleet(logs, env, peaks)

    def roles() -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads((out / "pids.json").read_text()).items()}
        except (OSError, ValueError):
            return {}

    fleet.roles = roles
    started = time.monotonic()
    try:
        fleet.start(
            "local",
            [
                sys.executable,
                "-m",
                "coordinator.local",
                "--app",
                str(APP),
                "--data-dir",
                str(data),
                "--selectors",
                str(args.selectors),
                "--rounds",
                str(args.rounds),
                "--out",
                str(out),
                "--overselect",
                "1.0",
                "--round-timeout",
                str(float(args.round_timeout)),
                "--run-config",
                json.dumps(
                    {
                        "model-size-mb": float(args.model_mb),
                        "min-available-nodes": args.clients,
                        "round-timeout": float(args.round_timeout),
                    }
                ),
            ],
            cwd=REPO,
        )
        proc = fleet.procs["local"]
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the Fedota run did not finish within {args.timeout:.0f} s") from None
        wall = time.monotonic() - started
        output = fleet.log_text("local")
        times = round_times(parse_round_stamps(output))
        if proc.returncode != 0 or len(times) < args.rounds:
            raise BenchError(
                f"the Fedota run ended (coordinator.local exit {proc.returncode}) after {len(times)} of "
                f"{args.rounds} rounds; its output:\n{fleet.tail('local', 20)}\n(process logs in {out / 'logs'})"
            )
    finally:
        # coordinator.local stops its own processes on SIGINT; whatever is left is ended after it.
        fleet.stop(first={"local": signal.SIGINT})
    notes = [f"train replies: {_train_folding(out / 'logs' / 'coordinator.log')}"]
    return Result("fedota", times, dict(peaks.role_peak), dict(peaks.group_peak), wall, notes)


def _train_folding(log: Path) -> str:
    """The coordinator's decision for train rounds, as it logged it."""
    said = []
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        if "replies folded at the selectors" not in line and "replies sent individually" not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("type") == "train":
            how = "folded at the selectors" if "folded" in str(doc.get("msg", "")) else "sent individually"
            said.append(f"{how} ({doc.get('reason', '?')})")
    return "; ".join(dict.fromkeys(said)) or "not logged"


# ---------------------------------------------------------------------------------------------------------------
# Report


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


def _sec(s: float | None) -> str:
    return "-" if s is None else f"{s:.3f} s"


def _ratio(fedota: float | None, flower: float | None) -> str:
    if not fedota or flower is None:
        return "-"
    return f"{flower / fedota:.2f}x"


def _median_client(roles: Mapping[str, int]) -> int | None:
    values = [v for r, v in roles.items() if _client_role(r)]
    return int(statistics.median(values)) if values else None


def _max_client(roles: Mapping[str, int]) -> int | None:
    values = [v for r, v in roles.items() if _client_role(r)]
    return max(values) if values else None


def report_rows(fedota: Result | None, flower: Result | None) -> list[tuple[str, str, str, str]]:
    """The table: (what, Fedota, Flower, Flower / Fedota) for round times and peak memory per role."""
    rows: list[tuple[str, str, str, str]] = []

    def row(what: str, a: float | None, b: float | None, fmt: Callable[..., str]) -> None:
        rows.append((what, fmt(a), fmt(b), _ratio(a, b)))

    fd_round = steady(fedota.round_s) if fedota else None
    fl_round = steady(flower.round_s) if flower else None
    median = statistics.median
    row(
        "median round (from round 2)",
        median(fd_round) if fd_round else None,
        median(fl_round) if fl_round else None,
        _sec,
    )
    row(
        "p90 round (from round 2)",
        percentile(fd_round, 90) if fd_round else None,
        percentile(fl_round, 90) if fl_round else None,
        _sec,
    )
    fr = fedota.roles if fedota else {}
    fg = fedota.groups if fedota else {}
    lr = flower.roles if flower else {}
    lg = flower.groups if flower else {}
    row("server: coordinator | SuperLink + ServerApp", fg.get("server"), lg.get("server"), _mib)
    row("  Flower SuperLink (with its SuperExec)", None, lr.get("superlink"), _mib)
    row("  Flower ServerApp (flwr-serverapp)", None, lr.get("serverapp"), _mib)
    busiest_selector = max((v for r, v in fr.items() if r.startswith("selector-")), default=None)
    row("selectors, each (busiest)", busiest_selector, None, _mib)
    row("selectors, all", fg.get("selectors"), None, _mib)
    row("server + selectors | SuperLink + ServerApp", fg.get("server+selectors"), lg.get("server"), _mib)
    row("client, busiest: client | SuperNode + ClientApps", _max_client(fr), _max_client(lr), _mib)
    row("client, median", _median_client(fr), _median_client(lr), _mib)
    row("clients, all", fg.get("clients"), lg.get("clients"), _mib)
    row("all processes", fg.get("all"), lg.get("all"), _mib)
    return rows


def print_report(args: argparse.Namespace, fedota: Result | None, flower: Result | None) -> None:
    rows = report_rows(fedota, flower)
    widths = [max(len(r[i]) for r in [("", "Fedota", "Flower", "Flower/Fedota"), *rows]) for i in range(4)]
    header = ("", "Fedota", "Flower", "Flower/Fedota")
    print()
    print(
        f"{args.clients} clients, {args.rounds} rounds, {args.model_mb:g} MiB model; Fedota: {args.selectors} "
        "selectors, TLS; Flower: insecure. Memory: peak RSS summed over each role's processes."
    )
    print("  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header)))
    for r in rows:
        print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    for res in (fedota, flower):
        if res is None:
            continue
        rounds = " ".join(f"{s:.3f}" for s in res.round_s)
        print(f"{res.runtime}: rounds (s) {rounds}; wall {res.wall_s:.0f} s")
        for note in res.notes:
            print(f"{res.runtime}: {note}")


# ---------------------------------------------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-mb", type=float, default=1.0, help="model size in MiB (one float32 array; default 1)")
    p.add_argument("--clients", type=int, default=10, help="clients / SuperNodes (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    p.add_argument("--runtime", choices=["flower", "fedota", "both"], default="both")
    p.add_argument("--selectors", type=int, default=2, help="Fedota's selectors (default 2)")
    p.add_argument("--superlink-port", type=int, default=0, help="the SuperLink's HTTP port (default: a free one)")
    p.add_argument("--round-timeout", type=float, default=1800.0, help="FedAvg's per-round timeout (s)")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up on a runtime's run after this (s)")
    p.add_argument("--keep", type=Path, default=None, help="keep every process's log in this folder")
    args = p.parse_args(argv)
    if args.clients < 1 or args.rounds < 1 or args.model_mb <= 0:
        p.error("--clients and --rounds must be at least 1, --model-mb above 0")
    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="fedota-flower-native-")) if args.keep is None else args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    fedota = flower = None
    failed = True
    try:
        if args.runtime in ("fedota", "both"):
            print(f"Fedota: {args.clients} clients, {args.selectors} selectors, TLS ...", flush=True)
            fedota = run_fedota(args, work)
        if args.runtime in ("flower", "both"):
            print(f"Flower: SuperLink + {args.clients} SuperNodes, insecure ...", flush=True)
            flower = run_flower(args, work)
        print_report(args, fedota, flower)
        failed = False
        return 0
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process this bench started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep is None and not failed:
            shutil.rmtree(work, ignore_errors=True)
        elif failed:
            print(f"logs: {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
