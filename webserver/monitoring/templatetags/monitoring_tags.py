"""Template tags the problem page uses to show this app's panel."""

from __future__ import annotations

from typing import Any

from django import template

from webserver.monitoring import queries
from webserver.problems.privacy import format_number

register = template.Library()


@register.filter(name="privacy_number")
def privacy_number(value: float | None) -> str:
    """A site's reported ε, δ, noise multiplier or clipping norm (dashboard.js formats them the same way)."""
    return format_number(value)


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
