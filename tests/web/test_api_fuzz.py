"""Schemathesis against the REST API's own OpenAPI schema, with every check: the schema tells the truth.

Every operation of the schema served at /api/schema/ (none is excluded) is
called in-process (WSGI) with generated input, valid and invalid, once with a
problem setter's token and once with a data holder's, and the answer is judged
by all of schemathesis's checks: no 5xx, every status code, content type and
body the schema declares, schema-valid input accepted and invalid input
refused, credentials enforced. Any failure fails the test. The few checks an
operation cannot pass without a change that would be wrong for users are
excluded for that operation alone, each saying why (NOT_ALL_VALID_ACCEPTED).
Path ids are drawn from generated numbers and from the rows made below, so the
handlers behind the 404 are reached too. Examples are few (25 per operation)
and derandomised, so a run is reproducible.

The issue asks for a live server; the run stays in-process on purpose. The
WSGI app is the same Django application a server would run (middleware, URL
map, handlers, exception handler), only the socket is missing, and over
pytest-django's `live_server` every request and each check's probes go through
real HTTP to a server thread: measured on this 2-core machine (busy with a CI
run), the PATCH and archive operations alone took 210 s there, against about
2 to 4 minutes for all 58 tests here.

The schema is built from the code (drf-spectacular's generator, the same one
behind /api/schema/) when this module is imported, because schemathesis makes
one test per operation at collection time; its pytest "lazy" loader, which
would fetch the schema inside a test, does not run under pytest 9.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.web import api_world
from tests.web.api_world import NOT_ALL_VALID_ACCEPTED
from webserver.wsgi import application

# Each operation's test writes rows in autocommit mode, as the site does in production.
pytestmark = pytest.mark.django_db(transaction=True)

ID_PARAMETERS = {"pk", "id", "problem_id", "run_id", "participant_id"}
# Ids of the rows the current test made; generated ids rarely hit a real one.
_REAL_IDS: list[int] = []

load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())
FORM_MEDIA_TYPES = {"multipart/form-data", "application/x-www-form-urlencoded"}

schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
schema.app = application
# The schema's description says text never holds NUL (U+0000), which no per-field schema can state.
schema.config.generation.update(allow_x00=False)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    params = dict(path_parameters or {})
    keys = sorted(ID_PARAMETERS & set(params))
    # Only a valid (integer) id is swapped for a real one: a case generated with an invalid id must keep it,
    # or `negative_data_rejection` would expect the refusal of a request that became valid.
    if not keys or not _REAL_IDS or not all(type(params.get(key)) is int for key in keys):
        return st.just(params)
    real = st.fixed_dictionaries({key: st.sampled_from(list(_REAL_IDS)) for key in keys})
    return st.one_of(st.just(params), real.map(lambda found: {**params, **found}))


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Celery tasks the API enqueued, kept here: in autocommit mode `delay_on_commit` would reach the broker."""
    from webserver.problems import tasks

    sent: list[tuple[str, tuple[Any, ...]]] = []
    for task in (tasks.publish, tasks.stop, tasks.reconcile):
        monkeypatch.setattr(task, "delay", lambda *args, _name=task.name, **kwargs: sent.append((_name, args)))
    return sent


@pytest.fixture(params=["owner", "holder"])
def token(request: pytest.FixtureRequest, users: dict[str, Any], make_problem: Any, queued: list[Any]) -> str:
    """The token of a problem setter (`owner`) or a data holder, over the small world of tests/web/api_world.py."""
    from rest_framework.authtoken.models import Token

    _REAL_IDS[:] = sorted(set(api_world.build(users, make_problem).values()))
    return str(Token.objects.create(user=users[request.param]).key)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_input_makes_the_api_fail(case: Any, token: str) -> None:
    # The token is the credential; a generated session cookie beside it would make `ignored_auth` take the
    # request's auth for a generated (invalid) one and expect a refusal.
    if case.cookies:
        case.cookies.pop("sessionid", None)
    excluded = []
    if case.operation.label in NOT_ALL_VALID_ACCEPTED:
        excluded.append(positive_data_acceptance)
    # A body that is not an object cannot be written as a form: what is sent is an empty form, which the
    # schema allows, so its acceptance is no failure to reject invalid data.
    if case.media_type in FORM_MEDIA_TYPES and not isinstance(case.body, dict):
        excluded.append(negative_data_rejection)
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=ALL_CHECKS, excluded_checks=excluded)
