"""The load generator's own logic: credentials the selectors admit, placement, per-client figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from coordinator.roster import parse_roster
from selector.auth import RosterAuthenticator
from selector.core import participant_of


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "load_clients.py"
    spec = importlib.util.spec_from_file_location("load_clients", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_clients"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


load_clients = _load()


def test_credentials_are_distinct_participant_credentials() -> None:
    creds = load_clients.make_credentials(5, first_id=10)
    assert len(set(creds)) == 5
    assert [participant_of(c) for c in creds] == ["10", "11", "12", "13", "14"]


def test_the_selectors_admit_exactly_the_generated_credentials() -> None:
    creds = load_clients.make_credentials(3)
    doc = load_clients.roster_doc(creds)
    assert all(c.split("_", 2)[2] not in str(doc) for c in creds), "the list must carry hashes, never secrets"
    auth = RosterAuthenticator()
    auth.update(parse_roster(doc))
    assert [auth.check(c) for c in creds] == ["1", "2", "3"]
    assert auth.check(creds[0][:-1] + ("A" if creds[0][-1] != "A" else "B")) is None


def test_clients_are_spread_round_robin_over_the_selectors() -> None:
    assert load_clients.assign(5, ["a", "b"]) == ["a", "b", "a", "b", "a"]
    with pytest.raises(ValueError):
        load_clients.assign(1, [])


def test_memory_per_client() -> None:
    assert load_clients.per_client_kib(1000, 3000, 100) == 20.0
    assert load_clients.per_client_kib(1000, 3000, 0) == 0.0
    assert load_clients.rss_kib() > 0
