"""SIGTERM while the coordinator's main thread is inside a selector's outbox.

The signal handler runs in the main thread between two of its instructions. When that
thread was pushing a round's instructions (`link.outbox.put`, which holds the queue's
non-reentrant lock), a handler that told the selectors itself put the end of the run in
the same queue and waited forever for its own lock: the coordinator ignored SIGTERM for
good (seen in tests/e2e/test_run_end.py under load). The handler now hands the telling to
a thread and the main thread leaves once the selectors were told.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator.hub import Hub
from coordinator.main import _stop_on_signal


class _Stopped:
    def wait(self) -> None:
        return None


class _Server:
    def __init__(self) -> None:
        self.stopped = threading.Event()

    def stop(self, grace: float) -> _Stopped:
        self.stopped.set()
        return _Stopped()


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.timeout(30)
def test_sigterm_while_the_main_thread_holds_an_outbox_lock_still_ends_the_run(restore_signals: None) -> None:
    hub = Hub()
    link = hub.attach("selector-1", [])
    while not link.outbox.empty():
        link.outbox.get_nowait()
    server: Any = _Server()
    _stop_on_signal(hub, server)
    with pytest.raises(SystemExit) as ended:
        # As inside `outbox.put` when the signal comes: the queue's own lock is held.
        with link.outbox.mutex:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)  # the handler ran here; it must not have blocked on this lock
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.05)  # the telling thread ends the process from this thread
    assert ended.value.code == 128 + signal.SIGTERM
    assert server.stopped.is_set()
    told = link.outbox.get_nowait()
    assert told is not None and told.finished.status and "stopped (SIGTERM)" in told.finished.reason
