"""What data holders read on the problem page about how their site takes part (issue 14: Flower fidelity)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.web.test_participation import panel_html
from webserver.participation import services

pytestmark = [pytest.mark.web, pytest.mark.django_db]


def _approved(users: dict[str, Any], problem: Any, who: str = "participant") -> Any:
    participant = services.participant_request(
        problem=problem, user=users[who], site_name=f"{who} site", contact_email=f"{who}@example.org"
    )
    return services.participant_approve(participant=participant, by=users["owner"])


def test_a_none_contract_says_plainly_that_nothing_is_checked(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    problem = make_problem(users["owner"])
    problem.contract = {"kind": "none"}
    problem.save()
    _approved(users, problem)
    panel = panel_html(users["participant"], problem)
    assert "Nothing is checked:" in panel and "loads its own data" in panel
    assert "checks your data against the data contract" not in panel

    checked = make_problem(users["owner"], title="Checked")
    _approved(users, checked)
    panel = panel_html(users["participant"], checked)
    assert "Nothing is checked" not in panel and "checks your data against the data contract" in panel
