"""The infrastructure page: every problem's runs and services, for site admins."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from webserver.permissions import is_site_admin
from webserver.problems import lifecycle, tasks


@login_required
def infrastructure(request: HttpRequest) -> HttpResponse:
    """GET: the overview. POST: enqueue a reconciliation now (the beat does it every 15 s anyway)."""
    if not is_site_admin(request.user):
        return render(
            request,
            "problems/forbidden.html",
            {"message": "Only site admins can see the infrastructure page."},
            status=403,
        )
    if request.method == "POST":
        tasks.reconcile.delay_on_commit()
        messages.success(request, "Reconciliation queued: the page shows its result once a worker has run it.")
        return redirect("infrastructure")
    return render(request, "problems/infrastructure.html", {"problems": lifecycle.infrastructure_overview()})
