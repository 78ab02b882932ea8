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
from webserver.participation import bundles, queries
from webserver.participation.credentials import credential_new
from webserver.participation.models import Participant, ParticipantStatus
from webserver.problems.models import JoinPolicy, Problem, ProblemState
from webserver.problems.pki import ca_certificate

SITE_NAME_MAX = 120
MESSAGE_MAX = 2000
NOTE_MAX = 2000
# More partitions than any federation has sites; bounds what a setter can type.
MAX_PARTITIONS = 100_000

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
            partition: int | None = None
            if auto_approve:
                # When the setter's partitions are all taken, the request waits for the setter.
                partition = _next_partition(problem)
                auto_approve = partition is not None
            return Participant.objects.create(
                problem=problem,
                user=user,
                site_name=site_name,
                contact_email=contact_email,
                message=message,
                status=ParticipantStatus.APPROVED if auto_approve else ParticipantStatus.PENDING,
                decided_at=now if auto_approve else None,
                partition_id=partition,
            )
    except IntegrityError as exc:
        existing = Participant.objects.get(problem=problem, user=user)
        raise Conflict(_already_asked(existing), extra={"participant_id": existing.pk}) from exc


def _locked(participant: Participant) -> Participant:
    """The row again, locked, so two setters clicking at once decide one after the other."""
    return Participant.objects.select_for_update().select_related("problem").get(pk=participant.pk)


def _next_partition(problem: Problem) -> int | None:
    """The partition id the next approved site gets: the lowest free one (so, in order of approval).

    Locks the problem row, so two approvals at once take turns; None when the setter
    fixed the number of partitions and every one is taken.
    """
    locked = Problem.objects.select_for_update().get(pk=problem.pk)
    taken = set(
        Participant.objects.filter(problem_id=problem.pk, partition_id__isnull=False).values_list(
            "partition_id", flat=True
        )
    )
    partition = next(i for i in range(len(taken) + 1) if i not in taken)
    if locked.num_partitions and partition >= locked.num_partitions:
        return None
    return partition


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
        update = ["status", "decided_at", "decision_note", "partition_id"]
        if to == ParticipantStatus.APPROVED:
            row.partition_id = _next_partition(row.problem)
            if row.partition_id is None:
                raise Conflict(
                    f"{row.site_name} cannot be approved: all {row.problem.num_partitions} partitions are taken. "
                    "Raise the number of partitions, or revoke a site, first."
                )
        else:
            # A credential of a participant that is not approved must never
            # verify again, even if the status changes back later.
            row.credential_hash = ""
            row.partition_id = None  # free for the next site approved
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


def participant_set_partition(*, participant: Participant, by: Any, partition_id: int) -> Participant:
    """Give an approved site another `partition-id` (0 ≤ id < num-partitions).

    An id another site holds is swapped with it, so ids stay unique without a
    spare one. Either site keeps its old id until its data holder downloads a new
    join bundle; the page says so.
    """
    if not permissions.can_decide_participant(by, participant):
        raise NotAllowed("Only the problem's setter or a site admin can change partition ids.")
    if isinstance(partition_id, bool) or not isinstance(partition_id, int) or partition_id < 0:
        raise ApplicationError(f"A partition id is a whole number from 0; got {partition_id!r}.", field="partition_id")
    with transaction.atomic():
        # Participant first, then problem: the order approvals lock them in.
        row = _locked(participant)
        problem = Problem.objects.select_for_update().get(pk=participant.problem_id)
        if row.status != ParticipantStatus.APPROVED or row.partition_id is None:
            raise Conflict(
                f"{row.site_name} is {row.get_status_display().lower()}; only approved sites have a partition."
            )
        count = problem.num_partitions or queries.partitioned_sites(problem).count()
        if partition_id >= count:
            source = "the number of partitions you set" if problem.num_partitions else "one per approved site"
            raise ApplicationError(
                f"partition-id must be below num-partitions ({count}: {source}); got {partition_id}.",
                field="partition_id",
            )
        if partition_id == row.partition_id:
            return row
        other = Participant.objects.select_for_update().filter(problem=problem, partition_id=partition_id).first()
        previous = row.partition_id
        row.partition_id = None
        row.save(update_fields=["partition_id"])
        if other is not None:
            other.partition_id = previous
            other.save(update_fields=["partition_id"])
        row.partition_id = partition_id
        row.save(update_fields=["partition_id"])
    return row


def problem_set_num_partitions(*, problem: Problem, by: Any, num_partitions: int | None) -> Problem:
    """Fix `num-partitions` for every site (None: one per approved site).

    It cannot go below a partition id in use: change those sites' ids first.
    """
    if not permissions.owns_problem(by, problem):
        raise NotAllowed("Only the problem's setter or a site admin can change the number of partitions.")
    if num_partitions is not None and (
        isinstance(num_partitions, bool)
        or not isinstance(num_partitions, int)
        or not 1 <= num_partitions <= MAX_PARTITIONS
    ):
        raise ApplicationError(
            f"num-partitions is a whole number from 1 to {MAX_PARTITIONS}, or empty for one per approved site; "
            f"got {num_partitions!r}.",
            field="num_partitions",
        )
    with transaction.atomic():
        row = Problem.objects.select_for_update().get(pk=problem.pk)
        if num_partitions is not None:
            highest = queries.partitioned_sites(row).order_by("-partition_id").first()
            if highest is not None and highest.partition_id is not None and highest.partition_id >= num_partitions:
                raise ApplicationError(
                    f"{highest.site_name} has partition-id {highest.partition_id}, so num-partitions must be at least "
                    f"{highest.partition_id + 1}; give that site a lower id first.",
                    field="num_partitions",
                )
        row.num_partitions = num_partitions
        row.save(update_fields=["num_partitions", "updated_at"])
    return row


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
        node_config = queries.participant_node_config(row)
        row.credential_hash = digest
        row.bundle_app_version = problem.app_version
        row.bundle_issued_at = now
        row.bundle_partition_id = node_config["partition-id"] if node_config else None
        row.bundle_num_partitions = node_config["num-partitions"] if node_config else None
        row.save(
            update_fields=[
                "credential_hash",
                "bundle_app_version",
                "bundle_issued_at",
                "bundle_partition_id",
                "bundle_num_partitions",
            ]
        )
    return bundles.bundle_build(
        participant=row,
        credential=credential,
        selectors=selectors,
        issued_at=now,
        ca_certificate=ca_cert,
        node_config=node_config,
    )
