"""Pages a new user found cramped, measured in real headless Chromium (issue 19): the setter's
table of requests to join keeps names and dates on one line and scrolls inside its card, the
data holder's `docker run` box takes the card's width, and the contract editor's type selects
show "string" whole. Screenshots go to test-artifacts/ (participation-*.png, contract-editor.png)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.test import Client

from webserver.participation import services

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def problem(users: dict[str, Any], make_problem: Callable[..., Any]) -> Any:
    """A published problem with one pending request and one approved site (the `holder`)."""
    problem = make_problem(users["owner"])
    services.participant_request(
        problem=problem,
        user=users["participant"],
        site_name="General Hospital of Northumberland",
        contact_email="research-data@general-hospital.example.org",
        message="We hold 2,000 patient records from 2019 to 2025.",
    )
    approved = services.participant_request(
        problem=problem, user=users["holder"], site_name="St Elsewhere", contact_email="data@st-elsewhere.example"
    )
    services.participant_approve(participant=approved, by=users["owner"])
    return problem


@pytest.fixture
def open_as(live_server: Any, browser: Any) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []

    def open_page(user: Any, path: str, width: int = 1280) -> Any:
        client = Client()
        client.force_login(user)
        context = browser.new_context(viewport={"width": width, "height": 900})
        contexts.append(context)
        context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
              "domain": urlsplit(live_server.url).hostname, "path": "/"}]
        )  # fmt: skip
        tab = context.new_page()
        tab.goto(f"{live_server.url}{path}")
        return tab

    yield open_page
    for context in contexts:
        context.close()


def _screenshot(tab: Any, name: str, selector: str | None = None) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    target = tab.locator(selector) if selector else tab
    target.screenshot(path=str(ARTIFACTS / name))


# Each td.nowrap of the table: its white-space, and on how many lines its text lies.
_CELL_LINES = """(table) => [...table.querySelectorAll("td.nowrap")].map((td) => {
  const range = document.createRange();
  range.selectNodeContents(td);
  const tops = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
  return {text: td.innerText.trim(), whiteSpace: getComputedStyle(td).whiteSpace, lines: tops.size};
})"""


@pytest.mark.parametrize("width", [1280, 760])
def test_the_requests_table_keeps_names_and_dates_whole_and_scrolls_inside_its_card(
    open_as: Callable[..., Any], users: dict[str, Any], problem: Any, width: int
) -> None:
    tab = open_as(users["owner"], f"/problems/{problem.pk}/", width)
    table = tab.locator("#participation table.participants")
    cells = table.evaluate(_CELL_LINES)
    texts = [c["text"] for c in cells]
    assert "General Hospital of Northumberland" in texts and "research-data@general-hospital.example.org" in texts
    assert sum(1 for t in texts if t.startswith("20") and ":" in t) == 3  # requested x2, decided x1
    assert all(c["whiteSpace"] == "nowrap" and c["lines"] == 1 for c in cells), cells
    header_lines = table.evaluate("(t) => [...t.querySelectorAll('th')].map((th) => th.getBoundingClientRect().height)")
    assert max(header_lines) == min(header_lines)  # "Rounds contributed" on one line like the rest

    # The table scrolls inside its card; the page itself never gets wider than the window.
    card = tab.locator("#participation").bounding_box()
    wrap = tab.locator("#participation .table-wrap")
    box = wrap.bounding_box()
    assert card and box and box["x"] >= card["x"] and box["x"] + box["width"] <= card["x"] + card["width"]
    assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    if width < 1000:
        assert wrap.evaluate("(w) => w.scrollWidth > w.clientWidth")  # too wide here: it scrolls
    _screenshot(tab, f"participation-requests-{width}.png", "#participation")


def test_the_docker_run_box_uses_the_cards_width(
    open_as: Callable[..., Any], users: dict[str, Any], problem: Any
) -> None:
    tab = open_as(users["holder"], f"/problems/{problem.pk}/")
    card = tab.locator("#participation")
    card_box = card.bounding_box()
    padding_right = float(card.evaluate("(c) => parseFloat(getComputedStyle(c).paddingRight)"))
    code = tab.locator(f"#docker-run-{problem.pk}")
    pre = code.locator("xpath=..")
    button = tab.locator(f"[data-copy='docker-run-{problem.pk}']")
    pre_box, button_box = pre.bounding_box(), button.bounding_box()
    assert card_box and pre_box and button_box
    content_right = card_box["x"] + card_box["width"] - padding_right
    # The Copy button sits at the card's right edge and the box fills the room before it.
    assert abs(button_box["x"] + button_box["width"] - content_right) <= 2
    assert pre_box["x"] + pre_box["width"] <= button_box["x"]
    assert button_box["x"] - (pre_box["x"] + pre_box["width"]) <= 12
    assert pre_box["width"] >= 0.75 * card_box["width"]
    # The whole command is visible at this width: nothing to scroll, and the button is one line high.
    assert pre.evaluate("(p) => p.scrollWidth <= p.clientWidth"), code.inner_text()
    assert button_box["height"] <= pre_box["height"]
    _screenshot(tab, "participation-docker-run.png", "#participation")


def test_the_column_type_selects_show_their_choice_whole(
    open_as: Callable[..., Any], users: dict[str, Any], problem: Any
) -> None:
    tab = open_as(users["owner"], f"/problems/{problem.pk}/edit/")
    selects = tab.locator(".kind-tabular table.rows select")
    assert selects.count() >= 30
    assert set(tab.eval_on_selector_all(".kind-tabular table.rows select", "ss => ss.map((s) => s.value)")) >= {
        "number",
        "string",
    }
    measured = tab.eval_on_selector_all(
        ".kind-tabular table.rows select",
        """(selects) => {
          const ctx = document.createElement("canvas").getContext("2d");
          return selects.map((s) => {
            const style = getComputedStyle(s);
            ctx.font = style.font;
            const longest = Math.max(...[...s.options].map((o) => ctx.measureText(o.text).width));
            return {
              value: s.value,
              fits: s.scrollWidth <= s.clientWidth,
              room: s.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - longest,
            };
          });
        }""",
    )
    assert all(m["fits"] for m in measured), measured
    # Room for the longest choice ("boolean", "integer") besides the select's arrow.
    assert min(m["room"] for m in measured) >= 12, measured
    _screenshot(tab, "contract-editor.png", ".kind-tabular")
