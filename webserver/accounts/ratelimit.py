"""Sliding-window attempt limits kept in Django's cache.

One small mechanism for every limit on the site: log-in (per username and per
client address) and the e-mails anyone may trigger (activation resends). The
cache is per process with the default LocMemCache; a deployment with several
web workers should point CACHES at Redis so that all workers share the counts.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.cache import cache
from django.http import HttpRequest


@dataclass(frozen=True)
class Limit:
    """At most `attempts` recorded events per key within `window` seconds."""

    name: str
    attempts: int
    window: int

    def _cache_key(self, key: str) -> str:
        # Hashed so that any username or address is a valid cache key (memcached refuses spaces).
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"fedota:ratelimit:{self.name}:{digest}"

    def _recent(self, key: str, now: float) -> list[float]:
        stamps = cache.get(self._cache_key(key)) or []
        return [t for t in stamps if t > now - self.window]

    def retry_after(self, keys: Iterable[str]) -> int:
        """Seconds until every key may try again; 0 when none is limited."""
        now = time.time()
        wait = 0.0
        for key in keys:
            recent = self._recent(key, now)
            if len(recent) >= self.attempts:
                # Allowed again once the oldest of the last `attempts` events leaves the window.
                wait = max(wait, recent[-self.attempts] + self.window - now)
        return math.ceil(wait) if wait > 0 else 0

    def record(self, keys: Iterable[str]) -> None:
        """Count one event against every key."""
        now = time.time()
        for key in keys:
            # Only the newest `attempts` stamps matter to retry_after, so the entry stays small.
            recent = [*self._recent(key, now), now][-self.attempts :]
            cache.set(self._cache_key(key), recent, timeout=self.window)

    def reset(self, keys: Iterable[str]) -> None:
        """Forget every event of these keys."""
        cache.delete_many([self._cache_key(key) for key in keys])


LOGIN = Limit("login", attempts=5, window=15 * 60)
ACTIVATION_EMAIL = Limit("activation-email", attempts=3, window=60 * 60)


def client_address(request: HttpRequest | None) -> str:
    """The address the request came from.

    REMOTE_ADDR only: X-Forwarded-For is set by whoever sends the request, so
    trusting it would let an attacker pick a fresh address for every guess.
    """
    if request is None:
        return "unknown"
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def login_keys(username: str, address: str) -> list[str]:
    # Usernames are compared case-insensitively so that "Alice" and "alice" share one budget.
    return [f"user:{username.strip().casefold()}", f"addr:{address}"]


def minutes_text(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"
