"""Account writes: sign-up, activation, log-in checks, profile changes, API tokens.

Pages and the API both call these; each raises ApplicationError (with the
input's name in `field`, or several inputs in `extra`) when a rule is broken,
and leaves nothing half-created.
"""

from __future__ import annotations

import logging
import smtplib
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes, force_str
from django.utils.http import urlsafe_base64_decode, urlsafe_base64_encode
from rest_framework import status
from rest_framework.authtoken.models import Token

from webserver.accounts import ratelimit
from webserver.accounts.models import Profile, Role
from webserver.accounts.tokens import email_confirmation_token
from webserver.errors import ApplicationError, NotAllowed

logger = logging.getLogger(__name__)

ORGANISATION_MAX = Profile._meta.get_field("organisation").max_length or 200


class TooManyAttempts(ApplicationError):
    """Log-in refused without checking the password: too many recent failures."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS


class AccountInactive(NotAllowed):
    """Right password, but the account cannot log in (not activated, or disabled)."""

    def __init__(self, message: str, *, needs_activation: bool) -> None:
        super().__init__(message)
        self.needs_activation = needs_activation


class EmailNotSent(ApplicationError):
    """The mail server refused or could not be reached; the change itself was saved."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE


def _field_errors(errors: dict[str, list[str]]) -> ApplicationError:
    """One ApplicationError carrying every input's messages (API: one key per input)."""
    first = next(iter(errors.values()))[0]
    return ApplicationError(first, extra=dict(errors))


def public_url(path: str) -> str:
    """`path` (from `reverse`) on the site's public address, for links that leave the site (e-mails, bundles)."""
    parts = urlsplit(settings.FEDOTA_PUBLIC_URL)
    return f"{parts.scheme}://{parts.netloc}{path}"


def public_origin() -> tuple[str, str]:
    """(scheme, host[:port]) of FEDOTA_PUBLIC_URL."""
    parts = urlsplit(settings.FEDOTA_PUBLIC_URL)
    return parts.scheme, parts.netloc


# --- sign-up and e-mail confirmation -------------------------------------------------------------


def _email_taken(email: str, *, exclude_pk: int | None = None) -> bool:
    users = get_user_model().objects.filter(email__iexact=email)
    if exclude_pk is not None:
        users = users.exclude(pk=exclude_pk)
    return users.exists()


def _check_email(
    email: str, errors: dict[str, list[str]], *, missing: str, taken: str, exclude_pk: int | None = None
) -> None:
    """Add the first problem with `email` (none given, malformed, or another account's) to `errors`."""
    if not email:
        errors["email"] = [missing]
        return
    try:
        validate_email(email)
    except ValidationError:
        errors["email"] = ["Enter a valid e-mail address."]
        return
    if _email_taken(email, exclude_pk=exclude_pk):
        errors["email"] = [taken]


def _check_organisation(role: str, organisation: str, errors: dict[str, list[str]]) -> None:
    if role == Role.HOLDER and not organisation:
        errors.setdefault("organisation", []).append(
            "Data holders must name their organisation: the hospital or site you will join problems for."
        )
    elif len(organisation) > ORGANISATION_MAX:
        errors.setdefault("organisation", []).append(f"At most {ORGANISATION_MAX} characters.")


