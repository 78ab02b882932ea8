"""REST representations of problems, runs, app files and built-in apps (no rules here)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from webserver.problems.models import JoinPolicy, Problem, Run
from webserver.problems.templatetags.problem_tags import render_markdown


@lru_cache(maxsize=256)
def _description_html(text: str) -> str:
    return str(render_markdown(text))


@extend_schema_field({"type": "object"})
class JSONTextField(serializers.JSONField):
    """A JSON value, also accepted as JSON text in a multipart form; too deep nesting is a 400, not a 500."""

    def to_internal_value(self, data: Any) -> Any:
        try:
            return super().to_internal_value(data)
        except RecursionError:
            raise serializers.ValidationError("the JSON nests too deeply") from None


@extend_schema_field(
    {
        "type": "object",
        "properties": {
            # OpenAPI 3.0: exclusiveMinimum/Maximum are flags on minimum/maximum.
            "min_noise_multiplier": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            "clipping_norm": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
            "delta": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1, "exclusiveMaximum": True},
        },
        "additionalProperties": False,
    }
)
class PrivacyField(JSONTextField):
    """The privacy requirement (webserver/problems/privacy.py judges it)."""


class ResumabilitySerializer(serializers.Serializer):
    resumes = serializers.BooleanField(allow_null=True)
    reason = serializers.CharField()
    sentence = serializers.CharField()


class MlflowLinkSerializer(serializers.Serializer):
    tracking_url = serializers.CharField(help_text="The MLflow tracking server runs are exported to.")
    experiment = serializers.CharField(help_text="The MLflow experiment; empty: one named after the problem.")
    token_set = serializers.BooleanField(help_text="Whether a token is stored (the token itself is never shown).")


class ProblemSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    active_run = serializers.SerializerMethodField()
    description_html = serializers.SerializerMethodField(
        help_text="`description` (Markdown, as written) rendered to HTML and sanitised: safe to embed."
    )
    app_config = serializers.SerializerMethodField(
        help_text="The app's own [tool.flwr.app.config]: each key with its default (its type is the default's). "
        "`run_config.app_config` overrides these; a key not listed is refused."
    )
    privacy = PrivacyField(
        read_only=True,
        help_text="The differential privacy every site must apply ({}: none, each site decides); see the write "
        "field of the same name.",
    )
    resumability = serializers.SerializerMethodField(
        help_text="What a coordinator restart does to a run of this app, read from the app's source: `resumes` "
        "is true (it resumes from its last checkpoint), false (it starts again at round 1 as a new attempt) or "
        "null (Fedota cannot tell); `reason` says why and `sentence` is what the problem page says "
        '(docs/architecture.md, "Which apps resume after a restart"). Null when the app cannot be read.'
    )
    mlflow = serializers.SerializerMethodField(
        help_text="Where the problem's runs are exported as MLflow runs (docs/mlflow.md); shown to the problem's "
        "owner only, null for everyone else and when the problem is not linked. The token is never returned."
    )

    class Meta:
        model = Problem
        fields = [
            "id",
            "title",
            "description",
            "description_html",
            "state",
            "owner",
            "contract",
            "app_template",
            "fab_name",
            "fab_sha256",
            "app_version",
            "run_config",
            "privacy",
            "app_config",
            "resumability",
            "num_partitions",
            "join_policy",
            "active_run",
            "mlflow",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    # anyOf, not the oneOf the type hint gives: a whole number is both an integer and a number.
    @extend_schema_field(
        {
            "type": "object",
            "additionalProperties": {
                "anyOf": [{"type": "boolean"}, {"type": "integer"}, {"type": "number"}, {"type": "string"}]
            },
        }
    )
    def get_app_config(self, problem: Problem) -> dict[str, bool | int | float | str]:
        from webserver.errors import ApplicationError
        from webserver.problems.fabs import app_summary

        try:
            return dict(app_summary(problem).default_config)
        except ApplicationError:
            return {}  # a damaged app: the problem page says why

    @extend_schema_field(ResumabilitySerializer(allow_null=True))
    def get_resumability(self, problem: Problem) -> dict[str, Any] | None:
        from webserver.errors import ApplicationError
        from webserver.problems.fabs import app_resumability

        try:
            result = app_resumability(problem)
        except ApplicationError:
            return None  # a damaged app: the problem page says why
        return {"resumes": result.resumes, "reason": result.reason, "sentence": result.sentence}

    @extend_schema_field(MlflowLinkSerializer(allow_null=True))
    def get_mlflow(self, problem: Problem) -> dict[str, Any] | None:
        from webserver.permissions import owns_problem

        request = self.context.get("request")
        user = getattr(request, "user", None)
        if not problem.mlflow_tracking_url or user is None or not owns_problem(user, problem):
            return None
        return {
            "tracking_url": problem.mlflow_tracking_url,
            "experiment": problem.mlflow_experiment,
            "token_set": bool(problem.mlflow_token),
        }

    def get_description_html(self, problem: Problem) -> str:
        return _description_html(problem.description)

    def get_active_run(self, problem: Problem) -> int | None:
        """The number of the run that is queued, starting, running or stopping, if any."""
        run = next((r for r in problem.runs.all() if r.is_active), None)
        return run.number if run is not None else None


class ProblemWriteSerializer(serializers.Serializer):
    """Input of create (all of it) and PATCH (any of it); `services` judges the values.

    Send JSON, or multipart with `fab` as the file and `contract` / `run_config`
    as JSON text.
    """

    title = serializers.CharField(max_length=200)
    # Markdown is kept as written: leading spaces are meaningful (an indented code block).
    description = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    contract = JSONTextField(help_text="The data contract document (docs/data-contract.md).")
    app_template = serializers.CharField(
        required=False, allow_blank=True, help_text="A built-in app's name (GET /api/v1/apps/)."
    )
    fab = serializers.FileField(required=False, help_text="A FAB made with `flwr build` (multipart upload).")
    run_config = JSONTextField(
        required=False,
        help_text="The platform's settings (round_timeout, min_clients, num_selectors, reply_policy: flower or "
        "strict, by default strict for built-in apps and flower for uploaded ones) and overrides of the app's "
        "config: app_config (and strategy_params) keyed as the app declares them, plus rounds, strategy and "
        "clients_per_round for its num-server-rounds, strategy and clients-per-round. A setting naming a key the "
        "app does not declare is refused, naming the keys it does.",
    )
    join_policy = serializers.ChoiceField(choices=JoinPolicy.choices, required=False, default=JoinPolicy.APPROVAL)
    privacy = PrivacyField(
        required=False,
        help_text="The differential privacy every site must apply (docs/privacy.md); {} or absent: none, each site "
        "decides. All keys optional: min_noise_multiplier (> 0: every site clips its update and adds Gaussian noise "
        "with at least this multiplier, noise std = multiplier × 2 × clipping norm, even a site whose data holder "
        "set no budget), clipping_norm (> 0: the L2 norm updates are clipped to unless a site sets its own), delta "
        "(between 0 and 1: the δ sites report ε at unless they set their own). Other keys are refused. Fixed once "
        "the problem is published (409).",
    )
    mlflow_tracking_url = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=500,
        help_text="An MLflow tracking server (http:// or https://) to export every run to as an MLflow run: params, "
        "per-round metrics, the final model (docs/mlflow.md). Empty: not linked.",
    )
    mlflow_token = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=4000,
        write_only=True,
        help_text="A token the MLflow server takes as `Authorization: Bearer <token>`; stored sealed and never "
        "returned (`mlflow.token_set` says whether one is stored). Empty: remove it; absent: keep it.",
    )
    mlflow_experiment = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=250,
        help_text="The MLflow experiment runs go to, made if missing. Empty: `<title> (Fedota problem <id>)`.",
    )


class RunSerializer(serializers.ModelSerializer):
    class Meta:
        model = Run
        fields = [
            "number",
            "status",
            "status_detail",
            "phase",
            "current_round",
            "total_rounds",
            "app_version",
            "fab_sha256",
            "config",
            "backend",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class FabFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    is_text = serializers.BooleanField()
    url = serializers.CharField(help_text="GET it for the file's text.")


class BuiltinAppSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="Pass it as `app_template`.")
    title = serializers.CharField()
    description = serializers.CharField()
    version = serializers.CharField()


def as_data(obj: Any, **extra: Any) -> dict[str, Any]:
    """A dataclass (FabFile, BuiltinApp) as a plain dict for the serializers above."""
    return {**{k: getattr(obj, k) for k in obj.__dataclass_fields__}, **extra}
