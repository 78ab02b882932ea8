"""Writes for problems: create, edit, publish, stop, archive, delete.

Every function checks who is asking (`webserver.permissions`) and either does
all of its work or none of it: the row is saved in a transaction, and a FAB
file written for a row that is then not saved is removed again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction

from fedota_common.fab import App
from webserver.errors import ApplicationError, Conflict, NotAllowed
from webserver.permissions import is_setter, owns_problem
from webserver.problems import fabs
from webserver.problems.contracts import validate_contract
from webserver.problems.mlflow_export import MlflowSettings, problem_mlflow_update
from webserver.problems.models import ACTIVE_RUN_STATUSES, JoinPolicy, Problem, ProblemState, Run
from webserver.problems.privacy import validate_privacy
from webserver.problems.runconfig import validate_run_config

MAX_TITLE = 200
# Characters of Markdown; the page renders it on every view (about 0.3 s at worst for this many).
MAX_DESCRIPTION = 20_000
EDITABLE = (
    "title",
    "description",
    "contract",
    "app_template",
    "fab_bytes",
    "fab_name",
    "run_config",
    "join_policy",
    "privacy",
)
PRIVACY_FROZEN = (
    "the privacy requirement cannot change once the problem is published: data holders joined under it and "
    "their join bundles carry it; create a new problem for another requirement"
)


def _check_title(title: str) -> str:
    title = (title or "").strip()
    if not title:
        raise ApplicationError("give the problem a title", field="title")
    if len(title) > MAX_TITLE:
        raise ApplicationError(f"the title is {len(title)} characters; at most {MAX_TITLE} are allowed", field="title")
    return title


def _check_description(description: str | None) -> str:
    description = description or ""
    if len(description) > MAX_DESCRIPTION:
        raise ApplicationError(
            f"the description is {len(description)} characters; at most {MAX_DESCRIPTION} are allowed",
            field="description",
        )
    return description


def _check_no_nul(doc: Any, *, field: str) -> Any:
    """`doc` unless a string in it holds a NUL character, which PostgreSQL cannot store in JSON.

    A loop, not recursion (the document may nest as deep as the JSON parser
    allowed), and each value's place is a link to its parent's, so a wide and
    deep document costs no more than its size.
    """
    Place = tuple[Any, str | int] | None  # (parent's place, key or index)
    pending: list[tuple[Any, Place]] = [(doc, None)]
    while pending:
        value, place = pending.pop()
        bad: Place = None
        if isinstance(value, str):
            if "\x00" in value:
                bad = place or (None, "")
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in str(key):
                    bad = (place, key)
                    break
                pending.append((item, (place, key)))
        elif isinstance(value, list):
            pending.extend(
                (item, (place, index)) for index, item in enumerate(value) if isinstance(item, (str, dict, list))
            )
        if bad is not None:
            keys: list[str | int] = []
            while bad is not None:
                bad, key = bad
                keys.append(key)
            where = field + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in reversed(keys) if k != "")
            raise ApplicationError(f"{where} holds a NUL character (\\u0000); remove it", field=field)
    return doc


def _check_join_policy(policy: str) -> str:
    if policy not in JoinPolicy.values:
        raise ApplicationError(
            f"join policy must be one of {', '.join(JoinPolicy.values)}; got {policy!r}", field="join_policy"
        )
    return policy


def _resolve_app(*, app_template: str | None, fab_bytes: bytes | None, fab_name: str) -> tuple[App, str, str]:
    """The app a problem runs: (checked app, template name or "", file name)."""
    if app_template and fab_bytes is not None:
        raise ApplicationError("choose a built-in app or upload a FAB, not both", field="app_template")
    if app_template:
        return fabs.template_fab(app_template), app_template, f"{app_template}.fab"
    if fab_bytes is not None:
        return fabs.check_fab(fab_bytes, name=fab_name), "", fab_name or "app.fab"
    raise ApplicationError("choose a built-in app or upload a FAB (made with `flwr build`)", field="app_template")


def _store_fab(problem: Problem, app: App) -> Callable[[], None]:
    """Write the FAB file for `problem` (not yet saved); returns an undo for when the row is not saved."""
    problem.fab.save(f"{app.sha256}.fab", ContentFile(app.content), save=False)
    problem.fab_sha256 = app.sha256
    name = problem.fab.name
    storage = problem.fab.storage
    return lambda: storage.delete(name)


def _saved_with_fab(problem: Problem, app: App | None) -> Problem:
    """Save `problem`, storing `app` first; the new file is removed if the transaction fails."""
    undo: Callable[[], None] | None = None
    try:
        with transaction.atomic():
            if app is not None:
                undo = _store_fab(problem, app)
            problem.save()
    except Exception:
        if undo is not None:
            undo()
        raise
    return problem


def problem_create_check(*, owner: Any) -> None:
    """Raise NotAllowed unless `owner` may create problems (problem setters)."""
    if not is_setter(owner):
        raise NotAllowed("only problem setters can create problems; ask a site admin to change your role")


def problem_create(
    *,
    owner: Any,
    title: str,
    description: str = "",
    contract: dict[str, Any],
    app_template: str | None = None,
    fab_bytes: bytes | None = None,
    fab_name: str = "",
    run_config: dict[str, Any] | None = None,
    join_policy: str = JoinPolicy.APPROVAL,
    privacy: dict[str, Any] | None = None,
) -> Problem:
    """A new draft problem owned by `owner` (a problem setter)."""
    problem_create_check(owner=owner)
    title = _check_title(title)
    description = _check_description(description)
    contract = validate_contract(_check_no_nul(contract, field="contract"))
    requirement = validate_privacy(privacy)
    app, template, name = _resolve_app(app_template=app_template, fab_bytes=fab_bytes, fab_name=fab_name)
    config = validate_run_config(
        _check_no_nul(run_config, field="run_config"), app.default_config, builtin=bool(template)
    )
    problem = Problem(
        owner=owner,
        title=title,
        description=description,
        contract=contract,
        app_template=template,
        fab_name=name[:200],
        run_config=config,
        join_policy=_check_join_policy(join_policy),
        privacy=requirement,
        state=ProblemState.DRAFT,
    )
    return _saved_with_fab(problem, app)


def problem_app(problem: Problem) -> App:
    """The problem's stored app, checked again (it is about to be run)."""
    return fabs.check_fab(fabs.fab_bytes(problem), name=problem.fab_name)


