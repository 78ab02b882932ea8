"""A service process keeps its start-up objects out of garbage collections, and collects the rest."""

from __future__ import annotations

import subprocess
import sys


def _in_a_fresh_interpreter(code: str) -> list[str]:
    """What `code` prints, run where this test run's own objects are not in the way."""
    run = subprocess.run(
        [sys.executable, "-c", "from fedota_common import memtune\n" + code], capture_output=True, text=True, check=True
    )
    return run.stdout.split()


def test_frozen_start_up_objects_are_left_out_of_collections() -> None:
    code = (
        "import gc, numpy, flwr.app\n"
        "before = len(gc.get_objects()); memtune.install()\n"
        "print(gc.get_freeze_count() >= before // 2, len(gc.get_objects()) < before // 10)"
    )
    assert _in_a_fresh_interpreter(code) == ["True", "True"]


def test_objects_made_after_freezing_are_still_collected() -> None:
    code = (
        "import gc, weakref; memtune.install()\n"
        "class C:\n    pass\n"
        "c = C(); c.me = c; r = weakref.ref(c); del c; gc.collect(); print(r() is None)"
    )
    assert _in_a_fresh_interpreter(code) == ["True"]
