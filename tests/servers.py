"""Real servers that tests start as processes: run one until it answers, stop it with its children."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def serving(
    argv: Sequence[str],
    *,
    ready_url: str,
    log: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` in a session of its own until `ready_url` answers 200; stop it and its children after.

    A server that exits first, or does not answer within `timeout`, fails the test with the end of `log`.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert proc.poll() is None, f"{argv[0]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, (
                    f"{ready_url} did not answer within {timeout:.0f} s:\n" + (log.read_text()[-3000:])
                )
                time.sleep(0.3)
            yield proc
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
