"""URL map: each Django app owns its pages (`urls.py`) and API (`api_urls.py`)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from webserver import health, metrics, views
from webserver.api_urls import not_found as api_not_found

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("metrics/targets", metrics.targets_view, name="metrics-targets"),
    path("admin/", admin.site.urls),
    path("accounts/", include("webserver.accounts.urls")),
    path("problems/", include("webserver.problems.urls")),
    path("participation/", include("webserver.participation.urls")),
    path("monitoring/", include("webserver.monitoring.urls")),
    path("api/v1/", include("webserver.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Any other path under /api/ (`/api/v2/...`) is answered like the API's own 404s, in JSON.
    re_path(r"^api/", api_not_found),
    path("internal/v1/", include("webserver.monitoring.internal_urls")),
]

handler400 = "webserver.views.bad_request"