def user_signup(
    *,
    username: str,
    email: str,
    password: str,
    role: str,
    organisation: str = "",
) -> Any:
    """Create an inactive account with its profile and mail the activation link.

    Every broken rule is reported at once (`extra` maps input names to messages);
    nothing is created then. If only the e-mail fails, the account exists and
    EmailNotSent says to ask for the link again.
    """
    user_model = get_user_model()
    username = user_model.normalize_username((username or "").strip())
    email = user_model.objects.normalize_email((email or "").strip())
    organisation = (organisation or "").strip()
    errors: dict[str, list[str]] = {}

    if not username:
        errors["username"] = ["Choose a username."]
    else:
        try:
            user_model._meta.get_field("username").run_validators(username)
        except ValidationError as exc:
            errors["username"] = list(exc.messages)
        else:
            # Case-insensitive, so that "Alice" cannot pose as "alice".
            if user_model.objects.filter(username__iexact=username).exists():
                errors["username"] = ["That username is taken; choose another."]

    _check_email(
        email,
        errors,
        missing="Enter your e-mail address; the activation link is sent there.",
        taken="An account with this e-mail address already exists. Log in, or reset its password.",
    )

    if role not in Role.values:
        errors["role"] = ["Choose a role: problem setter or data holder."]
    else:
        _check_organisation(role, organisation, errors)

    if not password:
        errors["password"] = ["Choose a password."]
    else:
        try:
            password_validation.validate_password(password, user=user_model(username=username, email=email))
        except ValidationError as exc:
            errors["password"] = list(exc.messages)

    if errors:
        raise _field_errors(errors)

    try:
        with transaction.atomic():
            user = user_model.objects.create_user(username=username, email=email, password=password, is_active=False)
            Profile.objects.create(user=user, role=role, organisation=organisation, email_verified=False)
    except IntegrityError as exc:
        # Another sign-up took the name between our check and the insert.
        raise ApplicationError("That username is taken; choose another.", field="username") from exc

    ratelimit.ACTIVATION_EMAIL.record([f"email:{email.casefold()}"])
    confirmation_email_send(user=user)
    return user


