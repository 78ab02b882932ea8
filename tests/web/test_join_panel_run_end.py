"""What the join panel tells a data holder about the end of a run (issue 15, part 7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.web.test_participation import panel_html
from webserver.participation import services

pytestmark = [pytest.mark.web, pytest.mark.django_db]


def test_the_join_panel_says_what_happens_when_the_run_ends_and_offers_follow(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    participant = services.participant_request(
        problem=problem, user=users["participant"], site_name="site", contact_email="p@example.org"
    )
    services.participant_approve(participant=participant, by=users["owner"])
    panel = panel_html(users["participant"], problem)
    assert "When the run finishes or is stopped, the client exits with code 0 (5 if the run failed)" in panel
    assert "add <code>--follow</code> at the end of the command" in panel
