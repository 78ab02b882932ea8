"""Template tags the problem page uses to show this app's panel."""

from __future__ import annotations

from typing import Any

from django import template

from webserver.monitoring import queries

register = template.Library()


@register.inclusion_tag("monitoring/_problem_panel.html", takes_context=True)
def monitoring_panel(context: dict[str, Any], problem: Any) -> dict[str, Any]:
    """The monitoring section of a problem's page, as the viewing user may see it."""
    request = context["request"]
    return {
        "problem": problem,
        "user": request.user,
        "request": request,
        **queries.problem_panel(problem=problem, user=request.user),
    }
