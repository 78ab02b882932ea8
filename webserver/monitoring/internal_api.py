"""The internal API coordinators talk to: events and checkpoint files in, the
list of admitted participants out.

Plain Django views: no session, no CSRF (machines, not browsers), and the
request body is read as a stream so a 1 GB checkpoint never sits in memory.
The only credential accepted is the run's own service token.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from webserver.errors import ApplicationError
from webserver.monitoring import services

log = logging.getLogger(__name__)


def _error(exc: ApplicationError) -> JsonResponse:
    body: dict[str, Any] = {"detail": exc.message}
    if exc.field:
        body["field"] = exc.field
    response = JsonResponse(body, status=exc.status_code)
    if exc.status_code == 401:
        response["WWW-Authenticate"] = 'Bearer realm="fedota-internal"'
    return response


@csrf_exempt
@require_http_methods(["POST"])
def run_events(request: HttpRequest, run_id: int) -> JsonResponse:
    """Apply one event or a JSON list of events, all or nothing."""
    try:
        run = services.run_authenticate(run_id=run_id, authorization=request.headers.get("Authorization", ""))
        try:
            doc = json.loads(request.body or b"null")
        except RequestDataTooBig:
            raise services.TooLarge("too many events in one request; send smaller batches") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ApplicationError(f"body: not valid JSON ({type(exc).__name__})", field="body") from None
        events = doc if isinstance(doc, list) else [doc]
        applied = services.run_events_apply(run=run, events=events)
    except ApplicationError as exc:
        if exc.status_code == 400:
            log.warning("run %s sent a malformed event: %s", run_id, exc.message)
        return _error(exc)
    return JsonResponse({"applied": applied})


@csrf_exempt
@require_http_methods(["PUT", "POST"])
def run_checkpoint(request: HttpRequest, run_id: int, round: int, kind: str) -> JsonResponse:
    """Store a round's model file (round 0 = the final model) from the raw request body.

    `?attempt=K` says which start of the coordinator sent it; a coordinator older than
    attempts sends none, and its files are attempt 1's.
    """
    try:
        run = services.run_authenticate(run_id=run_id, authorization=request.headers.get("Authorization", ""))
        length = request.headers.get("Content-Length")
        try:
            size = int(length) if length else None
        except ValueError:
            raise ApplicationError("Content-Length: must be a whole number", field="Content-Length") from None
        attempt = _whole(request.GET.get("attempt", "1"), "attempt")
        services.checkpoint_store(run=run, attempt=attempt, round=round, kind=kind, stream=request, size=size)
    except ApplicationError as exc:
        return _error(exc)
    return JsonResponse({"stored": f"attempt {attempt} round {round} {kind}"}, status=201)


def _whole(raw: str, name: str) -> int:
    # Digits only: int() would also take " 2", "+2" and "٢".
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10:
        raise ApplicationError(f"{name}: must be a whole number", field=name)
    return int(raw)


@require_http_methods(["GET"])
def run_participants(request: HttpRequest, run_id: int) -> JsonResponse:
    """Who the run's selectors may admit (participant ids and credential hashes).

    The coordinator polls this every few seconds and hands it to its selectors,
    so a revocation on the website takes effect at every selector within seconds.
    """
    from webserver.participation.queries import admitted_credentials

    try:
        run = services.run_authenticate(run_id=run_id, authorization=request.headers.get("Authorization", ""))
    except ApplicationError as exc:
        return _error(exc)
    return JsonResponse({"problem_id": run.problem_id, "participants": admitted_credentials(problem_id=run.problem_id)})
