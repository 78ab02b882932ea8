"""Writes: data holders asking to join, setters deciding, join bundles being issued.

Every function checks who is acting (`by`) against `webserver.permissions`
and raises `NotAllowed`, `Conflict` or `ApplicationError` with a message meant
for the person who clicked; nothing is written when it raises.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from webserver import permissions
from webserver.errors import ApplicationError, Conflict, NotAllowed
from webserver.participation import bundles
from webserver.participation.credentials import credential_new
from webserver.participation.models import Participant, ParticipantStatus
from webserver.problems.models import JoinPolicy, Problem, ProblemState
from webserver.problems.pki import ca_certificate

SITE_NAME_MAX = 120
MESSAGE_MAX = 2000
NOTE_MAX = 2000

# Which status each decision may start from. Rejected → approved lets a
# setter change their mind; a revoked participant stays revoked (its holder may
# have been removed for a reason, and its old bundles are out in the world).
_APPROVABLE = (ParticipantStatus.PENDING, ParticipantStatus.REJECTED)
_REJECTABLE = (ParticipantStatus.PENDING,)
_REVOCABLE = (ParticipantStatus.APPROVED,)


def participant_request_check(*, problem: Problem, user: Any) -> None:
    """Raise the error a join request by `user` would meet, before any form is filled in."""
    if not permissions.can_request_to_join(user):
        if permissions.is_setter(user):
            raise NotAllowed("Only data holders can join problems; you are signed in as a problem setter.")
        raise NotAllowed("Only data holders can join problems; sign in with a data holder account.")
    if problem.state != ProblemState.PUBLISHED:
        archived = " (it is archived)" if problem.state == ProblemState.ARCHIVED else ""
        raise Conflict(
            f"“{problem.title}” is not published{archived}; you can ask to join once its setter publishes it."
        )
    existing = Participant.objects.filter(problem=problem, user=user).first()
    if existing is not None:
        raise Conflict(_already_asked(existing), extra={"participant_id": existing.pk, "status": existing.status})


def _already_asked(participant: Participant) -> str:
    status = participant.get_status_display().lower()
    return f"You already asked to join this problem; your request is {status}. See “My participation” for its status."


def participant_request(
    *, problem: Problem, user: Any, site_name: str, contact_email: str, message: str = ""
) -> Participant:
    """A data holder asks to join a published problem.

    Approved at once under the open join policy, pending under approval.
    """
    participant_request_check(problem=problem, user=user)
    site_name = (site_name or "").strip()
    contact_email = (contact_email or "").strip()
    message = (message or "").strip()
    if not site_name:
        raise ApplicationError("Give the name of your site or organisation.", field="site_name")
    if len(site_name) > SITE_NAME_MAX:
        raise ApplicationError(f"The site name can have at most {SITE_NAME_MAX} characters.", field="site_name")
    if not contact_email:
        raise ApplicationError("Give an e-mail address the problem setter can reach you at.", field="contact_email")
    try:
        validate_email(contact_email)
    except ValidationError as exc:
        raise ApplicationError(f"“{contact_email}” is not a valid e-mail address.", field="contact_email") from exc
    if len(message) > MESSAGE_MAX:
        raise ApplicationError(f"The message can have at most {MESSAGE_MAX} characters.", field="message")

    auto_approve = problem.join_policy == JoinPolicy.OPEN
    now = timezone.now()
    try:
        # Two quick clicks can both pass the check above; the unique
        # constraint settles it, inside a savepoint so the outer transaction
        # (if any) survives.
        with transaction.atomic():
            return Participant.objects.create(
                problem=problem,
                user=user,
                site_name=site_name,
                contact_email=contact_email,
                message=message,
                status=ParticipantStatus.APPROVED if auto_approve else ParticipantStatus.PENDING,
                decided_at=now if auto_approve else None,
            )
    except IntegrityError as exc:
        existing = Participant.objects.get(problem=problem, user=user)
        raise Conflict(_already_asked(existing), extra={"participant_id": existing.pk}) from exc


def _locked(participant: Participant) -> Participant:
    """The row again, locked, so two setters clicking at once decide one after the other."""
    return Participant.objects.select_for_update().select_related("problem").get(pk=participant.pk)


def _decide(
    *, participant: Participant, by: Any, allowed_from: tuple[str, ...], to: str, verb: str, note: str = ""
) -> Participant:
    if not permissions.can_decide_participant(by, participant):
        raise NotAllowed(f"Only the problem's setter or a site admin can {verb} participants.")
    note = (note or "").strip()
    if len(note) > NOTE_MAX:
        raise ApplicationError(f"The reason can have at most {NOTE_MAX} characters.", field="reason")
    with transaction.atomic():
        row = _locked(participant)
        if row.status not in allowed_from:
            raise Conflict(
                f"{row.site_name} cannot be {_PAST[verb]}: the request is {row.get_status_display().lower()}."
                + _HINT.get((verb, row.status), "")
            )
        row.status = to
        row.decided_at = timezone.now()
        row.decision_note = note
        update = ["status", "decided_at", "decision_note"]
        if to != ParticipantStatus.APPROVED:
            # A credential of a participant that is not approved must never
            # verify again, even if the status changes back later.
            row.credential_hash = ""
            update.append("credential_hash")
        row.save(update_fields=update)
    return row


_PAST = {"approve": "approved", "reject": "rejected", "revoke": "revoked"}
_HINT: dict[tuple[str, str], str] = {
    ("revoke", ParticipantStatus.PENDING): " Reject a pending request instead.",
    ("reject", ParticipantStatus.APPROVED): " Revoke an approved participant instead.",
    ("approve", ParticipantStatus.REVOKED): " A revoked participant cannot be approved again.",
}


def participant_approve(*, participant: Participant, by: Any) -> Participant:
    """Let a pending (or earlier rejected) data holder in; they can then download a join bundle."""
    return _decide(
        participant=participant, by=by, allowed_from=_APPROVABLE, to=ParticipantStatus.APPROVED, verb="approve"
    )


def participant_reject(*, participant: Participant, by: Any, reason: str = "") -> Participant:
    """Turn down a pending request; the reason, if any, is shown to the data holder."""
    return _decide(
        participant=participant,
        by=by,
        allowed_from=_REJECTABLE,
        to=ParticipantStatus.REJECTED,
        verb="reject",
        note=reason,
    )


def participant_revoke(*, participant: Participant, by: Any, reason: str = "") -> Participant:
    """Remove an approved participant: its credential stops verifying at once."""
    return _decide(
        participant=participant,
        by=by,
        allowed_from=_REVOCABLE,
        to=ParticipantStatus.REVOKED,
        verb="revoke",
        note=reason,
    )


def participant_decide(*, participant: Participant, by: Any, verb: str, reason: str = "") -> Participant:
    """Approve, reject or revoke by name (pages and API both take the decision as a word)."""
    if verb == "approve":
        return participant_approve(participant=participant, by=by)
    if verb == "reject":
        return participant_reject(participant=participant, by=by, reason=reason)
    if verb == "revoke":
        return participant_revoke(participant=participant, by=by, reason=reason)
    raise ApplicationError(f"unknown decision {verb!r}; expected approve, reject or revoke", field="verb")


def participant_issue_bundle(*, participant: Participant, by: Any) -> dict[str, Any]:
    """A fresh join bundle for an approved participant of a published problem.

    Each call issues a new credential and forgets the previous one, so a
    bundle left on an old machine stops working as soon as a new one is taken.
    """
    if not permissions.can_download_bundle(by, participant):
        raise NotAllowed("Only the data holder who joined can download this join bundle.")
    # Made (once) before the row locks below, never while holding them.
    ca_cert = ca_certificate(participant.problem_id)
    with transaction.atomic():
        row = _locked(participant)
        problem = row.problem
        if row.status != ParticipantStatus.APPROVED:
            raise Conflict(
                f"Your participation is {row.get_status_display().lower()}; "
                "only approved participants can download a join bundle."
            )
        if problem.state != ProblemState.PUBLISHED:
            raise Conflict(f"“{problem.title}” is not published, so it takes no clients now.")
        selectors = bundles.problem_selector_endpoints(problem)
        if not selectors:
            raise Conflict(
                "This problem has no selector addresses yet (no run has been started); "
                "download the bundle once the setter has started a run."
            )
        credential, digest = credential_new(row.pk)
        now = timezone.now()
        row.credential_hash = digest
        row.bundle_app_version = problem.app_version
        row.bundle_issued_at = now
        row.save(update_fields=["credential_hash", "bundle_app_version", "bundle_issued_at"])
    return bundles.bundle_build(
        participant=row, credential=credential, selectors=selectors, issued_at=now, ca_certificate=ca_cert
    )
