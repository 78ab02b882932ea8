"""Participant credentials: `fdp_<participant_id>_<secret>`.

A credential is shown exactly once, inside the join bundle; the database keeps
only its SHA-256. The participant id travels in clear so a selector (or the
monitoring code) can find the row to check against without scanning every
hash, and so a contribution can be attributed before the credential is
verified. The secret is 32 random bytes, which is why a plain (unsalted,
fast) hash is enough: nobody can brute-force 256 bits.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from webserver.participation.models import Participant, ParticipantStatus
from webserver.problems.models import ProblemState

PREFIX = "fdp"
# token_urlsafe(32) is 43 characters; the id a few more. Anything far longer is
# not one of ours and is refused before hashing.
MAX_CREDENTIAL_LENGTH = 200


def credential_hash(credential: str) -> str:
    """The hex SHA-256 stored in `Participant.credential_hash`."""
    return hashlib.sha256(credential.encode("utf-8")).hexdigest()


def credential_new(participant_id: int) -> tuple[str, str]:
    """A fresh credential for a participant and its hash: `(credential, hash)`."""
    credential = f"{PREFIX}_{participant_id}_{secrets.token_urlsafe(32)}"
    return credential, credential_hash(credential)


def credential_participant_id(credential: str) -> int | None:
    """The participant id a credential claims, without verifying it; None if malformed."""
    if not isinstance(credential, str) or len(credential) > MAX_CREDENTIAL_LENGTH:
        return None
    # The secret may itself contain "_", so split at most twice.
    parts = credential.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[2]:
        return None
    ident = parts[1]
    if not ident.isascii() or not ident.isdigit() or ident.startswith("0"):
        return None
    return int(ident)


def credential_verify(credential: str) -> Participant | None:
    """The approved participant of a published problem this credential belongs to, or None.

    Revoked, rejected and pending participants, participants of draft or
    archived problems, and credentials superseded by a newer bundle all fail.
    """
    participant_id = credential_participant_id(credential)
    if participant_id is None:
        return None
    participant = Participant.objects.select_related("problem").filter(pk=participant_id).first()
    if participant is None or not participant.credential_hash:
        return None
    # Compare before looking at the status so the time taken does not tell a
    # caller which of the two checks failed.
    matches = hmac.compare_digest(credential_hash(credential), participant.credential_hash)
    if not matches:
        return None
    if participant.status != ParticipantStatus.APPROVED or participant.problem.state != ProblemState.PUBLISHED:
        return None
    return participant
