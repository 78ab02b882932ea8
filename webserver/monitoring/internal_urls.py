"""Internal API for coordinators, mounted at /internal/v1/ (service-token auth only)."""

from __future__ import annotations

from django.urls import path

from webserver.monitoring import internal_api

urlpatterns = [
    path("runs/<int:run_id>/events", internal_api.run_events, name="internal-run-events"),
    path("runs/<int:run_id>/participants", internal_api.run_participants, name="internal-run-participants"),
    path(
        "runs/<int:run_id>/checkpoints/<int:round>/<str:kind>",
        internal_api.run_checkpoint,
        name="internal-run-checkpoint",
    ),
]
