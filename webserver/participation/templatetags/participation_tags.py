"""Template tags the problem page uses to show this app's panel."""

from __future__ import annotations

from typing import Any

from django import template

from webserver.participation import queries

register = template.Library()


@register.inclusion_tag("participation/_problem_panel.html", takes_context=True)
def participation_panel(context: dict[str, Any], problem: Any) -> dict[str, Any]:
    """The participation section of a problem's page, as the viewing user may see it."""
    request = context["request"]
    return {
        **queries.problem_panel(problem=problem, user=request.user),
        "user": request.user,
        "request": request,
        # An inclusion tag gets a fresh context; the forms in the panel need the token.
        "csrf_token": context.get("csrf_token"),
    }
