"""The spawn bench's figures: the percentile it reports and how it counts services per node."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "spawn.py"
    spec = importlib.util.spec_from_file_location("bench_spawn", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_spawn"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_p95_of_twenty_problems_is_the_nineteenth_slowest_not_an_interpolation() -> None:
    seconds = [float(s) for s in range(20, 0, -1)]  # 20 problems, given in any order
    assert bench.percentile(seconds, 95) == 19.0
    assert bench.percentile(seconds, 50) == 10.0
    assert bench.percentile(seconds, 100) == 20.0


def test_percentile_of_one_value_is_that_value() -> None:
    assert bench.percentile([4.2], 95) == 4.2


def test_percentile_refuses_nothing_and_a_bad_rank() -> None:
    with pytest.raises(ValueError, match="no values"):
        bench.percentile([], 95)
    with pytest.raises(ValueError, match="not in"):
        bench.percentile([1.0], 0)


def test_summary_names_median_p95_and_count() -> None:
    line = bench.summary([1.0, 2.0, 3.0, 10.0])
    assert line == "median 2.50 s, p95 10.00 s, min 1.00 s, max 10.00 s (n=4)"
    assert bench.summary([]) == "none"


def test_spread_counts_roles_per_node_and_marks_the_manager() -> None:
    placed = {
        "fdbenchsw-p1-coordinator": "vm",
        "fdbenchsw-p1-selector-0": "fdbenchsw-node-0",
        "fdbenchsw-p2-coordinator": "vm",
        "fdbenchsw-p2-selector-0": "vm",
        "fdbenchsw-p3-selector-0": "fdbenchsw-node-0",
    }
    assert bench.spread(placed, "vm") == {
        "vm (manager)": Counter(coordinator=2, selector=1),
        "fdbenchsw-node-0": Counter(selector=2),
    }
