"""The public REST API (token or session auth); schema at /api/schema/."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("webserver.accounts.api_urls")),
    path("", include("webserver.problems.api_urls")),
    path("", include("webserver.participation.api_urls")),
    path("", include("webserver.monitoring.api_urls")),
]
