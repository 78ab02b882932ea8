"""Monitoring REST API, mounted under /api/v1/."""

from __future__ import annotations

from django.urls import path

from webserver.monitoring import api

urlpatterns = [
    path("problems/<int:problem_id>/dashboard/", api.ProblemDashboardApi.as_view(), name="api-problem-dashboard"),
    path("problems/<int:problem_id>/runs/metrics/", api.RunsMetricsApi.as_view(), name="api-runs-metrics"),
    path("runs/<int:run_id>/rounds/", api.RunRoundsApi.as_view(), name="api-run-rounds"),
    path("runs/<int:run_id>/logs/", api.RunLogsApi.as_view(), name="api-run-logs"),
]
