"""Pages: ask to join, decide on requests, download a join bundle, my participation.

Views translate HTTP to service calls and back; every rule lives in
`services` and `webserver.permissions`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from webserver import permissions
from webserver.errors import ApplicationError, NotAllowed
from webserver.monitoring.queries import participant_privacy
from webserver.participation import bundles, queries, services
from webserver.participation.forms import DecisionForm, JoinRequestForm, NumPartitionsForm, PartitionForm
from webserver.participation.models import Participant, ParticipantStatus
from webserver.problems.models import Problem
from webserver.problems.privacy import privacy_sentence

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def _problem_url(problem: Problem) -> str:
    return reverse("problem-detail", args=[problem.pk]) + "#participation"


def _visible_problem(request: HttpRequest, problem_pk: int) -> Problem:
    problem = get_object_or_404(Problem, pk=problem_pk)
    if not permissions.can_view_problem(request.user, problem):
        # A draft its viewer may not see does not exist, as far as they know.
        raise Http404("No such problem.")
    return problem


def _participant(request: HttpRequest, participant_pk: int) -> Participant:
    participant = queries.participant_in_visible_problem(pk=participant_pk, user=request.user)
    if participant is None:
        raise Http404("No such participant.")
    return participant


def _refused(request: HttpRequest, exc: ApplicationError, *, problem: Problem | None) -> HttpResponse:
    return render(
        request, "participation/refused.html", {"message": exc.message, "problem": problem}, status=exc.status_code
    )


@login_required
def participant_request(request: HttpRequest, problem_pk: int) -> HttpResponse:
    """GET: the join form (or why you cannot join); POST: send the request."""
    problem = _visible_problem(request, problem_pk)
    profile = getattr(request.user, "profile", None)
    user = cast("User", request.user)  # @login_required: never AnonymousUser here
    initial = {"site_name": getattr(profile, "organisation", ""), "contact_email": user.email}
    form = JoinRequestForm(request.POST or None, initial=initial)
    context = {"problem": problem, "form": form, "privacy_sentence": privacy_sentence(problem.privacy)}
    try:
        services.participant_request_check(problem=problem, user=request.user)
    except ApplicationError as exc:
        existing = queries.participant_of(problem=problem, user=request.user)
        return render(
            request,
            "participation/join.html",
            {**context, "refusal": exc.message, "existing": existing},
            status=exc.status_code,
        )
    if request.method == "POST" and form.is_valid():
        try:
            participant = services.participant_request(problem=problem, user=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            return render(request, "participation/join.html", context, status=exc.status_code)
        if participant.status == ParticipantStatus.APPROVED:
            messages.success(request, "You have joined this problem. Download your join bundle below.")
        else:
            messages.success(request, "Your request was sent; the problem's setter will approve or reject it.")
        return redirect(_problem_url(problem))
    status = 400 if request.method == "POST" else 200
    return render(request, "participation/join.html", context, status=status)


def _decision(request: HttpRequest, participant_pk: int, verb: str) -> HttpResponse:
    participant = _participant(request, participant_pk)
    form = DecisionForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else request.POST.get("reason", "")
    try:
        row = services.participant_decide(participant=participant, by=request.user, verb=verb, reason=reason)
    except ApplicationError as exc:
        return _refused(request, exc, problem=participant.problem)
    messages.success(request, f"{row.site_name}: {row.get_status_display().lower()}.")
    return redirect(_problem_url(row.problem))


@login_required
@require_POST
def participant_approve(request: HttpRequest, participant_pk: int) -> HttpResponse:
    return _decision(request, participant_pk, "approve")


@login_required
@require_POST
def participant_reject(request: HttpRequest, participant_pk: int) -> HttpResponse:
    return _decision(request, participant_pk, "reject")


@login_required
@require_POST
def participant_revoke(request: HttpRequest, participant_pk: int) -> HttpResponse:
    return _decision(request, participant_pk, "revoke")


@login_required
@require_POST
def participant_partition(request: HttpRequest, participant_pk: int) -> HttpResponse:
    """The setter gives an approved site another partition id."""
    participant = _participant(request, participant_pk)
    form = PartitionForm(request.POST)
    try:
        if not form.is_valid():
            raise ApplicationError("A partition id is a whole number from 0.", field="partition_id")
        row = services.participant_set_partition(
            participant=participant, by=request.user, partition_id=form.cleaned_data["partition_id"]
        )
    except ApplicationError as exc:
        return _refused(request, exc, problem=participant.problem)
    messages.success(
        request,
        f"{row.site_name} is now partition {row.partition_id}. Its data holder must download a new join bundle "
        "for the change to reach the app.",
    )
    return redirect(_problem_url(row.problem))


@login_required
@require_POST
def problem_num_partitions(request: HttpRequest, problem_pk: int) -> HttpResponse:
    """The setter fixes num-partitions (or leaves it to the number of approved sites)."""
    problem = _visible_problem(request, problem_pk)
    form = NumPartitionsForm(request.POST)
    try:
        if not form.is_valid():
            raise ApplicationError("num-partitions is a whole number from 1, or empty.", field="num_partitions")
        row = services.problem_set_num_partitions(
            problem=problem, by=request.user, num_partitions=form.cleaned_data["num_partitions"]
        )
    except ApplicationError as exc:
        return _refused(request, exc, problem=problem)
    messages.success(
        request,
        f"num-partitions is now {queries.problem_num_partitions(row)}. Data holders must download new join bundles "
        "for the change to reach the app.",
    )
    return redirect(_problem_url(row))


@login_required
@require_POST
def participant_bundle(request: HttpRequest, participant_pk: int) -> HttpResponse:
    """Issue a new credential and send the join bundle as a file download."""
    participant = _participant(request, participant_pk)
    try:
        bundle = services.participant_issue_bundle(participant=participant, by=request.user)
    except ApplicationError as exc:
        return _refused(request, exc, problem=participant.problem)
    response = HttpResponse(json.dumps(bundle, indent=2) + "\n", content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{bundles.bundle_filename(participant.problem)}"'
    # The body holds a live credential: no proxy or browser cache may keep it.
    response["Cache-Control"] = "no-store"
    return response


@login_required
def my_participations(request: HttpRequest) -> HttpResponse:
    """Every problem a data holder asked to join, with what their site contributed."""
    if not permissions.is_holder(request.user):
        return _refused(
            request,
            NotAllowed("“My participation” is for data holders; problem setters see requests on their problems."),
            problem=None,
        )
    rows = []
    for participant in queries.participations_of_user(user=request.user):
        rows.append(
            {
                "participant": participant,
                "problem": participant.problem,
                "bundle_stale": queries.bundle_is_stale(participant),
                "contributions": queries.contributions_by_run(participant),
                # Only this holder's own site's reports (attributed to their participant row).
                "privacy": participant_privacy(participant=participant),
            }
        )
    return render(request, "participation/mine.html", {"rows": rows})
