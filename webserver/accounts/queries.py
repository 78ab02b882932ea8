"""Account reads."""

from __future__ import annotations

from typing import Any

from rest_framework.authtoken.models import Token

from webserver.permissions import is_site_admin, role_of


def api_token_of(*, user: Any) -> str | None:
    """The user's REST API token, or None before they create one."""
    return Token.objects.filter(user=user).values_list("key", flat=True).first()


def account_summary(*, user: Any) -> dict[str, Any]:
    """What the site knows about `user`, as plain values (the profile page and GET /api/v1/me/)."""
    profile = getattr(user, "profile", None)
    return {
        "username": user.get_username(),
        "email": user.email,
        "email_verified": bool(profile.email_verified) if profile is not None else True,
        "role": role_of(user),
        "role_display": (
            profile.get_role_display() if profile is not None else ("Site admin" if is_site_admin(user) else "No role")
        ),
        "organisation": profile.organisation if profile is not None else "",
        "is_site_admin": is_site_admin(user),
    }
