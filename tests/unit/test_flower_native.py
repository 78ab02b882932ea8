"""The side-by-side bench's helpers (bench/flower_native.py): round stamps, /proc parsing, peaks, clean-up."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flower_native", REPO / "bench" / "flower_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["flower_native"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fn = _load()


def test_round_stamps_are_found_in_either_runtimes_output() -> None:
    # Flower streams the ServerApp's prints among its own log lines (with colour codes); Fedota's coordinator
    # prints them between its round lines.
    text = "\n".join(
        [
            "\x1b[92mINFO \x1b[0m:      [ROUND 1/3]",
            'BENCH-ROUND {"round": 0, "t": 100.0}',
            'BENCH-ROUND {"round": 1, "t": 100.5}',
            "round 1/3 | clients 2 | train_loss 0.6667 | eval_acc - | 0.45 s",
            'BENCH-ROUND {"round": 2, "t": 101.25}',
            "BENCH-ROUND {not json",
            'BENCH-ROUND {"round": 4, "t": 110.0}',
        ]
    )
    stamps = fn.parse_round_stamps(text)
    assert stamps == {0: 100.0, 1: 100.5, 2: 101.25, 4: 110.0}
    # Round 3 is missing, so round 4's gap is not a round time.
    assert fn.round_times(stamps) == [0.5, 0.75]


def test_round_one_is_left_out_of_the_steady_state_and_p90_interpolates() -> None:
    assert fn.steady([5.0, 1.0, 2.0]) == [1.0, 2.0]
    assert fn.steady([5.0]) == [5.0]
    values = [float(v) for v in range(1, 11)]
    assert fn.percentile(values, 50) == pytest.approx(5.5)
    assert fn.percentile(values, 90) == pytest.approx(9.1)
    assert fn.percentile([3.0], 90) == 3.0


def test_proc_files_are_parsed_even_with_odd_command_names() -> None:
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  512000 kB\nVmRSS:\t  204800 kB\nThreads:\t12\n"
    assert fn.parse_status(status) == (204800, 512000)
    assert fn.parse_status("Name:\tzombie\nState:\tZ (zombie)\n") == (0, 0)
    # The command name may hold spaces and parentheses.
    stat = "4242 (my (odd) name) S 4200 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 987654 0 0"
    assert fn.parse_stat(stat) == (4200, 987654)
    assert fn.parse_stat(Path("/proc/self/stat").read_text())[0] == os.getppid()


def test_a_role_is_a_process_and_everything_below_it() -> None:
    parents = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    children = fn.children_of(parents)
    assert sorted(fn.descendants(children, 10)) == [10, 11, 12, 13]
    assert sorted(fn.descendants(children, 20)) == [20, 21]
    assert fn.descendants(children, 99) == [99]


def test_peaks_sum_a_roles_processes_at_the_same_instant() -> None:
    peaks = fn.Peaks(groups={"nodes": lambda r: r.startswith("node-"), "all": lambda r: True})
    # node-0: a SuperNode and the ClientApp it started; node-1 alone. Sizes in KiB.
    peaks.add({"node-0": [(1, 100, 120), (2, 300, 300)], "node-1": [(3, 100, 100)], "server": [(4, 50, 50)]})
    peaks.add({"node-0": [(1, 110, 120)], "node-1": [(3, 400, 400)], "server": [(4, 60, 900)]})
    assert peaks.role_peak["node-0"] == 400  # 100 + 300 in one sample
    assert peaks.role_peak["node-1"] == 400
    # A one-process role's VmHWM is its peak even when no sample caught it.
    assert peaks.role_peak["server"] == 900
    # The group's peak is its highest sum in one sample (500, then 510), not the sum of its roles' peaks (800).
    assert peaks.group_peak["nodes"] == 510
    assert peaks.group_peak["all"] == 900


def _result(runtime: str, rounds: list[float], roles: dict[str, int], groups: dict[str, int]) -> object:
    return fn.Result(runtime, rounds, roles, groups, wall_s=1.0)


def test_the_table_gives_both_figures_and_their_ratio() -> None:
    fedota = _result(
        "fedota",
        [2.0, 0.1, 0.2, 0.1],
        {"coordinator": 300 * 1024, "selector-1": 100 * 1024, "client-c00": 80 * 1024, "client-c01": 120 * 1024},
        {"server": 300 * 1024, "selectors": 100 * 1024, "all": 600 * 1024},
    )
    flower = _result(
        "flower",
        [12.0, 9.0, 10.0, 9.0],
        {"superlink": 250 * 1024, "serverapp": 150 * 1024, "supernode-00": 400 * 1024, "supernode-01": 480 * 1024},
        {"server": 400 * 1024, "all": 1300 * 1024},
    )
    rows = {what: (a, b, ratio) for what, a, b, ratio in fn.report_rows(fedota, flower)}
    assert rows["median round (from round 2)"] == ("0.100 s", "9.000 s", "90.00x")
    assert rows["server: coordinator | SuperLink + ServerApp"] == ("300 MiB", "400 MiB", "1.33x")
    assert rows["client, busiest: client | SuperNode + ClientApps"] == ("120 MiB", "480 MiB", "4.00x")
    assert rows["client, median"] == ("100 MiB", "440 MiB", "4.40x")
    assert rows["  Flower ServerApp (flwr-serverapp)"] == ("-", "150 MiB", "-")
    # One runtime alone: its figures, no ratio.
    alone = {what: (a, b, ratio) for what, a, b, ratio in fn.report_rows(None, flower)}
    assert alone["median round (from round 2)"] == ("-", "9.000 s", "-")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_ends_what_a_process_started_even_after_it_exited(tmp_path: Path) -> None:
    peaks = fn.Peaks(groups={"all": lambda r: True})
    fleet = fn.Fleet(tmp_path, dict(os.environ), peaks)
    # The child starts a grandchild in a session of its own and exits: the grandchild is orphaned, as a
    # SuperExec is when its SuperNode dies first.
    fleet.start("parent", ["sh", "-c", "setsid sleep 60 & echo $! > grandchild.pid; sleep 1"], cwd=tmp_path)
    fleet.roles = lambda: {"parent": fleet.procs["parent"].pid}
    end = time.monotonic() + 10
    while not (tmp_path / "grandchild.pid").exists() and time.monotonic() < end:
        time.sleep(0.05)
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    time.sleep(3 * fn.SAMPLE_SECONDS)
    fleet.procs["parent"].wait(timeout=10)
    assert _alive(grandchild)
    fleet.stop()
    end = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert peaks.role_peak["parent"] > 0


def test_a_pid_reused_by_someone_else_is_never_signalled(tmp_path: Path) -> None:
    fleet = fn.Fleet(tmp_path, dict(os.environ), fn.Peaks())
    other = subprocess.Popen(["sleep", "30"])
    try:
        # Recorded with another start time: a process of ours that had this pid before.
        fleet.seen[other.pid] = fn._start_time(other.pid) - 1
        fleet.stop()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
