"""The public REST API (token or session auth); schema at /api/schema/."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, include, path, re_path, resolve
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt  # it changes nothing; without it a POST is a CSRF 403 in HTML
def not_found(request: HttpRequest) -> HttpResponse:
    # A path no route takes (`/problems/abc/`) is answered like the API's other 404s, in JSON, not Django's HTML.
    # This route takes every path, so CommonMiddleware's APPEND_SLASH redirect is made here.
    if settings.APPEND_SLASH and not request.path_info.endswith("/"):
        try:
            slashed = resolve(request.path_info + "/").func
        except Resolver404:
            slashed = not_found
        if slashed is not not_found:
            return HttpResponsePermanentRedirect(request.get_full_path(force_append_slash=True))
    return JsonResponse({"detail": "Not found."}, status=404)


urlpatterns = [
    path("", include("webserver.accounts.api_urls")),
    path("", include("webserver.problems.api_urls")),
    path("", include("webserver.participation.api_urls")),
    path("", include("webserver.monitoring.api_urls")),
    re_path(r"^", not_found),  # any path, also one with a newline that `.*` would not take
]
