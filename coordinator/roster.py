"""Who may join: the website's list of admitted participants, kept fresh for the selectors.

The coordinator polls `<report URL>participants` every few seconds with the
run's service token and, whenever the answer changes, hands it to every
selector over the Attach stream (the Hub sends the latest list to a selector
that attaches later). Selectors check each join against it and close the
sessions of participants who dropped out of it, so a revocation on the website
reaches every selector within one poll interval plus a round trip.

When the website is down the last list stays in force: known, unrevoked
participants keep training. The list is also saved (hashes only) in the
coordinator's state folder, so a coordinator restarted while the website is
down enforces the list its run last had; one that has never had an answer for
its run sends nothing, and its selectors admit no one until it has.

Without a website (`--report-url` empty: local development) there is no list
to enforce, and the selectors are told to admit any client.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from coordinator.hub import Hub
from coordinator.report import Target
from protos.coordinator.v1 import coordinator_pb2 as cpb

log = logging.getLogger(__name__)

POLL_INTERVAL = 3.0
MIN_GAP = 0.5

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class RosterError(Exception):
    """The website's answer could not be used; the message says why."""


def parse_roster(doc: Any) -> cpb.Participants:
    """The internal API's `{"participants": [{"participant", "credential_sha256"}]}` as a message."""
    if not isinstance(doc, dict) or not isinstance(doc.get("participants"), list):
        raise RosterError("expected an object with a 'participants' list")
    allowed = []
    for i, item in enumerate(doc["participants"]):
        if not isinstance(item, dict):
            raise RosterError(f"participants[{i}]: expected an object")
        participant, digest = item.get("participant"), item.get("credential_sha256")
        if not isinstance(participant, str) or not participant.isdigit():
            raise RosterError(f"participants[{i}].participant: expected a participant id, got {participant!r}")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise RosterError(f"participants[{i}].credential_sha256: expected 64 lower-case hex digits")
        allowed.append(cpb.AllowedParticipant(participant=participant, credential_sha256=digest))
    return cpb.Participants(allowed=allowed)


def fetch_roster(target: Target) -> cpb.Participants:
    """One GET of the list; raises RosterError (or OSError / HTTPException when unreachable)."""
    return parse_roster_body(fetch_roster_body(target))


def parse_roster_body(body: bytes) -> cpb.Participants:
    """The website's answer (JSON bytes) as a list; raises RosterError."""
    try:
        return parse_roster(json.loads(body))
    except ValueError as exc:
        raise RosterError(f"not JSON: {exc}") from exc


def fetch_roster_body(target: Target) -> bytes:
    """One GET of the list, unparsed; raises RosterError (or OSError / HTTPException when unreachable)."""
    conn = target.connection()
    try:
        conn.request("GET", target.path + "participants", headers={"Authorization": f"Bearer {target.token}"})
        resp = conn.getresponse()
        body = resp.read(16 * 1024 * 1024)
    finally:
        conn.close()
    if resp.status != 200:
        raise RosterError(f"HTTP {resp.status}: {body[:300].decode('utf-8', 'replace').strip()}")
    return body


def _roster_doc(roster: cpb.Participants) -> list[dict[str, str]]:
    return [{"participant": a.participant, "credential_sha256": a.credential_sha256} for a in roster.allowed]


class RosterPoller:
    """Polls the website in a daemon thread and feeds changes to the hub.

    `cache`: a file where every list received is saved, for this run (its report
    URL) only, and read back at start while the website has not answered yet.
    """

    def __init__(self, target: Target, hub: Hub, *, interval: float = POLL_INTERVAL, cache: Path | None = None) -> None:
        self.target = target
        self.hub = hub
        self.interval = interval
        self.cache = cache
        self._for = f"{target.scheme}://{target.host}:{target.port}{target.path}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="roster", daemon=True)
        self._failing = False
        # The last answer (its SHA-256) and the list it made: an unchanged answer, every poll
        # but a few, is not parsed again (90 ms for 10,000 participants, every 3 s).
        self._last: tuple[str, cpb.Participants] | None = None

    def start(self) -> None:
        self._restore()
        self._thread.start()

    def _restore(self) -> None:
        """Enforce the list saved by an earlier start of this run (until the website answers)."""
        if self.cache is None or not self.cache.exists():
            return
        try:
            doc = json.loads(self.cache.read_text())
            if not isinstance(doc, dict) or doc.get("for") != self._for:
                return  # another run's list (or another website's): never enforce it here
            roster = parse_roster(doc)
        except (OSError, ValueError, RosterError) as exc:
            log.warning("ignoring the saved participant list", extra={"path": str(self.cache), "error": str(exc)})
            return
        if self.hub.participants is None:
            self.hub.set_participants(roster)
            log.info(
                "enforcing the saved participant list until the website answers",
                extra={"participants": len(roster.allowed)},
            )

    def _save(self, roster: cpb.Participants) -> None:
        if self.cache is None:
            return
        try:
            tmp = self.cache.with_name(self.cache.name + ".tmp")
            tmp.write_text(json.dumps({"for": self._for, "participants": _roster_doc(roster)}))
            tmp.replace(self.cache)
        except OSError as exc:
            log.warning("cannot save the participant list", extra={"path": str(self.cache), "error": str(exc)})

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poll_soon(self) -> None:
        """Ask the website now rather than at the next interval (a selector met an unknown credential)."""
        self._wake.set()

    def poll_once(self, *, asked: bool = False) -> bool:
        """Fetch and publish the list; False when the website could not be asked.

        `asked`: a selector is waiting for this answer, so it is sent even unchanged.
        """
        try:
            body = fetch_roster_body(self.target)
            digest = hashlib.sha256(body).hexdigest()
            if self._last is not None and self._last[0] == digest:
                roster = self._last[1]
            else:
                roster = parse_roster_body(body)
                self._last = (digest, roster)
        except (RosterError, OSError, http.client.HTTPException) as exc:
            if not self._failing:
                # Once per outage, not every poll: the last list stays in force meanwhile.
                log.warning("cannot refresh the participant list; keeping the last one", extra={"error": str(exc)})
            self._failing = True
            return False
        if self._failing:
            log.info("participant list refreshed again")
        self._failing = False
        if self.hub.set_participants(roster, resend=asked):
            log.info("participant list changed", extra={"participants": len(roster.allowed)})
            self._save(roster)
        return True

    def _loop(self) -> None:
        asked = False
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once(asked=asked)
            asked = self._wake.wait(max(0.0, self.interval - (time.monotonic() - started)))
            self._wake.clear()
            # Requests on demand are bounded too: at most one poll per MIN_GAP.
            self._stop.wait(max(0.0, MIN_GAP - (time.monotonic() - started)))
