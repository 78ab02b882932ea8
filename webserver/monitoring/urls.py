"""Monitoring pages, mounted at /monitoring/."""

from __future__ import annotations

from django.urls import path

from webserver.monitoring import views

urlpatterns = [
    path("problems/<int:problem_pk>/", views.problem_dashboard, name="problem-dashboard"),
    # Before the model's own pattern, whose <str:kind> would take "npz.manifest.json" too.
    path(
        "runs/<int:run_id>/checkpoints/<int:round>.<str:kind>.manifest.json",
        views.checkpoint_manifest,
        name="checkpoint-manifest",
    ),
    path(
        "runs/<int:run_id>/checkpoints/<int:round>.<str:kind>",
        views.checkpoint_download,
        name="checkpoint-download",
    ),
    path("runs/<int:run_id>/metrics.csv", views.metrics_csv, name="metrics-csv"),
    path("runs/<int:run_id>/participants.csv", views.participants_csv, name="participants-csv"),
]
