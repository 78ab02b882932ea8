"""Site-wide pages."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
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


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 400 for requests it refuses before a view runs, with what was wrong and what to do.

    Without it a form sent over the size limits gets a bare "Bad Request (400)".
    Nothing of such a request was read into a form, so nothing was stored.
    """
    status, title = 400, "The request was refused"
    detail = "The request was malformed. Go back and try again; if it keeps happening, tell the site's administrator."
    if isinstance(exception, RequestDataTooBig):
        limit_mib = settings.DATA_UPLOAD_MAX_MEMORY_SIZE / (1024 * 1024)
        status, title = 413, "The form was too large"
        detail = (
            f"The form's text fields together were over {limit_mib:g} MiB, the most this site accepts "
            "(uploaded files have their own limit). Nothing was saved. Go back, shorten the long text "
            "(for example the description) and send it again."
        )
    elif isinstance(exception, (TooManyFieldsSent, TooManyFilesSent)):
        detail = (
            f"The form had more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields or too many files. "
            "Nothing was saved. Go back and send fewer."
        )
    return render(request, "error.html", {"title": title, "detail": detail}, status=status)
