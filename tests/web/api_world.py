"""The small world of rows the API fuzz tests run over, in-process and against a live server.

The owner has a published problem with a finished run and a draft; the data holder takes
part in the published one, another holder has asked to join. Run as a module
(`python -m tests.web.api_world`, Django settings from the environment, database
migrated) it makes the users too and prints the rows' ids and the two tokens as JSON,
for tests/integration/test_api_live.py's server.
"""

from __future__ import annotations

import json
from typing import Any

# `positive_data_acceptance` expects every schema-valid request to succeed. These operations refuse some
# with a 400 by rules no schema can state, and answering otherwise would be wrong for users:
NOT_ALL_VALID_ACCEPTED = {
    # Django's password validators (too short, too common, like the username) and names already taken.
    "POST /api/v1/auth/signup/",
    # A username and password that match no account are a 400 naming the mistake.
    "POST /api/v1/auth/token/",
    # The data contract document (docs/data-contract.md) and the app are judged by the services.
    "POST /api/v1/problems/",
    "PATCH /api/v1/problems/{id}/",
}


def build(users: dict[str, Any], make_problem: Any) -> dict[str, int]:
    """Make the rows; their ids by name."""
    from webserver.participation.models import Participant, ParticipantStatus
    from webserver.problems.models import ProblemState, Run, RunStatus

    published = make_problem(users["owner"])
    draft = make_problem(users["owner"], state=ProblemState.DRAFT, title="Draft")
    run = Run.objects.create(problem=published, number=1, status=RunStatus.FINISHED, current_round=3, total_rounds=3)
    approved = Participant.objects.create(
        problem=published,
        user=users["holder"],
        site_name="St Elsewhere",
        contact_email="holder@example.org",
        status=ParticipantStatus.APPROVED,
    )
    pending = Participant.objects.create(
        problem=published, user=users["participant"], site_name="General", contact_email="participant@example.org"
    )
    return {"published": published.pk, "draft": draft.pk, "run": run.pk, "approved": approved.pk, "pending": pending.pk}


def main() -> None:
    import django

    django.setup()
    from rest_framework.authtoken.models import Token

    from fedota_common.fab import load_app
    from scripts.make_demo_data import breast_cancer_contract
    from tests.web.conftest import REPO, _user, problem_row

    users = {
        "owner": _user("owner", "setter"),
        "holder": _user("holder", "holder", organisation="St Elsewhere"),
        "participant": _user("participant", "holder", organisation="General Hospital"),
    }
    fab = load_app(REPO / "apps" / "tabular").content
    contract = breast_cancer_contract([f"f{i}" for i in range(30)])

    def make_problem(owner: Any, *, state: str = "published", title: str = "Breast cancer") -> Any:
        return problem_row(owner, fab, contract, state=state, title=title)

    ids = build(users, make_problem)
    tokens = {role: Token.objects.create(user=users[role]).key for role in ("owner", "holder")}
    print(json.dumps({"ids": ids, "tokens": tokens}))


if __name__ == "__main__":
    main()