def confirmation_email_send(*, user: Any) -> None:
    """Mail `user` the link that activates the account / confirms its address.

    Raises EmailNotSent when the mail server fails; what was saved stays saved.
    """
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = email_confirmation_token.make_token(user)
    context = {
        "user": user,
        "activating": not user.is_active,
        "link": public_url(reverse("activate", kwargs={"uidb64": uid, "token": token})),
        "resend_link": public_url(reverse("resend-activation")),
        "valid_days": max(1, settings.PASSWORD_RESET_TIMEOUT // 86400),
        "site_url": settings.FEDOTA_PUBLIC_URL,
    }
    subject = render_to_string("accounts/email/confirm_subject.txt", context).strip()
    body = render_to_string("accounts/email/confirm_body.txt", context)
    try:
        send_mail(subject, body, None, [user.email])
    except (OSError, smtplib.SMTPException) as exc:
        logger.exception("could not send the confirmation e-mail to user %s", user.pk)
        raise EmailNotSent(
            "Your details were saved, but the e-mail with your link could not be sent. "
            "Ask for it again in a few minutes with “resend activation e-mail”."
        ) from exc


def activation_resend(*, email: str) -> None:
    """Send a fresh link to every not-yet-confirmed account with this address.

    Says nothing either way, so that the form cannot be used to learn which
    addresses have accounts; at most a few mails per address and hour.
    """
    email = (email or "").strip()
    if not email:
        return
    key = [f"email:{email.casefold()}"]
    if ratelimit.ACTIVATION_EMAIL.retry_after(key):
        return
    users = get_user_model().objects.filter(email__iexact=email, profile__email_verified=False)
    sent = False
    for user in users.select_related("profile"):
        try:
            confirmation_email_send(user=user)
            sent = True
        except EmailNotSent:
            pass  # logged already; the answer stays the same
    if sent:
        ratelimit.ACTIVATION_EMAIL.record(key)


def user_activate(*, uidb64: str, token: str) -> tuple[Any, bool]:
    """Check a confirmation link; activate the account and mark its address confirmed.

    Returns (user, was_activated): was_activated is False when an active
    account only confirmed a changed address.
    """
    invalid = ApplicationError(
        "This link is invalid or has expired. Links work once and for a few days; "
        "if you already used it, just log in. Otherwise ask for a new one."
    )
    user_model = get_user_model()
    try:
        pk = force_str(urlsafe_base64_decode(uidb64))
        user = user_model.objects.select_related("profile").get(pk=pk)
    except (TypeError, ValueError, OverflowError, ValidationError, user_model.DoesNotExist):
        raise invalid from None
    profile = getattr(user, "profile", None)
    # A confirmed address means the link was used (or the account was later disabled by an admin,
    # which an old link must not undo); the token's hash covers that too, this says it plainly.
    if profile is None or profile.email_verified or not email_confirmation_token.check_token(user, token):
        raise invalid
    was_activated = not user.is_active
    with transaction.atomic():
        user.is_active = True
        user.save(update_fields=["is_active"])
        profile.email_verified = True
        profile.save(update_fields=["email_verified"])
    return user, was_activated


# --- log-in ---------------------------------------------------------------------------------------


def user_authenticate(*, request: HttpRequest | None, username: str, password: str) -> Any:
    """The user these credentials name, under the log-in limit.

    After 5 failures within 15 minutes for one username or one client address,
    that key is refused (TooManyAttempts) without looking at the password.
    An inactive account with the right password gets AccountInactive.
    """
    username = (username or "").strip()
    keys = ratelimit.login_keys(username, ratelimit.client_address(request))
    wait = ratelimit.LOGIN.retry_after(keys)
    if wait:
        logger.warning("log-in refused for %s: too many failures (%d s left)", keys, wait)
        raise TooManyAttempts(f"Too many failed log-in attempts; try again in {ratelimit.minutes_text(wait)}.")
    if not username or not password:
        raise ApplicationError("Enter your username and password.")

    user = authenticate(request, username=username, password=password)
    if user is not None:
        # Only the username's count: resetting the address's would let one valid account unlock guessing.
        ratelimit.LOGIN.reset(keys[:1])
        return user

    candidate = get_user_model().objects.select_related("profile").filter(username=username, is_active=False).first()
    if candidate is not None and candidate.check_password(password):
        profile = getattr(candidate, "profile", None)
        if profile is not None and not profile.email_verified:
            raise AccountInactive(
                "This account is not activated yet. Open the link in the e-mail we sent when you signed up, "
                "or ask for a new one.",
                needs_activation=True,
            )
        raise AccountInactive(
            "This account has been disabled. Contact the site's administrator.", needs_activation=False
        )

    ratelimit.LOGIN.record(keys)
    raise ApplicationError("That username and password do not match an account. Both are case-sensitive.")


# --- profile and API token -----------------------------------------------------------------------


def profile_update(*, user: Any, email: str, organisation: str) -> bool:
    """Change the address and organisation; a new address must be confirmed again.

    Returns True when the address changed (a confirmation link was mailed).
    """
    user_model = get_user_model()
    email = user_model.objects.normalize_email((email or "").strip())
    organisation = (organisation or "").strip()
    profile = getattr(user, "profile", None)
    errors: dict[str, list[str]] = {}
    _check_email(
        email,
        errors,
        missing="Enter your e-mail address.",
        taken="Another account uses this e-mail address.",
        exclude_pk=user.pk,
    )
    if profile is not None:
        _check_organisation(profile.role, organisation, errors)
    if errors:
        raise _field_errors(errors)

    email_changed = email.casefold() != (user.email or "").casefold()
    with transaction.atomic():
        user.email = email
        user.save(update_fields=["email"])
        if profile is not None:
            profile.organisation = organisation
            if email_changed:
                profile.email_verified = False
            profile.save(update_fields=["organisation", "email_verified"])
    if email_changed and profile is not None:
        confirmation_email_send(user=user)
    return email_changed and profile is not None


def api_token_regenerate(*, user: Any) -> str:
    """A new REST API token for `user`; the previous one stops working at once."""
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        return str(Token.objects.create(user=user).key)


def api_token_obtain(*, request: HttpRequest | None, username: str, password: str) -> str:
    """The API token for these credentials (created on first use), under the log-in limit."""
    user = user_authenticate(request=request, username=username, password=password)
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)
