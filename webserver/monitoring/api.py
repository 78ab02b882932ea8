"""REST API for monitoring (problem setter and site admins); in the OpenAPI schema."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webserver.api_schema import errors
from webserver.errors import ApplicationError
from webserver.monitoring import queries

_ERRORS = errors(
    400,
    403,
    404,
    _403="Only the problem's setter and site admins can watch its runs.",
    _404="No such problem or run (or not visible to you).",
)
# The run numbers `?runs=` takes: digits between commas, spaces allowed around them, empty parts skipped.
_RUN_NUMBERS = r"^ *([0-9]+ *)?(, *([0-9]+ *)?)*$"
_LARGEST_RUN_NUMBER = 2**31 - 1  # Run.number is a PositiveIntegerField


class RoundSerializer(serializers.Serializer[Any]):
    round = serializers.IntegerField()
    attempt = serializers.IntegerField(
        min_value=1,
        help_text="which start of the run's coordinator ran the round (1, then 2 after a restart, ...); "
        "a resumed attempt continues the numbering, one that could not resume counts from 1 again",
    )
    phase = serializers.CharField()
    clients = serializers.IntegerField()
    train_loss = serializers.FloatField(allow_null=True)
    eval_loss = serializers.FloatField(allow_null=True)
    eval_acc = serializers.FloatField(allow_null=True)
    seconds = serializers.FloatField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    rejected = serializers.IntegerField(
        min_value=0,
        help_text="client replies the coordinator refused as malformed or hostile (NaN/Inf, wrong shapes, …) "
        "or, under the strict reply policy, as breaking the platform's rules",
    )
    rejected_reasons = serializers.DictField(
        child=serializers.IntegerField(min_value=1),
        help_text="why replies were rejected: reason -> how many, most common first (at most 10 reasons; "
        "empty when none were rejected or the coordinator predates reasons)",
    )
    results = serializers.IntegerField(
        min_value=0,
        allow_null=True,
        help_text="replies delivered to the ServerApp with content; null when the coordinator did not say",
    )
    no_results = serializers.BooleanField(help_text="replies were asked for and not one was accepted")
    metrics = serializers.JSONField()
    downloads = serializers.DictField(
        child=serializers.CharField(allow_null=True),
        help_text="links to this round's model of this attempt (`npz`, `pt`; null when not stored) and to each "
        "file's signed provenance manifest (`npz_manifest`, `pt_manifest`; check with `fedota-verify`). Where "
        "another attempt has a round of the same number, the link carries `?attempt=K`; the bare link of a "
        "round means its latest attempt's model",
    )


class LogLineSerializer(serializers.Serializer[Any]):
    ts = serializers.DateTimeField()
    level = serializers.CharField()
    # The serializer metaclass moves declared fields off the class, so Field.source is untouched;
    # the output key must stay `source`, hence the ignore.
    source = serializers.CharField()  # type: ignore[assignment]
    message = serializers.CharField()


class RunMetricsSerializer(serializers.Serializer[Any]):
    number = serializers.IntegerField()
    status = serializers.CharField()
    rounds = serializers.ListField(child=serializers.DictField())


class ProblemDashboardApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="problem_dashboard",
        parameters=[
            OpenApiParameter("run", int, description="run number (default: the latest run)"),
            OpenApiParameter(
                "since",
                {"type": "integer", "minimum": 0},
                description="a round number: return only the rounds after it (and their downloads), for a "
                "client that already has the earlier ones. Everything else (run, services, participants, logs, "
                "final model) is always whole. Without it, every round of the run is returned. A round already "
                "returned can change later (its model is uploaded after the round ends, a resumed coordinator "
                "reports it again), so pollers ask again for the last few rounds they hold.",
            ),
        ],
        responses={200: OpenApiTypes.OBJECT, **_ERRORS},
        description="Everything the dashboard shows: the run, its services and clients, rounds with model "
        "downloads, participants with their last contribution, and the last 50 log lines. `rejected` counts "
        "the client replies the coordinator refused as malformed or hostile (NaN/Inf, wrong shapes, …) over "
        "the whole run: `replies`, and the `rounds` they were in; each round has its own `rejected`, "
        "`rejected_reasons` (reason -> count), `results` and `no_results` (true when not one reply was accepted). "
        "`run.reply_policy` is the reply policy in force: `name` (flower or strict) and `reported` (false until "
        "the coordinator confirms it; the name is then the run's configured one). `final_model` links the run's "
        "result: its final model (`round` 0) or, for a run that failed or was stopped before one, its last "
        "completed round's model (`round` N), the latest attempt's; `npz_manifest` and `pt_manifest` there and in "
        "each round's `downloads` link each model's signed provenance manifest. `run.restart_count` and `run.restarts` (the latest 20: `at`, "
        "`service`, `reason`, `by`) say what the platform restarted and why; `run.attempts` lists each start "
        "of the coordinator (`attempt`, `first_round`: where it resumed, or 1 when it could not), and each "
        "round says its `attempt`; no attempt's model overwrites another's, and a round number that several "
        "attempts have links each attempt's model with `?attempt=K`. `since` "
        "in the response echoes the parameter (null when every round is included). `privacy` lists each site's "
        "latest differential-privacy report in the run, those stopped for budget first (at most 200): `site`, "
        "`participant_id`, `self_reported` (always true: the site noises its update on its own machine, so the "
        "platform cannot verify any of it), `state` (`active`, or `exhausted`: the site stopped for budget, `reason` "
        "says why) with `state_label`, `epsilon` (cumulative over every run of the problem, at `delta`), "
        "`epsilon_cap` (null: the site set none), `noise_multiplier`, `clipping_norm`, `releases` (noised updates, "
        "every run) and `run_releases` (this run), `round` (of the latest release, null when unknown) and "
        "`reported_at`; each participant says `stopped_for_budget`. `privacy_summary` has the problem's "
        "`requirement` (as set, `{}` for none) and `requirement_text`, the sites listed (`shown`) of `total`, and how "
        "many are `exhausted`.",
    )
    def get(self, request: Request, problem_id: int) -> Response:
        problem = queries.problem_for_monitoring(user=request.user, pk=problem_id)
        run = queries.run_selected(problem=problem, number=request.query_params.get("run"))
        since = _since(request.query_params.get("since"))
        return Response(queries.dashboard(problem=problem, run=run, since=since))


def _since(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        since = int(raw)
    except ValueError:
        since = -1
    if since < 0:
        raise ApplicationError("since: must be a round number (a whole number ≥ 0)", field="since")
    return since


class RunRoundsApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="run_rounds",
        responses={200: RoundSerializer(many=True), **_ERRORS},
        description="Every finished round of a run with its metrics and model downloads.",
    )
    def get(self, request: Request, run_id: int) -> Response:
        run = queries.run_for_monitoring(user=request.user, run_id=run_id)
        downloads = queries.run_checkpoints(run=run)
        return Response([queries.round_json(r, downloads) for r in queries.round_rows(run=run)])


class RunLogsApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="run_logs",
        parameters=[OpenApiParameter("limit", int, description="how many of the last lines (1–1000, default 200)")],
        responses={200: LogLineSerializer(many=True), **_ERRORS},
        description="The run's last log lines (round summaries, warnings and errors), oldest first.",
    )
    def get(self, request: Request, run_id: int) -> Response:
        run = queries.run_for_monitoring(user=request.user, run_id=run_id)
        try:
            limit = int(request.query_params.get("limit", 200))
        except ValueError:
            raise ApplicationError("limit: must be a whole number", field="limit") from None
        limit = max(1, min(limit, 1000))
        return Response([queries.log_json(line) for line in queries.run_logs(run=run, limit=limit)])


class RunsMetricsApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="problem_runs_metrics",
        parameters=[
            OpenApiParameter(
                "runs",
                {"type": "string", "pattern": _RUN_NUMBERS},
                description="comma-separated run numbers, e.g. 1,2 (at most 10)",
            )
        ],
        responses={200: RunMetricsSerializer(many=True), **_ERRORS},
        description="Per-round loss and accuracy of several runs of a problem, to compare them; each round "
        "says its `attempt` (which start of the run's coordinator ran it).",
    )
    def get(self, request: Request, problem_id: int) -> Response:
        problem = queries.problem_for_monitoring(user=request.user, pk=problem_id)
        raw = request.query_params.get("runs", "")
        if not re.fullmatch(_RUN_NUMBERS, raw, flags=re.ASCII):
            raise ApplicationError("runs: give run numbers separated by commas, e.g. 1,2", field="runs") from None
        # A number past what the database's run numbers hold names no run, like any other unknown
        # number (it is not a mistake the pattern can refuse); unbounded, SQLite's driver overflowed.
        numbers = [n for n in (int(part) for part in raw.split(",") if part.strip()) if n <= _LARGEST_RUN_NUMBER]
        return Response(queries.runs_metrics(problem=problem, numbers=numbers))
