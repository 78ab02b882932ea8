"""The dashboard's charts (plotly.js from the plotly package) in real headless Chromium.

A long finished run that was resumed, compared with an earlier run, and a live run whose
chart gains a round while keeping the zoom a user set. Saves test-artifacts/
dashboard-charts-long-run.png, dashboard-charts-compare.png and dashboard-charts-live.png.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client

from webserver.problems.models import Run

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [pytest.mark.browser]


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context
    context.close()


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "ts": time.time(), "kind": kind, **data}


def _round(number: int, attempt: int = 1, *, offset: float = 0.0) -> dict[str, Any]:
    """A round whose loss falls and accuracy rises towards 0.98, with a little noise."""
    wobble = 0.004 * math.sin(number * 1.7)
    return _event(
        "round_finished",
        round=number,
        attempt=attempt,
        seconds=2.0,
        failures=0,
        participants=[{"node_id": 7, "participant": "", "site": "site 7"}],
        train_loss=0.05 + offset + 0.9 / math.sqrt(number),
        eval_loss=0.08 + offset + 1.0 / math.sqrt(number) + wobble,
        eval_acc=min(1.0, 0.98 - offset - 0.4 / number + wobble),
    )


def _resumed_run(total: int, resumed_at: int) -> list[dict[str, Any]]:
    """A run whose coordinator was killed during round `resumed_at` and resumed as attempt 2."""
    events = [_event("run_started", total_rounds=total)]
    events += [_round(n) for n in range(1, resumed_at)]
    events += [_event("run_started", total_rounds=total)]
    events += [_round(n, attempt=2) for n in range(resumed_at, total + 1)]
    return events


def _report(run: Run, token: str, events: list[dict[str, Any]]) -> None:
    resp = Client().post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps(events),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert resp.status_code == 200, resp.content


def _run(problem: Any, number: int, events: list[dict[str, Any]]) -> Run:
    token = f"charts-browser-token-{number}"
    run = Run.objects.create(
        problem=problem,
        number=number,
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(token.encode()).hexdigest(),
    )
    _report(run, token, events)
    return run


def _open(live_server: Any, page: Any, owner: Any, problem: Any) -> Any:
    client = Client()
    client.force_login(owner)
    host = urlsplit(live_server.url).hostname
    page.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "domain": host, "path": "/"}]
    )  # fmt: skip
    tab = page.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    tab.goto(f"{live_server.url}/monitoring/problems/{problem.pk}/")
    tab.errors = errors
    return tab


def plotted(tab: Any, chart: str) -> dict[str, Any]:
    """What plotly drew: the series (as plotly resolved them), the legend, axes, markers."""
    return dict(
        tab.evaluate(
            """(id) => {
              const gd = document.getElementById(id);
              const full = gd._fullLayout;
              return {
                series: gd._fullData.map((t) => ({
                  name: t.name, color: t.line.color, dash: t.line.dash, visible: t.visible,
                  opacity: t.opacity, xs: Array.from(t.x), ys: Array.from(t.y),
                })),
                // Entries, and the title of each run's group when runs are compared.
                legend: [...gd.querySelectorAll(".legend .traces .legendtext")].map((t) => t.textContent),
                legend_swatches: [...gd.querySelectorAll(".legend .traces .legendlines path")]
                  .map((p) => getComputedStyle(p).stroke),
                y_range: full.yaxis.range.slice(),
                y_autorange: full.yaxis.autorange,
                x_range: full.xaxis.range.slice(),
                y_title: full.yaxis.title.text,
                // Labels placed at a round: the resume markers (a chart without data says so in the middle).
                markers: (full.annotations || []).filter((a) => a.xref === "x").map((a) => a.text),
                marker_xs: (full.shapes || []).map((s) => s.x0),
                notes: (full.annotations || []).filter((a) => a.xref !== "x").map((a) => a.text),
              };
            }""",
            chart,
        )
    )


def wait_for_points(tab: Any, chart: str, count: int) -> None:
    tab.wait_for_function(
        "([id, n]) => { const gd = document.getElementById(id); "
        "return gd && gd._fullData && gd._fullData.length && gd._fullData[0].x.length === n; }",
        arg=[chart, count],
    )


def _drag(tab: Any, chart: str, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag across the plot area, between fractions of its width and height."""
    box = tab.locator(f"#{chart} .nsewdrag").first.bounding_box()
    tab.mouse.move(box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1])
    tab.mouse.down()
    tab.mouse.move(box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1], steps=8)
    tab.mouse.up()


