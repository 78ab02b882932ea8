"""deploy/grafana/fedota.json: a Grafana dashboard model whose every query names a metric Fedota exports.

Grafana cannot run here; the checks are what an import needs (a dashboard model with
unique panel ids, every query on the board's Prometheus data source) and what a user would
notice on it (a panel that stays empty because its metric was renamed, a metric no panel
shows).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fedota_common.metrics import CoordinatorMetrics, SelectorMetrics

BOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "fedota.json"
# A PromQL name that is a metric's: ours, and the process metrics every service exports.
METRIC = re.compile(r"\b((?:fedota|process)_[a-zA-Z0-9_]+)\b")


def _board() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(BOARD.read_text())
    return board


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exported() -> tuple[set[str], set[str]]:
    """(sample names a scrape shows, metric family names) of the services and the website."""
    pytest.importorskip("django")
    from prometheus_client import CollectorRegistry

    from webserver import metrics as web

    samples: set[str] = set()
    families: set[str] = set()
    web_registry = CollectorRegistry()
    web_registry.register(web.HTTP_SECONDS)
    web_registry.register(web.CELERY_TASKS)
    web.HTTP_SECONDS.labels("GET", "home", "2xx")
    web.CELERY_TASKS.labels("problems.publish", "success")
    for registry in (CoordinatorMetrics().registry, SelectorMetrics().registry, web_registry):
        for family in registry.collect():
            families.add(family.name)
            samples.update(s.name for s in family.samples)
    return samples, families


def test_the_board_is_a_grafana_dashboard_model() -> None:
    board = _board()
    assert board["title"] and board["uid"] and isinstance(board["schemaVersion"], int)
    panels = _panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] == "timeseries" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["refId"] and target["expr"].strip(), panel["title"]


def test_every_query_names_an_exported_metric_and_every_metric_has_a_panel() -> None:
    samples, families = _exported()
    shown: set[str] = set()
    for panel in _panels(_board()):
        for target in panel.get("targets", []):
            # Label values (in quotes) are not metric names.
            expr = re.sub(r'"[^"]*"', '""', target["expr"])
            names = set(METRIC.findall(expr))
            assert names, f"{panel['title']}: {target['expr']} names no Fedota metric"
            unknown = names - samples
            assert not unknown, f"{panel['title']}: {sorted(unknown)} is not exported"
            shown.update(names)
    missing = {f for f in families if f.startswith("fedota_") and not any(n.startswith(f) for n in shown)}
    assert not missing, f"no panel shows {sorted(missing)}"
