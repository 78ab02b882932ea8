"""`ast.parse` is entered by one thread at a time once the guard is installed."""

from __future__ import annotations

import ast
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fedota_common import astlock


@pytest.fixture
def counted_parse() -> Iterator[dict[str, int]]:
    """`ast.parse` replaced by a slow one that counts the threads inside it; restored after."""
    original = ast.parse
    seen = {"inside": 0, "most": 0}
    count = threading.Lock()

    def slow(*args: Any, **kwargs: Any) -> Any:
        with count:
            seen["inside"] += 1
            seen["most"] = max(seen["most"], seen["inside"])
        time.sleep(0.002)  # long enough for the other threads to try to come in
        try:
            return original(*args, **kwargs)
        finally:
            with count:
                seen["inside"] -= 1

    ast.parse = slow  # type: ignore[assignment]
    try:
        yield seen
    finally:
        ast.parse = original  # type: ignore[assignment]


def _literal_evals_in_threads() -> list[Any]:
    results: list[Any] = []

    def work() -> None:
        results.extend(ast.literal_eval("{'descr': '<f4', 'shape': (3, 4)}") for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_without_the_guard_threads_parse_at_once(counted_parse: dict[str, int]) -> None:
    """The control: the counting parse does see overlapping threads when nothing serialises them."""
    _literal_evals_in_threads()
    assert counted_parse["most"] > 1


def test_with_the_guard_parses_never_overlap_and_results_are_unchanged(counted_parse: dict[str, int]) -> None:
    astlock.install()  # wraps the counting parse now in place
    results = _literal_evals_in_threads()
    assert counted_parse["most"] == 1, f"{counted_parse['most']} threads were inside ast.parse at once"
    assert results == [{"descr": "<f4", "shape": (3, 4)}] * 80


def test_installing_twice_wraps_once_and_numpy_headers_still_read(counted_parse: dict[str, int]) -> None:
    astlock.install()
    once = ast.parse
    astlock.install()
    assert ast.parse is once
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.float32).reshape(2, 3))
    buf.seek(0)
    assert np.load(buf).shape == (2, 3)
