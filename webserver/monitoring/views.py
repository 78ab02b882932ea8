"""Pages and downloads for watching a problem's training (setter and site admins)."""

from __future__ import annotations

import csv
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseNotFound
from django.shortcuts import render
from django.utils.text import slugify
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

from webserver.errors import NotAllowed
from webserver.monitoring import provenance, queries


def _login_first(request: HttpRequest) -> HttpResponse | None:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    return None


def _login_or_token(request: HttpRequest) -> HttpResponse | None:
    """Downloads take the API's `Authorization: Token <key>` too, so scripts fetch models with curl.

    With the header, a bad token is a 401 (not a log-in page a script cannot use);
    without it, the browser's session as for every page.
    """
    header = str(request.META.get("HTTP_AUTHORIZATION", "")).split()
    if not header or header[0].lower() != "token":
        return _login_first(request)
    try:
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("give one token: Authorization: Token <key>")
        user, _ = TokenAuthentication().authenticate_credentials(header[1])
    except exceptions.AuthenticationFailed as exc:
        response = HttpResponse(f"{exc.detail}\n", status=401, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = "Token"
        return response
    request.user = user
    return None


def problem_dashboard(request: HttpRequest, problem_pk: int) -> HttpResponse:
    """The live dashboard's shell; dashboard.js fetches the rounds from the dashboard API and polls it.

    Only the small parts (status, services, participants, logs) are rendered here, so the
    page costs the same for a run of 5 rounds as for one of 5,000.
    """
    if (redirect := _login_first(request)) is not None:
        return redirect
    try:
        problem = queries.problem_for_monitoring(user=request.user, pk=problem_pk)
    except NotAllowed as exc:
        raise PermissionDenied(exc.message) from None
    run = queries.run_selected(problem=problem, number=request.GET.get("run"))
    context: dict[str, Any] = {
        "problem": problem,
        "run": run,
        "runs": list(problem.runs.order_by("-number")),
        "initial": queries.dashboard(problem=problem, run=run, with_rounds=False),
    }
    return render(request, "monitoring/dashboard.html", context)


def _run(request: HttpRequest, run_id: int) -> Any:
    try:
        return queries.run_for_monitoring(user=request.user, run_id=run_id)
    except NotAllowed as exc:
        raise PermissionDenied(exc.message) from None


def _attempt(request: HttpRequest) -> int | None | HttpResponse:
    """The `?attempt=K` of a model download (None without it), or the response refusing a bad one."""
    raw = request.GET.get("attempt")
    if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) > 0):
        return HttpResponseBadRequest("attempt: must be a whole number ≥ 1.", content_type="text/plain; charset=utf-8")
    return None if raw is None else int(raw)


def _no_model(run: Any, round: int, kind: str, attempt: int | None) -> HttpResponse:
    what = "the final model" if round == 0 else f"round {round}"
    whose = "" if attempt is None else f" of attempt {attempt}"
    return HttpResponseNotFound(
        f"Run {run.number} has no stored .{kind} file for {what}{whose}. The coordinator uploads each round's"
        " model after the round ends (only .npz for rounds, .npz and .pt for the final model).",
        content_type="text/plain; charset=utf-8",
    )


def _model_asked(request: HttpRequest, run_id: int, kind: str) -> tuple[Any, int | None] | HttpResponse:
    """The run and `?attempt=` a model or manifest download asks for, or the answer refusing it."""
    if (redirect := _login_or_token(request)) is not None:
        return redirect
    run = _run(request, run_id)
    if kind not in ("npz", "pt"):
        return HttpResponseNotFound("Models are offered as .npz (NumPy) or .pt (PyTorch).", content_type="text/plain")
    attempt = _attempt(request)
    if isinstance(attempt, HttpResponse):
        return attempt
    return run, attempt


def checkpoint_download(request: HttpRequest, run_id: int, round: int, kind: str) -> HttpResponse | FileResponse:
    """A round's model (round 0 = the final model), streamed from storage.

    `?attempt=K` picks the attempt of the run's coordinator; without it, the latest attempt
    that has the round (an attempt that could not resume counts rounds from 1 again, so a
    round number can belong to several). Round 0 of a run that failed or was stopped before
    its final model is its last completed round's model. The file name and the
    `X-Fedota-Model-Round` and `X-Fedota-Model-Attempt` headers say which was served.
    """
    asked = _model_asked(request, run_id, kind)
    if isinstance(asked, HttpResponse):
        return asked
    run, attempt = asked
    stored, served, of_attempt = queries.model_file(run=run, round=round, kind=kind, attempt=attempt)
    if stored is None:
        return _no_model(run, round, kind, attempt)
    name = queries.model_file_name(run=run, served=served, attempt=of_attempt, kind=kind)
    response = FileResponse(stored.open("rb"), as_attachment=True, filename=name)
    response["X-Fedota-Model-Round"] = str(served)
    response["X-Fedota-Model-Attempt"] = str(of_attempt)
    return response


def checkpoint_manifest(request: HttpRequest, run_id: int, round: int, kind: str) -> HttpResponse:
    """The signed provenance manifest of the model the same URL without `.manifest.json` serves.

    Same permissions, arguments and headers as `checkpoint_download`; check the pair with
    `fedota-verify MODEL MANIFEST` (docs/provenance.md).
    """
    asked = _model_asked(request, run_id, kind)
    if isinstance(asked, HttpResponse):
        return asked
    run, attempt = asked
    made = provenance.checkpoint_manifest(run=run, round=round, kind=kind, attempt=attempt)
    if made is None:
        return _no_model(run, round, kind, attempt)
    body, name, served, of_attempt = made
    response = HttpResponse(body, content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Fedota-Model-Round"] = str(served)
    response["X-Fedota-Model-Attempt"] = str(of_attempt)
    return response


def participants_csv(request: HttpRequest, run_id: int) -> HttpResponse:
    """Every site of a run with its last contribution, as CSV (the dashboard lists the first few)."""
    if (redirect := _login_or_token(request)) is not None:
        return redirect
    run = _run(request, run_id)
    name = f"{slugify(run.problem.title) or 'problem'}-run{run.number}-participants.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    writer = csv.writer(response)
    writer.writerow(["site", "status", "last_round", "last_kind", "rounds"])
    for p in queries.run_participants(run=run):
        writer.writerow(
            [p["site"], p["status"], "" if p["last_round"] is None else p["last_round"], p["last_kind"], p["rounds"]]
        )
    return response


def metrics_csv(request: HttpRequest, run_id: int) -> HttpResponse:
    """Every round's metrics of a run as CSV."""
    if (redirect := _login_or_token(request)) is not None:
        return redirect
    run = _run(request, run_id)
    header, rows = queries.metrics_table(run=run)
    name = f"{slugify(run.problem.title) or 'problem'}-run{run.number}-metrics.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    writer = csv.writer(response)
    writer.writerow(header)
    writer.writerows(rows)
    return response
