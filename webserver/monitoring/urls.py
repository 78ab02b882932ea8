"""Monitoring pages, mounted at /monitoring/."""

from __future__ import annotations

from django.urls import path

from webserver.monitoring import views

urlpatterns = [
    path("problems/<int:problem_pk>/", views.problem_dashboard, name="problem-dashboard"),
    path(
        "runs/<int:run_id>/checkpoints/<int:round>.<str:kind>",
        views.checkpoint_download,
        name="checkpoint-download",
    ),
    path("runs/<int:run_id>/metrics.csv", views.metrics_csv, name="metrics-csv"),
    path("runs/<int:run_id>/participants.csv", views.participants_csv, name="participants-csv"),
]
