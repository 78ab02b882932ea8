"""Who may see and change what: the one place role and ownership rules live.

Pages, API views and services all ask these functions; a view never spells a
rule out itself. `user` may be anonymous.
"""

from __future__ import annotations

from typing import Any

from webserver.accounts.models import Role


def role_of(user: Any) -> str | None:
    """`setter`, `holder`, or None (anonymous, or an account without a profile such as a bare superuser)."""
    if not getattr(user, "is_authenticated", False):
        return None
    profile = getattr(user, "profile", None)
    return profile.role if profile is not None else None


def is_site_admin(user: Any) -> bool:
    return bool(getattr(user, "is_authenticated", False) and (user.is_staff or user.is_superuser))


def is_setter(user: Any) -> bool:
    return role_of(user) == Role.SETTER


def is_holder(user: Any) -> bool:
    return role_of(user) == Role.HOLDER


def owns_problem(user: Any, problem: Any) -> bool:
    """The problem's setter, or a site admin: may edit, publish, stop, approve and see everything."""
    if not getattr(user, "is_authenticated", False):
        return False
    return bool(problem.owner_id == user.pk or is_site_admin(user))


def can_view_problem(user: Any, problem: Any) -> bool:
    """Published problems are public; drafts are seen only by their owner and admins."""
    from webserver.problems.models import ProblemState

    return problem.state != ProblemState.DRAFT or owns_problem(user, problem)


# Participation (data holders joining problems).


def can_request_to_join(user: Any) -> bool:
    """Only data holders join problems; setters and admins publish and decide."""
    return is_holder(user)


def can_decide_participant(user: Any, participant: Any) -> bool:
    """Approve, reject or revoke a participant: the problem's setter or a site admin."""
    return owns_problem(user, participant.problem)


def can_see_participants(user: Any, problem: Any) -> bool:
    """The full participant list with contact e-mails: the problem's setter or a site admin."""
    return owns_problem(user, problem)


def can_download_bundle(user: Any, participant: Any) -> bool:
    """A join bundle carries the participant's credential: only that data holder gets one."""
    return bool(getattr(user, "is_authenticated", False) and participant.user_id == user.pk)
