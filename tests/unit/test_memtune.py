"""A service process keeps its start-up objects out of garbage collections, and collects the rest."""

from __future__ import annotations

import subprocess
import sys


def test_frozen_start_up_objects_are_left_out_of_collections() -> None:
    # In a fresh interpreter, so this test run's own objects stay collectable.
    code = (
        "import gc; from fedota_common import memtune; import numpy, flwr.app; "
        "before = len(gc.get_objects()); memtune.install(); "
        "print(gc.get_freeze_count() >= before // 2, len(gc.get_objects()) < before // 10)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_objects_made_after_freezing_are_still_collected() -> None:
    code = (
        "import gc, weakref; from fedota_common import memtune; memtune.install()\n"
        "class C:\n    pass\n"
        "c = C(); c.me = c; r = weakref.ref(c); del c; gc.collect(); print(r() is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
