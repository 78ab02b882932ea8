"""The problems REST API: thin adapters from HTTP to `queries` and `services`."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webserver.api_bounds import JSONParser
from webserver.api_schema import errors
from webserver.problems import fabs, mlflow_export, queries, services
from webserver.problems.serializers import (
    BuiltinAppSerializer,
    FabFileSerializer,
    ProblemSerializer,
    ProblemWriteSerializer,
    RunSerializer,
    as_data,
)

# The write fields `mlflow_<name>` (problems.mlflow_export checks and stores them, through problem_save).
MLFLOW_NAMES = ("tracking_url", "token", "experiment")


def _mlflow_changes(data: dict[str, Any]) -> mlflow_export.MlflowSettings | None:
    """The MLflow settings among validated write input (taken out of it), checked; None when none were sent."""
    sent = {name: data.pop(f"mlflow_{name}") for name in MLFLOW_NAMES if f"mlflow_{name}" in data}
    return mlflow_export.mlflow_settings_check(**sent) if sent else None


def _write_kwargs(data: dict[str, Any]) -> dict[str, Any]:
    """Validated write input as service keyword arguments (the FAB file read, bounded)."""
    kwargs = dict(data)
    upload = kwargs.pop("fab", None)
    if upload is not None:
        kwargs["fab_bytes"], kwargs["fab_name"] = fabs.read_upload(upload)
    if not kwargs.get("app_template"):
        kwargs.pop("app_template", None)
    return kwargs


class ProblemListCreate(GenericAPIView):
    serializer_class = ProblemSerializer
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_queryset(self) -> Any:
        # Also read by the browsable API's HTML page (a 500 without it).
        problems = queries.problem_list_visible(user=self.request.user, search=self.request.query_params.get("q", ""))
        return problems.prefetch_related("runs")

    @extend_schema(
        responses={200: ProblemSerializer(many=True), **errors(400)},
        parameters=[OpenApiParameter("q", str, description="Only titles containing this text.")],
    )
    def get(self, request: Request) -> Response:
        """Problems the caller may see: published and archived ones, plus their own drafts."""
        problems = self.get_queryset()
        page = self.paginate_queryset(problems)
        if page is not None:
            return self.get_paginated_response(ProblemSerializer(page, many=True, context={"request": request}).data)
        return Response(ProblemSerializer(problems, many=True, context={"request": request}).data)

    @extend_schema(request=ProblemWriteSerializer, responses={201: ProblemSerializer, **errors(400, 403, 409, 413)})
    def post(self, request: Request) -> Response:
        """Create a draft problem (problem setters only): `app_template` or a multipart `fab`."""
        # Refuse by role before looking at the input: a data holder learns nothing from field errors.
        services.problem_create_check(owner=request.user)
        serializer = ProblemWriteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        mlflow = _mlflow_changes(data)
        problem = services.problem_save(problem=None, user=request.user, mlflow=mlflow, **_write_kwargs(data))
        return Response(ProblemSerializer(problem, context={"request": request}).data, status=status.HTTP_201_CREATED)


class ProblemDetail(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(responses={200: ProblemSerializer, **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        return Response(ProblemSerializer(problem, context={"request": request}).data)

    @extend_schema(
        request=ProblemWriteSerializer, responses={200: ProblemSerializer, **errors(400, 403, 404, 409, 413)}
    )
    def patch(self, request: Request, pk: int) -> Response:
        """Change some fields (owner only); a new app on a published problem bumps `app_version`."""
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        serializer = ProblemWriteSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        # Only what was sent: partial validation still fills in defaults.
        sent = {k: v for k, v in serializer.validated_data.items() if k in request.data}
        mlflow = _mlflow_changes(sent)
        problem = services.problem_save(problem=problem, user=request.user, mlflow=mlflow, **_write_kwargs(sent))
        return Response(ProblemSerializer(problem, context={"request": request}).data)

    @extend_schema(responses={204: None, **errors(403, 404, 409)})
    def delete(self, request: Request, pk: int) -> Response:
        """Delete a draft that never ran (owner only)."""
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        services.problem_delete(problem=problem, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProblemPublish(APIView):
    @extend_schema(request=None, responses={201: RunSerializer, **errors(400, 403, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        """Publish the problem (if a draft) and start a new run; 409 while a run is active."""
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        run = services.problem_publish(problem=problem, user=request.user)
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


class ProblemStop(APIView):
    @extend_schema(
        request=None,
        responses={202: OpenApiResponse(description="The run is stopping."), **errors(403, 404, 409)},
    )
    def post(self, request: Request, pk: int) -> Response:
        """Stop the active run; 409 when none is active."""
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        services.problem_stop(problem=problem, user=request.user)
        return Response({"detail": "the run is stopping"}, status=status.HTTP_202_ACCEPTED)


class ProblemArchive(APIView):
    @extend_schema(request=None, responses={200: ProblemSerializer, **errors(403, 404, 409)})
    def post(self, request: Request, pk: int) -> Response:
        """Archive the problem (its active run is stopped)."""
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        problem = services.problem_archive(problem=problem, user=request.user)
        return Response(ProblemSerializer(problem, context={"request": request}).data)


class ProblemFiles(APIView):
    @extend_schema(responses={200: FabFileSerializer(many=True), **errors(400, 404)})
    def get(self, request: Request, pk: int) -> Response:
        """Every file of the problem's app with its size and SHA-256."""
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        files = [
            as_data(f, url=request.build_absolute_uri(reverse("api-problem-file", args=[problem.pk, f.path])))
            for f in fabs.fab_files(problem)
        ]
        return Response(FabFileSerializer(files, many=True).data)


class ProblemFile(APIView):
    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR, **errors(400, 404)})
    def get(self, request: Request, pk: int, path: str) -> HttpResponse:
        """One file of the app as text (404 if absent; 400 if binary or too big)."""
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        if path not in {f.path for f in fabs.fab_files(problem)}:
            return Response({"detail": f"the app has no file {path!r}", "path": ["no such file"]}, status=404)
        text = fabs.fab_file_text(problem, path)
        return HttpResponse(text, content_type="text/plain; charset=utf-8")


class ProblemRuns(APIView):
    @extend_schema(responses={200: RunSerializer(many=True), **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        """The problem's runs, newest first, with status, detail and rounds so far."""
        problem = queries.problem_get_visible(user=request.user, pk=pk)
        return Response(RunSerializer(queries.problem_runs(problem=problem), many=True).data)


class BuiltinApps(APIView):
    @extend_schema(responses=BuiltinAppSerializer(many=True))
    def get(self, request: Request) -> Response:
        """The built-in Flower apps a problem can use as `app_template`."""
        return Response(BuiltinAppSerializer([as_data(a) for a in fabs.builtin_apps()], many=True).data)