def problem_save(*, problem: Problem | None, user: Any, mlflow: MlflowSettings | None = None, **fields: Any) -> Problem:
    """Create a problem (`problem` None) or change it, and store its MLflow settings with it, in one transaction.

    A change that sends MLflow settings alone leaves the problem's own fields as they are.
    """
    with transaction.atomic():
        if problem is None:
            problem = problem_create(owner=user, **fields)
        elif fields or mlflow is None:
            problem = problem_update(problem=problem, user=user, **fields)
        if mlflow is not None:
            problem = problem_mlflow_update(problem=problem, user=user, changes=mlflow)
    return problem


def problem_update(*, problem: Problem, user: Any, **changes: Any) -> Problem:
    """Change some of `EDITABLE`; a new app on a published problem bumps `app_version`.

    The run config is checked against the app the problem will have after the
    change, so replacing the app cannot leave a config naming keys it lacks.
    """
    if not owns_problem(user, problem):
        raise NotAllowed("only the problem's owner can edit it")
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ApplicationError(f"cannot change {', '.join(unknown)}; editable: {', '.join(EDITABLE)}")
    if problem.state == ProblemState.ARCHIVED:
        raise Conflict("this problem is archived and can no longer be edited")
    problem = Problem.objects.get(pk=problem.pk)  # edit the stored row, not a stale copy
    if "title" in changes:
        problem.title = _check_title(changes["title"])
    if "description" in changes:
        problem.description = _check_description(changes["description"])
    if "contract" in changes:
        problem.contract = validate_contract(_check_no_nul(changes["contract"], field="contract"))
    if "join_policy" in changes:
        problem.join_policy = _check_join_policy(changes["join_policy"])
    if "privacy" in changes:
        requirement = validate_privacy(changes["privacy"])
        if requirement != (problem.privacy or {}) and problem.state != ProblemState.DRAFT:
            # Keyed like PrivacyError's errors, so API clients and the form find it in one place.
            raise Conflict(PRIVACY_FROZEN, extra={"privacy": {"privacy": [PRIVACY_FROZEN]}})
        problem.privacy = requirement

    new_app: App | None = None
    was_builtin = bool(problem.app_template)
    if changes.get("app_template") or changes.get("fab_bytes") is not None:
        new_app, template, name = _resolve_app(
            app_template=changes.get("app_template"),
            fab_bytes=changes.get("fab_bytes"),
            fab_name=changes.get("fab_name", ""),
        )
        if new_app.sha256 == problem.fab_sha256:
            new_app = None  # the same bytes again: nothing changes, no new join bundles needed
        problem.app_template, problem.fab_name = template, name[:200]
    app_config = new_app.default_config if new_app is not None else problem_app(problem).default_config
    if "run_config" in changes or new_app is not None:
        run_config = _check_no_nul(changes.get("run_config", problem.run_config), field="run_config")
        if "run_config" not in changes and was_builtin != bool(problem.app_template):
            # Another kind of app: its own default reply policy, unless the setter says otherwise.
            run_config = {k: v for k, v in (run_config or {}).items() if k != "reply_policy"}
        problem.run_config = validate_run_config(run_config, app_config, builtin=bool(problem.app_template))
    if new_app is not None and problem.state != ProblemState.DRAFT:
        # Join bundles pin the app version: participants must fetch new ones.
        problem.app_version += 1
    return _saved_with_fab(problem, new_app)


