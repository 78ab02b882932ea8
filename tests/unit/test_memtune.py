"""A service process keeps its start-up objects out of garbage collections, and collects the rest."""

from __future__ import annotations

import os
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


# Four 1.5 MiB buffers made and freed 50 times, as a round's chunk buffers are: with glibc's
# defaults each is mapped, faulted in page by page and unmapped (or trimmed) again.
_CHURN = (
    "import resource\n"
    "def faults():\n    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "before = faults()\n"
    "for _ in range(50):\n    held = [b'\\x01' * (3 << 19) for _ in range(4)]\n    del held\n"
    "print(faults() - before)"
)


def test_chunk_sized_buffers_are_reused_rather_than_faulted_in_again() -> None:
    (default,) = _in_a_fresh_interpreter(_CHURN)
    tuned, faults = _in_a_fresh_interpreter("print(memtune.tune_malloc())\n" + _CHURN)
    assert tuned == "True"
    # 50 x 6 MiB of pages is about 77,000 faults; reused buffers fault in once.
    assert int(faults) * 10 < int(default), (faults, default)


def test_the_operators_own_malloc_tunables_are_kept() -> None:
    run = subprocess.run(
        [sys.executable, "-c", "from fedota_common import memtune; print(memtune.tune_malloc())"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"},
    )
    assert run.stdout.split() == ["False"]
