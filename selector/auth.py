"""Who may join: participant credentials checked against the coordinator's list.

A credential is `fdp_<participant id>_<secret>`. The website keeps only its
SHA-256; the coordinator relays the list of admitted participants (id and
hash) from the website (coordinator/roster.py), and this authenticator admits
a client when the hash of what it presents equals the hash listed for its
participant id — compared in constant time. Nothing else is accepted: a
credential of another problem names a participant this problem does not list.

Until a list has arrived the selector admits no one (UNAVAILABLE: clients
retry). A list marked `open` (a coordinator without a website, for local
development) admits any client.

A credential the list does not admit may be a bundle downloaded a moment
ago: the selector then asks the coordinator for a fresh list (`refresh`) and
waits up to `refresh_wait` seconds for it before refusing.

Failed attempts are counted per source address: after `max_failures` within
`window` seconds a source is refused outright (RESOURCE_EXHAUSTED) until the
window has passed, so guessing credentials costs the guesser, not the selector.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable

from protos.coordinator.v1 import coordinator_pb2 as cpb
from selector.core import SelectorError, participant_of

log = logging.getLogger(__name__)


class RosterAuthenticator:
    def __init__(
        self,
        *,
        refresh: Callable[[], None] | None = None,
        refresh_wait: float = 4.0,
        max_failures: int = 10,
        window: float = 60.0,
        max_sources: int = 10_000,
    ) -> None:
        self._lock = threading.Lock()
        self._updated = threading.Condition(self._lock)
        self._version = 0
        self.refresh = refresh
        self.refresh_wait = refresh_wait
        self._open = False
        self._allowed: dict[str, str] | None = None
        self.max_failures = max_failures
        self.window = window
        self.max_sources = max_sources
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self.refused = 0  # every refused attempt, for logs and tests

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._open or self._allowed is not None

    def update(self, roster: cpb.Participants) -> set[str]:
        """Adopt a new list; returns the participants whose admission it withdrew.

        Withdrawn: no longer listed (revoked), or listed with another hash (a new
        bundle was downloaded, so the old credential stops working).
        """
        allowed = {p.participant: p.credential_sha256 for p in roster.allowed}
        with self._lock:
            before, was_open = self._allowed, self._open
            self._open = roster.open
            self._allowed = None if roster.open else allowed
            self._version += 1
            self._updated.notify_all()
        if roster.open and not was_open:
            log.warning("admitting any client: the coordinator has no participant list (local development)")
        if roster.open or before is None:
            return set()
        return {pid for pid, digest in before.items() if allowed.get(pid) != digest}

    def admits(self, participant: str) -> bool:
        """Is `participant` still listed (for sessions already admitted)?"""
        with self._lock:
            return self._open or (self._allowed is not None and participant in self._allowed)

    def check(self, credential: str, source: str = "") -> str | None:
        """The participant id of a valid credential; None to refuse (raises while there is no list)."""
        self._throttle(source)
        with self._lock:
            is_open, allowed = self._open, self._allowed
        if is_open:
            return participant_of(credential)
        if allowed is None:
            raise SelectorError(
                "UNAVAILABLE", "this selector has not yet received its list of participants; retry shortly"
            )
        participant = participant_of(credential)
        if _matches(allowed, participant, credential):
            return participant
        if self.refresh is not None:
            with self._lock:
                seen = self._version
            self.refresh()
            with self._lock:
                self._updated.wait_for(lambda: self._version != seen, timeout=self.refresh_wait)
                allowed = self._allowed if not self._open else None
            if self._open or (allowed is not None and _matches(allowed, participant, credential)):
                return participant
        self._fail(source)
        return None

    def _throttle(self, source: str) -> None:
        if not source:
            return
        now = time.monotonic()
        with self._lock:
            recent = self._failures.get(source)
            if recent is None:
                return
            while recent and recent[0] < now - self.window:
                recent.popleft()
            if len(recent) >= self.max_failures:
                wait = recent[0] + self.window - now
                raise SelectorError(
                    "RESOURCE_EXHAUSTED",
                    f"too many refused credentials from this address; try again in {wait:.0f} s",
                )

    def _fail(self, source: str) -> None:
        self.refused += 1
        if not source:
            return
        with self._lock:
            recent = self._failures.pop(source, None) or collections.deque(maxlen=self.max_failures)
            recent.append(time.monotonic())
            self._failures[source] = recent  # most recent last
            while len(self._failures) > self.max_sources:
                self._failures.popitem(last=False)
        log.warning("credential refused", extra={"source": source, "refused_total": self.refused})


def _matches(allowed: dict[str, str], participant: str, credential: str) -> bool:
    expected = allowed.get(participant, "0" * 64)
    presented = hashlib.sha256(credential.encode()).hexdigest()
    # Compared even for an unknown id, so timing does not tell which ids exist.
    return hmac.compare_digest(presented, expected) and participant in allowed