def _check_complete(problem: Problem) -> None:
    """Everything a run needs is there and valid (it may have been stored by an older version)."""
    _check_title(problem.title)
    validate_contract(problem.contract)
    validate_privacy(problem.privacy)
    app = problem_app(problem)
    if app.sha256 != problem.fab_sha256:
        raise ApplicationError("the stored FAB does not match its recorded hash; upload the app again", field="fab")
    validate_run_config(problem.run_config, app.default_config, builtin=bool(problem.app_template))


@transaction.atomic
def problem_publish(*, problem: Problem, user: Any) -> Run:
    """Publish the problem (if still a draft) and start a new run of it."""
    from webserver.problems import lifecycle

    if not owns_problem(user, problem):
        raise NotAllowed("only the problem's owner can publish it or start a run")
    # The root of the run's trace: the launch, the spawn and the coordinator's rounds follow.
    with lifecycle.tracer().start_as_current_span("problem.publish", attributes={"fedota.problem_id": problem.pk}):
        problem = Problem.objects.select_for_update().get(pk=problem.pk)
        if problem.state == ProblemState.ARCHIVED:
            raise Conflict("this problem is archived; archived problems cannot run again")
        _check_complete(problem)
        if problem.runs.filter(status__in=ACTIVE_RUN_STATUSES).exists():
            raise Conflict("a run of this problem is still active; stop it before starting a new one")
        if problem.state != ProblemState.PUBLISHED:
            problem.state = ProblemState.PUBLISHED
            problem.save(update_fields=["state", "updated_at"])
        run: Run = lifecycle.run_start(problem=problem, user=user)
        return run


def problem_stop(*, problem: Problem, user: Any) -> None:
    """Stop the problem's active run (the lifecycle tears its services down)."""
    from webserver.problems import lifecycle

    if not owns_problem(user, problem):
        raise NotAllowed("only the problem's owner can stop its run")
    if not problem.runs.filter(status__in=ACTIVE_RUN_STATUSES).exists():
        raise Conflict("no run of this problem is active")
    lifecycle.run_stop(problem=problem, user=user)


@transaction.atomic
def problem_archive(*, problem: Problem, user: Any) -> Problem:
    """Retire the problem: its active run is stopped and it cannot run again."""
    from webserver.problems import lifecycle

    if not owns_problem(user, problem):
        raise NotAllowed("only the problem's owner can archive it")
    problem = Problem.objects.select_for_update().get(pk=problem.pk)
    if problem.runs.filter(status__in=ACTIVE_RUN_STATUSES).exists():
        lifecycle.run_stop(problem=problem, user=user)
    problem.state = ProblemState.ARCHIVED
    problem.save(update_fields=["state", "updated_at"])
    return problem


def problem_delete(*, problem: Problem, user: Any) -> None:
    """Delete a draft that never ran; anything published is archived instead."""
    if not owns_problem(user, problem):
        raise NotAllowed("only the problem's owner can delete it")
    if problem.state != ProblemState.DRAFT or problem.runs.exists():
        raise Conflict("only a draft that never ran can be deleted; archive the problem instead")
    storage, name = problem.fab.storage, problem.fab.name
    with transaction.atomic():
        problem.delete()
        # Another problem may have stored the very same app under the same name.
        if name and not Problem.objects.filter(fab=name).exists():
            transaction.on_commit(lambda: storage.delete(name))
