"""One-time links that confirm an e-mail address (account activation, e-mail change)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.tokens import PasswordResetTokenGenerator


class EmailConfirmationTokenGenerator(PasswordResetTokenGenerator):
    """Django's signed, expiring token, with its own salt and state.

    A separate salt keeps these tokens from working as password-reset tokens
    and the other way round. Hashing `is_active` and `email_verified` makes a
    link stop working once it has been used, and changing the address again
    invalidates a link sent to the previous one. Expiry: PASSWORD_RESET_TIMEOUT.
    """

    key_salt = "webserver.accounts.tokens.EmailConfirmationTokenGenerator"

    def _make_hash_value(self, user: Any, timestamp: int) -> str:
        profile = getattr(user, "profile", None)
        verified = profile.email_verified if profile is not None else True
        return f"{super()._make_hash_value(user, timestamp)}|{user.is_active}|{verified}"


email_confirmation_token = EmailConfirmationTokenGenerator()
