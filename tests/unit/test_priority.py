"""A service in its own session gets the session's niceness, where the kernel groups sessions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedota_common.priority import nice_session

AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled").exists()


def test_the_new_sessions_group_gets_the_niceness() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert nice_session(proc.pid, 9) is AUTOGROUP
        if AUTOGROUP:
            assert Path(f"/proc/{proc.pid}/autogroup").read_text().split()[-2:] == ["nice", "9"]
            # This process's own group is untouched.
            assert Path("/proc/self/autogroup").read_text() != Path(f"/proc/{proc.pid}/autogroup").read_text()
    finally:
        proc.kill()
        proc.wait()


def test_nothing_is_set_for_niceness_zero_or_a_process_that_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    assert nice_session(proc.pid, 10) is False
    assert nice_session(1, 0) is False