@pytest.mark.django_db(transaction=True)
def test_a_long_resumed_run_is_charted_with_a_legend_fixed_accuracy_axis_and_a_resume_marker(
    live_server: Any, page: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    finished = _event("run_finished", ok=True, detail="", dropped_events=0)
    _run(
        problem,
        1,
        [_event("run_started", total_rounds=150)] + [_round(n, offset=0.05) for n in range(1, 151)] + [finished],
    )
    run = _run(problem, 2, _resumed_run(200, 120) + [{**finished, "event_id": uuid.uuid4().hex}])
    run.refresh_from_db()
    assert run.status == "finished" and run.current_round == 200

    tab = _open(live_server, page, users["owner"], problem)
    wait_for_points(tab, "chart-loss", 200)
    wait_for_points(tab, "chart-acc", 200)
    loss, acc = plotted(tab, "chart-loss"), plotted(tab, "chart-acc")

    # Each series its own colour, named in the legend; no colour is used twice on the page.
    assert [s["name"] for s in loss["series"]] == ["train loss", "eval loss"] == loss["legend"]
    assert [s["name"] for s in acc["series"]] == ["eval accuracy"] == acc["legend"]
    colours = [s["color"] for s in loss["series"] + acc["series"]]
    assert len(set(colours)) == 3
    assert len(set(loss["legend_swatches"])) == 2
    # Resumed at round 120, the run is one curve of 200 rounds.
    assert loss["series"][0]["xs"] == list(range(1, 201))

    # Accuracy lives in [0, 1]: the axis shows all of it, so small wobbles near 0.98 stay small.
    assert acc["y_range"] == [0, 1] and acc["y_title"] == "accuracy"
    # Loss fits the data.
    losses = [y for s in loss["series"] for y in s["ys"]]
    assert loss["y_autorange"] is True
    assert loss["y_range"][0] <= min(losses) and loss["y_range"][1] >= max(losses) and loss["y_range"][1] < 2

    # Where the coordinator was restarted and resumed: a line at round 120 on both charts.
    for chart in (loss, acc):
        assert chart["markers"] == ["resumed (attempt 2)"] and chart["marker_xs"] == [120]

    # Hovering shows the round and every series' value.
    box = tab.locator("#chart-loss .nsewdrag").first.bounding_box()
    tab.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tab.wait_for_selector("#chart-loss .hoverlayer .legend")
    hover = tab.locator("#chart-loss .hoverlayer").text_content() or ""
    assert "round " in hover and "train loss" in hover and "eval loss" in hover, hover

    ARTIFACTS.mkdir(exist_ok=True)
    tab.mouse.move(0, 0)
    tab.locator(".charts").screenshot(path=str(ARTIFACTS / "dashboard-charts-long-run.png"))

    # A click on a legend entry hides that series alone, and shows it again.
    tab.locator("#chart-loss .legend .traces").nth(1).click()
    tab.wait_for_function("document.getElementById('chart-loss')._fullData[1].visible === 'legendonly'")
    assert [s["visible"] for s in plotted(tab, "chart-loss")["series"]] == [True, "legendonly"]
    tab.locator("#chart-loss .legend .traces").nth(1).click()
    tab.wait_for_function("document.getElementById('chart-loss')._fullData[1].visible === true")

    # Overlaying run 1: its series join each chart, each in a colour of its own and dashed.
    tab.locator("#compare-runs input[value='1']").check()
    tab.wait_for_function("document.getElementById('chart-loss')._fullData.length === 4")
    loss, acc = plotted(tab, "chart-loss"), plotted(tab, "chart-acc")
    assert [s["name"] for s in loss["series"]] == [
        "run 2 train loss",
        "run 2 eval loss",
        "run 1 train loss",
        "run 1 eval loss",
    ]
    assert [s["name"] for s in acc["series"]] == ["run 2 eval accuracy", "run 1 eval accuracy"]
    colours = [s["color"] for s in loss["series"] + acc["series"]]
    assert len(set(colours)) == 6
    assert [s["dash"] for s in acc["series"]] == ["solid", "dash"]
    assert len(acc["series"][1]["xs"]) == 150
    # The legend groups each run's series under its number.
    assert loss["legend"] == [
        "run 2 (shown)",
        "run 2 train loss",
        "run 2 eval loss",
        "run 1",
        "run 1 train loss",
        "run 1 eval loss",
    ]
    assert acc["y_range"] == [0, 1]
    tab.locator(".charts").screenshot(path=str(ARTIFACTS / "dashboard-charts-compare.png"))
    assert tab.errors == []


@pytest.mark.django_db(transaction=True)
def test_a_live_run_gains_a_round_and_keeps_the_users_zoom(
    live_server: Any, page: Any, users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    token = "charts-browser-token-1"
    run = _run(problem, 1, [_event("run_started", total_rounds=50)] + [_round(n) for n in range(1, 21)])
    tab = _open(live_server, page, users["owner"], problem)
    wait_for_points(tab, "chart-acc", 20)
    wait_for_points(tab, "chart-loss", 20)

    # The user zooms into the accuracy chart (a box around the later rounds) and into the loss chart's rounds.
    _drag(tab, "chart-acc", (0.4, 0.02), (0.95, 0.3))
    _drag(tab, "chart-loss", (0.3, 0.5), (0.7, 0.5))
    tab.wait_for_function("document.getElementById('chart-acc')._fullLayout.yaxis.range[0] > 0.5")
    acc_zoom = plotted(tab, "chart-acc")
    loss_zoom = plotted(tab, "chart-loss")
    assert acc_zoom["y_range"][0] > 0.5 and acc_zoom["y_range"][1] <= 1.0

    _report(run, token, [_round(21)])
    wait_for_points(tab, "chart-acc", 21)
    wait_for_points(tab, "chart-loss", 21)
    tab.wait_for_selector("#rounds-body tr[data-round='21']")
    acc_after, loss_after = plotted(tab, "chart-acc"), plotted(tab, "chart-loss")
    assert acc_after["series"][0]["xs"][-1] == 21
    # The redraw kept both zooms.
    assert acc_after["y_range"] == acc_zoom["y_range"] and acc_after["x_range"] == acc_zoom["x_range"]
    assert loss_after["x_range"] == loss_zoom["x_range"]
    ARTIFACTS.mkdir(exist_ok=True)
    tab.locator("#dashboard").screenshot(path=str(ARTIFACTS / "dashboard-charts-live.png"))

    # A double-click goes back to the whole of [0, 1].
    box = tab.locator("#chart-acc .nsewdrag").first.bounding_box()
    tab.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tab.wait_for_function("document.getElementById('chart-acc')._fullLayout.yaxis.range[0] === 0")
    assert plotted(tab, "chart-acc")["y_range"] == [0, 1]
    assert tab.errors == []
