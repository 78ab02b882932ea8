"""Site-wide pages."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from webserver.permissions import is_holder, is_setter, is_site_admin


def home(request: HttpRequest) -> HttpResponse:
    """What Fedota is, for each role, with the next step for whoever is looking."""
    return render(
        request,
        "home.html",
        {
            "is_setter": is_setter(request.user),
            "is_holder": is_holder(request.user),
            "is_site_admin": is_site_admin(request.user),
        },
    )
