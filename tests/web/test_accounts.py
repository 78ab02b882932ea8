"""Accounts: sign-up with e-mail activation, log-in limits, password reset, profile, API tokens."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.urls import reverse

from tests.web.conftest import PASSWORD
from webserver.accounts import ratelimit
from webserver.accounts.models import Profile

pytestmark = [pytest.mark.web, pytest.mark.django_db]

PUBLIC = "https://fedota.example.org"
GOOD_PASSWORD = "violet tortoise umbrella 93"


@pytest.fixture(autouse=True)
def _fresh(settings: Any) -> None:
    # Cache and password hasher are reset by tests/web/conftest.py for every test.
    settings.FEDOTA_PUBLIC_URL = PUBLIC


def signup_data(**overrides: str) -> dict[str, str]:
    data = {
        "username": "alice",
        "email": "alice@hospital.example",
        "password": GOOD_PASSWORD,
        "password_confirm": GOOD_PASSWORD,
        "role": "holder",
        "organisation": "St Mary's Hospital",
    }
    data.update(overrides)
    return data


def link_in(message: Any) -> str:
    # The one-time link, not the site address or the "ask again" page the message also names.
    match = re.search(r"https?://\S+/(?:activate|reset)/[^/\s]+/[^/\s]+/", message.body)
    assert match, message.body
    return match.group(0)


def path_of(url: str) -> str:
    assert url.startswith(PUBLIC + "/"), url
    return url[len(PUBLIC) :]


def text(response: Any) -> str:
    return response.content.decode()


def login(client: Client, username: str, password: str, **extra: Any) -> Any:
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


# --- sign-up and activation ----------------------------------------------------------------------


def test_signup_mails_a_link_that_activates_the_account_and_logs_in(client: Client) -> None:
    response = client.post(reverse("signup"), signup_data())
    assert response.status_code == 302
    assert response["Location"] == reverse("signup-done")
    done = client.get(response["Location"])
    assert "Check your e-mail" in text(done)
    assert "alice@hospital.example" in text(done)

    user = get_user_model().objects.get(username="alice")
    assert not user.is_active
    assert user.profile.role == "holder"
    assert user.profile.organisation == "St Mary's Hospital"
    assert not user.profile.email_verified

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@hospital.example"]
    assert "Activate" in message.subject
    link = link_in(message)
    assert link.startswith(PUBLIC + "/accounts/activate/")

    response = client.get(path_of(link), follow=True)
    assert response.redirect_chain[-1][0] == reverse("home")
    assert "your account is active" in text(response)
    assert response.context["user"].is_authenticated
    assert response.context["user"].username == "alice"
    user.refresh_from_db()
    assert user.is_active
    assert user.profile.email_verified

    # A link works once.
    client.logout()
    again = client.get(path_of(link))
    assert again.status_code == 400
    assert "invalid or has expired" in text(again)


@pytest.mark.parametrize("debug", [True, False])
def test_signup_done_page_points_at_the_console_without_a_mail_server(
    client: Client, settings: Any, debug: bool
) -> None:
    # The demo runs with DEBUG off: the console backend alone decides the hint.
    settings.DEBUG = debug
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    response = client.post(reverse("signup"), signup_data(), follow=True)
    assert "printed in the web server's log" in text(response)


def test_signup_done_page_says_nothing_of_a_console_with_a_mail_server(client: Client, settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    response = client.post(reverse("signup"), signup_data(), follow=True)
    assert "console backend" not in text(response)


def test_setter_may_sign_up_without_organisation(client: Client) -> None:
    response = client.post(reverse("signup"), signup_data(role="setter", organisation=""))
    assert response.status_code == 302
    assert Profile.objects.get(user__username="alice").role == "setter"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"password": "short", "password_confirm": "short"}, "password", "too short"),
        ({"password": "password123", "password_confirm": "password123"}, "password", "too common"),
        ({"password": "83749201938", "password_confirm": "83749201938"}, "password", "entirely numeric"),
        ({"password_confirm": "something else 123"}, "password_confirm", "The two passwords differ"),
        ({"organisation": "  "}, "organisation", "Data holders must name their organisation"),
        ({"role": "admin"}, "role", "Select a valid choice"),
        ({"email": "not-an-address"}, "email", "valid email"),
        ({"username": "bad name!"}, "username", "Enter a valid username"),
        ({"username": ""}, "username", "This field is required"),
    ],
)
def test_signup_with_bad_input_shows_the_error_and_creates_nothing(
    client: Client, overrides: dict[str, str], field: str, message: str
) -> None:
    response = client.post(reverse("signup"), signup_data(**overrides))
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors, errors
    assert any(message in e for e in errors[field]), errors
    assert message.replace("'", "&#x27;") in text(response)
    assert not get_user_model().objects.exists()
    assert not Profile.objects.exists()
    assert mail.outbox == []


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"username": "Owner"}, "username", "That username is taken"),
        ({"email": "OWNER@example.org"}, "email", "already exists"),
    ],
)
def test_signup_with_a_taken_username_or_email_is_refused(
    client: Client, users: dict[str, Any], overrides: dict[str, str], field: str, message: str
) -> None:
    before = get_user_model().objects.count()
    response = client.post(reverse("signup"), signup_data(**overrides))
    assert response.status_code == 200
    assert any(message in e for e in response.context["form"].errors[field])
    assert get_user_model().objects.count() == before
    assert mail.outbox == []


def test_signup_reports_every_broken_rule_at_once(client: Client, users: dict[str, Any]) -> None:
    response = client.post(
        reverse("signup"),
        signup_data(username="owner", email="holder@example.org", password="abc", password_confirm="abc"),
    )
    errors = response.context["form"].errors
    assert {"username", "email", "password"} <= set(errors)


def test_signup_form_enforces_csrf() -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("signup"), signup_data())
    assert response.status_code == 403
    assert not get_user_model().objects.filter(username="alice").exists()

    client.get(reverse("signup"))
    token = client.cookies["csrftoken"].value
    response = client.post(reverse("signup"), {**signup_data(), "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert get_user_model().objects.filter(username="alice").exists()


@pytest.mark.parametrize("path_args", [("bm9wZQ", "abc-123"), ("!!!", "x"), ("MQ", "1-2")])
def test_invalid_activation_link_shows_a_clear_page_with_a_resend_form(
    client: Client, path_args: tuple[str, str]
) -> None:
    response = client.get(reverse("activate", args=path_args))
    assert response.status_code == 400
    body = text(response)
    assert "This link does not work" in body
    assert "invalid or has expired" in body
    assert f'action="{reverse("resend-activation")}"' in body


def test_activation_link_for_another_user_does_not_work(client: Client) -> None:
    client.post(reverse("signup"), signup_data())
    client.post(reverse("signup"), signup_data(username="bob", email="bob@clinic.example"))
    alice_link, bob_link = (path_of(link_in(m)) for m in mail.outbox)
    alice_uid = alice_link.split("/")[3]
    bob_token = bob_link.split("/")[4]
    response = client.get(reverse("activate", args=(alice_uid, bob_token)))
    assert response.status_code == 400
    assert not get_user_model().objects.get(username="alice").is_active


def test_resend_activation_sends_a_new_working_link_but_reveals_nothing(client: Client, users: dict[str, Any]) -> None:
    client.post(reverse("signup"), signup_data())
    mail.outbox.clear()

    answers = []
    for email in ["ALICE@hospital.example", "nobody@nowhere.example", "owner@example.org"]:
        response = client.post(reverse("resend-activation"), {"email": email}, follow=True)
        page = text(response).split("<main", 1)[1]
        answers.append(re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", page))
    assert answers[0] == answers[1] == answers[2]
    assert "If an account with that address is waiting for activation" in answers[0]
    # Only the unactivated account got mail; the active one and the unknown address got none.
    assert [m.to for m in mail.outbox] == [["alice@hospital.example"]]

    response = client.get(path_of(link_in(mail.outbox[0])))
    assert response.status_code == 302
    assert get_user_model().objects.get(username="alice").is_active


def test_resend_activation_is_limited_per_address(client: Client) -> None:
    client.post(reverse("signup"), signup_data())  # the first mail counts too
    for _ in range(5):
        client.post(reverse("resend-activation"), {"email": "alice@hospital.example"})
    assert len(mail.outbox) == ratelimit.ACTIVATION_EMAIL.attempts


# --- log-in ---------------------------------------------------------------------------------------


def test_login_and_logout(client: Client, users: dict[str, Any]) -> None:
    response = login(client, "owner", PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    home = client.get(reverse("home"))
    assert "owner" in text(home)
    assert "Log out" in text(home)
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert "Log in" in text(client.get(reverse("home")))


def test_wrong_password_is_refused_with_a_message(client: Client, users: dict[str, Any]) -> None:
    response = login(client, "owner", "wrong password")
    assert response.status_code == 200
    assert "do not match an account" in text(response)
    assert not response.context["user"].is_authenticated


def test_unactivated_account_cannot_log_in_and_is_told_why(client: Client) -> None:
    client.post(reverse("signup"), signup_data())
    response = login(client, "alice", GOOD_PASSWORD)
    assert response.status_code == 200
    body = text(response)
    assert "not activated yet" in body
    assert reverse("resend-activation") in body
    assert not response.context["user"].is_authenticated


def test_unactivated_account_with_wrong_password_learns_nothing(client: Client) -> None:
    client.post(reverse("signup"), signup_data())
    response = login(client, "alice", "wrong password")
    assert "not activated" not in text(response)
    assert "do not match an account" in text(response)


def test_disabled_account_is_told_to_contact_the_admin(client: Client, users: dict[str, Any]) -> None:
    users["holder"].is_active = False
    users["holder"].save()
    response = login(client, "holder", PASSWORD)
    assert "has been disabled" in text(response)
    assert reverse("resend-activation") not in text(response).split("<main", 1)[1].split("</form>", 1)[0]


def test_sixth_failed_login_is_refused_even_with_the_right_password(client: Client, users: dict[str, Any]) -> None:
    for _ in range(5):
        response = login(client, "owner", "wrong password")
        assert "do not match an account" in text(response)
    response = login(client, "owner", "wrong password")
    assert "Too many failed log-in attempts; try again in 15 minutes." in text(response)
    response = login(client, "owner", PASSWORD)
    assert "Too many failed log-in attempts" in text(response)
    assert not response.context["user"].is_authenticated
    # The limit is per username, whatever its case, and from any address.
    response = login(client, "OWNER", PASSWORD, REMOTE_ADDR="10.9.9.9")
    assert "Too many failed log-in attempts" in text(response)
    # Other accounts from another address are not affected.
    assert login(client, "holder", PASSWORD, REMOTE_ADDR="10.9.9.9").status_code == 302


def test_login_limit_applies_per_address(client: Client, users: dict[str, Any]) -> None:
    for name in ["a", "b", "c", "d", "e"]:
        login(client, name, "guess", REMOTE_ADDR="10.0.0.7")
    response = login(client, "owner", PASSWORD, REMOTE_ADDR="10.0.0.7")
    assert "Too many failed log-in attempts" in text(response)
    assert login(client, "owner", PASSWORD, REMOTE_ADDR="10.0.0.8").status_code == 302


def test_login_limit_ends_after_the_window(
    client: Client, users: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(ratelimit.time, "time", lambda: now[0])
    for _ in range(5):
        login(client, "owner", "wrong password")
    now[0] += 10 * 60
    assert "try again in 5 minutes" in text(login(client, "owner", PASSWORD))
    now[0] += 4 * 60 + 30
    assert "try again in 1 minute." in text(login(client, "owner", PASSWORD))
    now[0] += 31
    assert login(client, "owner", PASSWORD).status_code == 302


def test_successful_login_clears_the_username_count(client: Client, users: dict[str, Any]) -> None:
    for _ in range(4):
        login(client, "owner", "wrong password", REMOTE_ADDR="10.1.1.1")
    assert login(client, "owner", PASSWORD, REMOTE_ADDR="10.1.1.2").status_code == 302
    client.logout()
    for _ in range(4):
        login(client, "owner", "wrong password", REMOTE_ADDR="10.1.1.3")
    assert login(client, "owner", PASSWORD, REMOTE_ADDR="10.1.1.4").status_code == 302


# --- passwords ------------------------------------------------------------------------------------


def test_password_reset_mails_a_public_link_that_sets_a_new_password(client: Client, users: dict[str, Any]) -> None:
    response = client.post(reverse("password_reset"), {"email": "owner@example.org"}, HTTP_HOST="internal:8000")
    assert response.status_code == 302
    assert response["Location"] == reverse("password_reset_done")
    assert len(mail.outbox) == 1
    link = link_in(mail.outbox[0])
    assert link.startswith(PUBLIC + "/accounts/password/reset/")

    response = client.get(path_of(link), follow=True)
    form_url = response.redirect_chain[-1][0]
    assert "Choose a new password" in text(response)
    new = "quiet lantern harbour 58"
    response = client.post(form_url, {"new_password1": new, "new_password2": new})
    assert response.status_code == 302
    assert response["Location"] == reverse("password_reset_complete")

    assert "do not match" in text(login(client, "owner", PASSWORD))
    assert login(client, "owner", new).status_code == 302

    # Used once, the link no longer works.
    client.logout()
    assert "This link does not work" in text(client.get(path_of(link), follow=True))


def test_password_reset_reveals_nothing_and_mails_nobody_for_unknown_address(client: Client) -> None:
    response = client.post(reverse("password_reset"), {"email": "ghost@example.org"})
    assert response["Location"] == reverse("password_reset_done")
    assert mail.outbox == []


def test_password_reset_rejects_a_weak_new_password(client: Client, users: dict[str, Any]) -> None:
    client.post(reverse("password_reset"), {"email": "owner@example.org"})
    response = client.get(path_of(link_in(mail.outbox[0])), follow=True)
    form_url = response.redirect_chain[-1][0]
    response = client.post(form_url, {"new_password1": "123", "new_password2": "123"})
    assert response.status_code == 200
    assert "too short" in text(response)
    assert login(client, "owner", PASSWORD).status_code == 302


def test_password_change(client: Client, users: dict[str, Any]) -> None:
    client.force_login(users["owner"])
    new = "amber meadow cello 71"
    bad = client.post(reverse("password_change"), {"old_password": "nope", "new_password1": new, "new_password2": new})
    assert bad.status_code == 200
    assert "old password was entered incorrectly" in text(bad)
    response = client.post(
        reverse("password_change"), {"old_password": PASSWORD, "new_password1": new, "new_password2": new}
    )
    assert response["Location"] == reverse("password_change_done")
    client.logout()
    assert login(client, "owner", new).status_code == 302


# --- profile and token ----------------------------------------------------------------------------


def test_profile_requires_login(client: Client) -> None:
    response = client.get(reverse("profile"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_profile_shows_role_and_organisation_and_saves_changes(client: Client, users: dict[str, Any]) -> None:
    client.force_login(users["holder"])
    body = text(client.get(reverse("profile")))
    assert "Data holder" in body
    assert "St Elsewhere" in body
    assert "Authorization: Token" in body

    response = client.post(
        reverse("profile"), {"email": "holder@example.org", "organisation": "St Elsewhere North"}, follow=True
    )
    assert "Saved." in text(response)
    assert Profile.objects.get(user=users["holder"]).organisation == "St Elsewhere North"
    assert mail.outbox == []


def test_holder_cannot_clear_the_organisation(client: Client, users: dict[str, Any]) -> None:
    client.force_login(users["holder"])
    response = client.post(reverse("profile"), {"email": "holder@example.org", "organisation": ""})
    assert response.status_code == 200
    assert "Data holders must name their organisation" in text(response)
    assert Profile.objects.get(user=users["holder"]).organisation == "St Elsewhere"


def test_changing_email_needs_confirmation_from_the_new_address(client: Client, users: dict[str, Any]) -> None:
    client.force_login(users["owner"])
    taken = client.post(reverse("profile"), {"email": "holder@example.org", "organisation": ""})
    assert "Another account uses this e-mail address" in text(taken)

    response = client.post(reverse("profile"), {"email": "new@lab.example", "organisation": "Lab"}, follow=True)
    assert "confirmation link" in text(response)
    assert "not confirmed" in text(response)
    owner = get_user_model().objects.get(username="owner")
    assert owner.email == "new@lab.example"
    assert not owner.profile.email_verified
    assert [m.to for m in mail.outbox] == [["new@lab.example"]]

    response = client.get(path_of(link_in(mail.outbox[0])), follow=True)
    assert "new@lab.example is confirmed" in text(response)
    assert Profile.objects.get(user=owner).email_verified


def test_token_create_and_regenerate(client: Client, users: dict[str, Any]) -> None:
    client.force_login(users["owner"])
    assert "You have no token yet" in text(client.get(reverse("profile")))
    assert client.get(reverse("api-token-regenerate")).status_code == 405

    response = client.post(reverse("api-token-regenerate"), follow=True)
    assert "API token created" in text(response)
    first = response.context["token"]
    assert first and first in text(response)

    response = client.post(reverse("api-token-regenerate"), follow=True)
    second = response.context["token"]
    assert second != first
    assert "the old one no longer works" in text(response)

    api = Client()
    old = api.get(reverse("api-me"), HTTP_AUTHORIZATION=f"Token {first}")
    assert old.status_code == 401 and old["WWW-Authenticate"] == "Token"
    assert api.get(reverse("api-me"), HTTP_AUTHORIZATION=f"Token {second}").json()["username"] == "owner"


def test_site_admin_without_profile_sees_a_profile_page(client: Client, users: dict[str, Any]) -> None:
    client.force_login(users["admin"])
    response = client.get(reverse("profile"))
    assert response.status_code == 200
    assert "Site admin" in text(response)


# --- API ------------------------------------------------------------------------------------------


def api_signup(client: Client, **overrides: str) -> Any:
    data = signup_data(**overrides)
    data.pop("password_confirm")
    return client.post(reverse("api-signup"), data, content_type="application/json")


def test_api_signup_then_activate_then_token_then_me(client: Client) -> None:
    response = api_signup(client)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["username"] == "alice"
    assert body["role"] == "holder"
    assert body["email_verified"] is False
    assert "password" not in body
    assert len(mail.outbox) == 1

    refused = client.post(reverse("api-token"), {"username": "alice", "password": GOOD_PASSWORD})
    assert refused.status_code == 403
    assert "not activated yet" in refused.json()["detail"]

    client.get(path_of(link_in(mail.outbox[0])))
    client.logout()
    response = client.post(reverse("api-token"), {"username": "alice", "password": GOOD_PASSWORD})
    assert response.status_code == 200
    token = response.json()["token"]
    # Asking again gives the same token.
    again = client.post(reverse("api-token"), {"username": "alice", "password": GOOD_PASSWORD})
    assert again.json()["token"] == token

    me = Client().get(reverse("api-me"), HTTP_AUTHORIZATION=f"Token {token}")
    assert me.status_code == 200
    assert me.json() == {
        "username": "alice",
        "email": "alice@hospital.example",
        "email_verified": True,
        "role": "holder",
        "organisation": "St Mary's Hospital",
        "is_site_admin": False,
    }


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"password": "password"}, "password", "too common"),
        ({"password": "alice1234"}, "password", "too similar to the username"),
        ({"organisation": ""}, "organisation", "Data holders must name their organisation"),
        ({"role": "root"}, "role", "not a valid choice"),
        ({"email": "nope"}, "email", "valid email"),
        ({"username": "with space"}, "username", "valid username"),
        ({"username": "Owner"}, "username", "taken"),
        ({"email": "holder@EXAMPLE.org"}, "email", "already exists"),
    ],
)
def test_api_signup_bad_input_names_the_field_and_creates_nothing(
    client: Client, users: dict[str, Any], overrides: dict[str, str], field: str, message: str
) -> None:
    before = get_user_model().objects.count()
    response = api_signup(client, **overrides)
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    assert isinstance(body[field], list)
    assert any(message in m for m in body[field]), body
    assert get_user_model().objects.count() == before
    assert mail.outbox == []


def test_api_signup_missing_fields(client: Client) -> None:
    response = client.post(reverse("api-signup"), {}, content_type="application/json")
    assert response.status_code == 400
    assert {"username", "email", "password", "role"} <= set(response.json())
    assert not get_user_model().objects.exists()


def test_api_token_bad_input(client: Client, users: dict[str, Any]) -> None:
    missing = client.post(reverse("api-token"), {"username": "owner"})
    assert missing.status_code == 400
    assert "password" in missing.json()
    wrong = client.post(reverse("api-token"), {"username": "owner", "password": "nope"})
    assert wrong.status_code == 400
    assert "do not match an account" in wrong.json()["detail"]


def test_api_token_is_rate_limited_like_login(client: Client, users: dict[str, Any]) -> None:
    for _ in range(5):
        assert client.post(reverse("api-token"), {"username": "owner", "password": "nope"}).status_code == 400
    response = client.post(reverse("api-token"), {"username": "owner", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many failed log-in attempts" in response.json()["detail"]
    # Failures through the API count for the web log-in too.
    assert "Too many failed log-in attempts" in text(login(client, "owner", PASSWORD))


def test_api_me(client: Client, users: dict[str, Any]) -> None:
    # No credentials: 401, naming the scheme to use (it was 403, "known but not allowed").
    anonymous = client.get(reverse("api-me"))
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Token"
    assert "credentials were not provided" in anonymous.json()["detail"]
    # A browser's session still authenticates without a token.
    client.force_login(users["admin"])
    body = client.get(reverse("api-me")).json()
    assert body["is_site_admin"] is True
    assert body["role"] is None
    client.force_login(users["owner"])
    assert client.get(reverse("api-me")).json()["role"] == "setter"


def test_api_endpoints_are_in_the_schema(client: Client) -> None:
    schema = text(client.get(reverse("api-schema")))
    for path in ["/api/v1/auth/signup/", "/api/v1/auth/token/", "/api/v1/me/"]:
        assert path in schema


# --- home, admin ----------------------------------------------------------------------------------


def test_home_page_welcomes_each_role(client: Client, users: dict[str, Any]) -> None:
    body = text(client.get(reverse("home")))
    assert "For problem setters" in body
    assert "For data holders" in body
    assert reverse("signup") in body
    assert reverse("login") in body

    client.force_login(users["owner"])
    body = text(client.get(reverse("home")))
    assert "Log out" in body
    assert reverse("signup") not in body


def test_admin_shows_the_profile_on_the_user_page(client: Client, users: dict[str, Any]) -> None:
    client.force_login(users["admin"])
    holder = users["holder"]
    response = client.get(reverse("admin:auth_user_change", args=[holder.pk]))
    assert response.status_code == 200
    assert "St Elsewhere" in text(response)
    assert "Fedota profile" in text(response)
    listing = client.get(reverse("admin:auth_user_changelist"))
    assert "Data holder" in text(listing)
