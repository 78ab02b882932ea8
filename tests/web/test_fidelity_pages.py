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


# ---- the run form is the app's own config (part 7) ---------------------------------------------

BOOL_APP = b"""[project]
name = "mine"
version = "0.1.0"
[tool.flwr.app.components]
serverapp = "mine.server:app"
clientapp = "mine.client:app"
[tool.flwr.app.config]
num-server-rounds = 3
use-gpu = false
learning-rate = 0.1
local-epochs = 2
dataset = "mnist"
"""


def _fab(pyproject: bytes) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pyproject.toml", pyproject)
        zf.writestr("mine/__init__.py", b"")
    return buf.getvalue()


def _edit_page(users: dict[str, Any], problem: Any) -> str:
    from django.test import Client
    from django.urls import reverse

    client = Client()
    client.force_login(users["owner"])
    return client.get(reverse("problem-edit", args=[problem.pk])).content.decode()


def test_the_run_form_offers_each_key_of_the_app_typed_with_its_default(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    from django.test import Client
    from django.urls import reverse

    from tests.web.test_problems import browser_post
    from webserver.problems import services as problem_services

    problem = make_problem(users["owner"])
    problem = problem_services.problem_update(
        problem=problem, user=users["owner"], fab_bytes=_fab(BOOL_APP), fab_name="mine.fab"
    )
    page = _edit_page(users, problem)
    assert 'name="rc-app:use-gpu"' in page and 'type="checkbox"' in page
    assert 'name="rc-app:learning-rate" value="0.1"' in page and 'name="rc-app:local-epochs" value="2"' in page
    assert 'name="rc-app:dataset" value="mnist"' in page
    assert 'name="rc-rounds"' in page  # num-server-rounds, shown once under the app's name
    assert 'name="rc-strategy"' not in page and 'name="rc-clients_per_round"' not in page  # not declared
    assert 'name="rc-reply_policy"' in page and 'name="rc-round_timeout"' in page

    data = browser_post(page)
    data.update({"rc-app:use-gpu": "on", "rc-app:learning-rate": "0.05", "save": "1"})
    client = Client()
    client.force_login(users["owner"])
    response = client.post(reverse("problem-edit", args=[problem.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    problem.refresh_from_db()
    # Only what changed is an override, typed as the app declares it.
    assert problem.run_config["app_config"] == {"use-gpu": True, "learning-rate": 0.05}
    assert problem.run_config["reply_policy"] == "flower"  # an uploaded app

    data["rc-app:local-epochs"] = "two"
    response = client.post(reverse("problem-edit", args=[problem.pk]), data)
    assert response.status_code == 400 and "Enter a whole number" in response.content.decode()


def test_an_override_of_an_undeclared_key_is_refused_naming_the_declared_keys(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    from webserver.problems import services as problem_services
    from webserver.problems.runconfig import RunConfigError

    problem = make_problem(users["owner"])
    with pytest.raises(RunConfigError) as caught:
        problem_services.problem_update(
            problem=problem,
            user=users["owner"],
            fab_bytes=_fab(BOOL_APP),
            fab_name="mine.fab",
            run_config={"strategy": "FedProx", "app_config": {"epochs": 3}},
        )
    errors = caught.value.errors
    declared = "dataset, learning-rate, local-epochs, num-server-rounds, use-gpu"
    assert errors["strategy"][0].endswith(f"the app accepts: {declared}")
    assert errors["app_config"][0].endswith(f"the app accepts: {declared}")


def test_the_reply_policy_defaults_by_kind_of_app_and_data_holders_are_told(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    from webserver.problems import services as problem_services

    builtin = problem_services.problem_create(
        owner=users["owner"], title="Built-in", contract={"kind": "none"}, app_template="tabular"
    )
    assert builtin.run_config["reply_policy"] == "strict"
    uploaded = problem_services.problem_create(
        owner=users["owner"], title="Mine", contract={"kind": "none"}, fab_bytes=_fab(BOOL_APP), fab_name="m.fab"
    )
    assert uploaded.run_config["reply_policy"] == "flower"
    # Replacing the app with another kind takes that kind's default, unless the setter chose one.
    swapped = problem_services.problem_update(problem=uploaded, user=users["owner"], app_template="tabular")
    assert swapped.run_config["reply_policy"] == "strict"

    problem = make_problem(users["owner"])
    _approved(users, problem)
    assert "Replies are checked strictly" in panel_html(users["participant"], problem)
    problem_services.problem_update(
        problem=problem, user=users["owner"], run_config={**problem.run_config, "reply_policy": "flower"}
    )
    problem.refresh_from_db()
    assert "Replies are checked by Flower's rules" in panel_html(users["participant"], problem)


def test_the_run_spec_carries_the_reply_policy(users: dict[str, Any], make_problem: Callable[..., Any]) -> None:
    from webserver.problems.lifecycle import build_run_spec
    from webserver.problems.models import Run

    problem = make_problem(users["owner"])
    run = Run.objects.create(problem=problem, number=1, config=dict(problem.run_config), fab_sha256=problem.fab_sha256)
    assert build_run_spec(run, service_token="s", selector_token="t").reply_policy == "strict"
    run.config = {**run.config, "reply_policy": "flower"}
    assert build_run_spec(run, service_token="s", selector_token="t").reply_policy == "flower"


def test_the_api_shows_the_apps_config_and_takes_the_reply_policy(
    users: dict[str, Any], make_problem: Callable[..., Any]
) -> None:
    from django.test import Client

    problem = make_problem(users["owner"])
    client = Client()
    client.force_login(users["owner"])
    shown = client.get(f"/api/v1/problems/{problem.pk}/").json()
    assert shown["app_config"]["learning-rate"] == 0.02 and shown["num_partitions"] is None
    changed = client.patch(
        f"/api/v1/problems/{problem.pk}/",
        {"run_config": {"rounds": 2, "reply_policy": "flower"}},
        content_type="application/json",
    )
    assert changed.status_code == 200 and changed.json()["run_config"]["reply_policy"] == "flower"
    refused = client.patch(
        f"/api/v1/problems/{problem.pk}/", {"run_config": {"reply_policy": "lax"}}, content_type="application/json"
    )
    assert refused.status_code == 400 and "flower, strict" in refused.content.decode()
