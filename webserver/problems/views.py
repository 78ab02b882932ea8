"""Problem pages: list, create, detail, edit, the app's source, publish / stop / archive."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from webserver.errors import ApplicationError
from webserver.permissions import is_setter, owns_problem
from webserver.problems import contracts, fabs, queries, services
from webserver.problems.forms import ProblemEditor, editor_importing_contract, editor_with_more_rows
from webserver.problems.models import Problem, ProblemState
from webserver.problems.privacy import privacy_sentence
from webserver.problems.queries import problem_reply_policy
from webserver.problems.resumability import Resumability
from webserver.problems.runconfig import app_overrides


def _forbidden(request: HttpRequest, message: str) -> HttpResponse:
    """A 403 page that says why (Django's default one says only "Forbidden")."""
    return render(request, "problems/forbidden.html", {"message": message}, status=403)


def problem_list(request: HttpRequest) -> HttpResponse:
    search = request.GET.get("q", "")[:200]
    problems = queries.problem_list_visible(user=request.user, search=search)
    return render(
        request,
        "problems/list.html",
        {"problems": problems, "search": search, "can_create": is_setter(request.user)},
    )


def _editor_page(
    request: HttpRequest, editor: ProblemEditor, problem: Problem | None, status: int = 200
) -> HttpResponse:
    return render(
        request,
        "problems/edit.html",
        {"editor": editor, "problem": problem, "builtin_apps": fabs.builtin_apps()},
        status=status,
    )


def _save(request: HttpRequest, problem: Problem | None) -> HttpResponse:
    """Handle a POST of the editor: import the contract JSON, or save."""
    if "import_contract" in request.POST:
        editor, error = editor_importing_contract(request.POST, request.FILES, problem=problem)
        if error:
            editor.contract_form.add_error("contract_json", error)
        else:
            editor.notes.append("The contract was imported into the form; check it and save.")
        return _editor_page(request, editor, problem, status=400 if error else 200)
    if "more_rows" in request.POST:
        return _editor_page(request, editor_with_more_rows(request.POST, request.FILES, problem=problem), problem)
    editor = ProblemEditor(request.POST, request.FILES, problem=problem)
    if editor.is_valid():
        try:
            kwargs = editor.service_kwargs()
            mlflow = editor.mlflow_form.changes()
            before = problem.app_version if problem is not None else 0
            saved = services.problem_save(problem=problem, user=request.user, mlflow=mlflow, **kwargs)
            if problem is None:
                messages.success(request, "The problem was saved as a draft. Publish it to start a run.")
            else:
                if saved.app_version != before:
                    messages.warning(
                        request,
                        f"The app changed (now version {saved.app_version}): participants must download a new join "
                        "bundle, and the next run uses the new app.",
                    )
                else:
                    messages.success(request, "The problem was saved.")
            return redirect("problem-detail", pk=saved.pk)
        except ApplicationError as exc:
            editor.add_error(exc)
    return _editor_page(request, editor, problem, status=400)


@login_required
def problem_create(request: HttpRequest) -> HttpResponse:
    if not is_setter(request.user):
        return _forbidden(
            request,
            "Only problem setters can create problems. Your account is not a problem setter; "
            "ask a site admin if you need to publish problems.",
        )
    if request.method == "POST":
        return _save(request, None)
    return _editor_page(request, ProblemEditor(), None)


@login_required
def problem_edit(request: HttpRequest, pk: int) -> HttpResponse:
    problem = queries.problem_get_visible(user=request.user, pk=pk)
    if not owns_problem(request.user, problem):
        return _forbidden(request, "Only the problem's owner can edit it.")
    if problem.state == ProblemState.ARCHIVED:
        messages.error(request, "This problem is archived and can no longer be edited.")
        return redirect("problem-detail", pk=problem.pk)
    if request.method == "POST":
        return _save(request, problem)
    return _editor_page(request, ProblemEditor(problem=problem), problem)


def problem_detail(request: HttpRequest, pk: int) -> HttpResponse:
    problem = queries.problem_get_visible(user=request.user, pk=pk)
    files: list[fabs.FabFile] = []
    files_error = ""
    app: fabs.AppSummary | None = None
    resumability: Resumability | None = None
    overrides: dict[str, Any] = {}
    try:
        files = fabs.fab_files(problem)
        app = fabs.app_summary(problem)
        resumability = fabs.app_resumability(problem)
        overrides = app_overrides(problem.run_config, app.default_config)
    except ApplicationError as exc:  # a damaged app must not take the page down
        files_error = f"The app cannot be read: {exc.message}"
    runs = list(queries.problem_runs(problem=problem))
    active = next((run for run in runs if run.is_active), None)
    context: dict[str, Any] = {
        "problem": problem,
        "is_owner": owns_problem(request.user, problem),
        "contract_json": json.dumps(problem.contract, indent=2),
        "contract_settings": contracts.contract_settings(problem.contract),
        "contract_rows": contracts.contract_rows(problem.contract),
        "files": files,
        "app": app,
        "resumability": resumability,
        "app_config": sorted(overrides.items()),
        "files_error": files_error,
        "runs": runs,
        "active_run": active,
        "run_config": problem.run_config,
        "reply_policy": problem_reply_policy(problem),
        "privacy_sentence": privacy_sentence(problem.privacy),
    }
    return render(request, "problems/detail.html", context)


def problem_contract(request: HttpRequest, pk: int) -> HttpResponse:
    """The data contract as a `contract.json` download (what the client and its checker read)."""
    problem = queries.problem_get_visible(user=request.user, pk=pk)
    response = HttpResponse(json.dumps(problem.contract, indent=2) + "\n", content_type="application/json")
    response["Content-Disposition"] = 'attachment; filename="contract.json"'
    return response


def problem_file(request: HttpRequest, pk: int, path: str) -> HttpResponse:
    problem = queries.problem_get_visible(user=request.user, pk=pk)
    try:
        listing = {f.path: f for f in fabs.fab_files(problem)}
    except ApplicationError as exc:
        raise Http404(exc.message) from exc
    if path not in listing:
        raise Http404("the app has no such file")
    try:
        text = fabs.fab_file_text(problem, path)
        source = fabs.highlight_source(path, text)
        error = ""
    except ApplicationError as exc:
        source, error = None, exc.message
    return render(
        request,
        "problems/file.html",
        {"problem": problem, "file": listing[path], "source": source, "error": error},
    )


def _action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    problem = queries.problem_get_visible(user=request.user, pk=pk)
    try:
        if action == "publish":
            run = services.problem_publish(problem=problem, user=request.user)
            messages.success(request, f"Run {run.number} is queued; the page shows its progress.")
        elif action == "stop":
            services.problem_stop(problem=problem, user=request.user)
            messages.success(request, "The run is stopping.")
        elif action == "archive":
            services.problem_archive(problem=problem, user=request.user)
            messages.success(request, "The problem is archived.")
        elif action == "delete":
            services.problem_delete(problem=problem, user=request.user)
            messages.success(request, "The draft was deleted.")
            return redirect("problem-list")
    except ApplicationError as exc:
        if exc.status_code == 403:
            return _forbidden(request, exc.message)
        messages.error(request, exc.message)
    return redirect("problem-detail", pk=problem.pk)


@login_required
@require_POST
def problem_publish(request: HttpRequest, pk: int) -> HttpResponse:
    return _action(request, pk, "publish")


@login_required
@require_POST
def problem_stop(request: HttpRequest, pk: int) -> HttpResponse:
    return _action(request, pk, "stop")


@login_required
@require_POST
def problem_archive(request: HttpRequest, pk: int) -> HttpResponse:
    return _action(request, pk, "archive")


@login_required
@require_POST
def problem_delete(request: HttpRequest, pk: int) -> HttpResponse:
    return _action(request, pk, "delete")
