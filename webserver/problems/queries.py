"""Reads for problems: what a user may see, and a problem's runs."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.http import Http404

from webserver.permissions import can_view_problem, is_site_admin
from webserver.problems.models import ACTIVE_RUN_STATUSES, Problem, ProblemState, Run


def problem_list_visible(*, user: Any, search: str = "") -> QuerySet[Problem]:
    """Published and archived problems, plus the user's own drafts (every draft for an admin)."""
    problems = Problem.objects.select_related("owner")
    if not is_site_admin(user):
        visible = ~Q(state=ProblemState.DRAFT)
        if getattr(user, "is_authenticated", False):
            visible |= Q(owner=user)
        problems = problems.filter(visible)
    search = (search or "").strip()
    if search:
        problems = problems.filter(title__icontains=search)
    return problems.order_by("-created_at")


def problem_get_visible(*, user: Any, pk: Any) -> Problem:
    """The problem `pk` if `user` may see it; Http404 otherwise (a draft's existence is not revealed)."""
    try:
        problem = Problem.objects.select_related("owner").get(pk=pk)
    except (Problem.DoesNotExist, ValueError, TypeError):
        raise Http404("no such problem") from None
    if not can_view_problem(user, problem):
        raise Http404("no such problem")
    return problem


def problem_runs(*, problem: Problem) -> QuerySet[Run]:
    """The problem's runs, newest first."""
    return problem.runs.order_by("-number")


def problem_active_run(*, problem: Problem) -> Run | None:
    """The run that is queued, starting, running or stopping, if there is one."""
    return problem.runs.filter(status__in=ACTIVE_RUN_STATUSES).order_by("-number").first()


def problem_reply_policy(problem: Problem) -> str:
    """How the problem's runs judge replies: `flower` or `strict` (by kind of app when not chosen)."""
    from webserver.problems.runconfig import REPLY_POLICIES, default_reply_policy

    chosen = (problem.run_config or {}).get("reply_policy")
    return chosen if chosen in REPLY_POLICIES else default_reply_policy(builtin=bool(problem.app_template))
