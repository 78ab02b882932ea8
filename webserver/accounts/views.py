"""Account pages: sign-up, activation, log-in, password reset, profile."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from webserver.accounts import queries, services
from webserver.accounts.forms import (
    LoginForm,
    ProfileForm,
    ResendActivationForm,
    SignupForm,
    show_error,
)
from webserver.errors import ApplicationError

SIGNUP_EMAIL_SESSION_KEY = "accounts:signup-email"


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.user_signup(
                username=data["username"],
                email=data["email"],
                password=data["password"],
                role=data["role"],
                organisation=data["organisation"],
            )
        except services.EmailNotSent as exc:
            messages.error(request, exc.message)
            return redirect("resend-activation")
        except ApplicationError as exc:
            show_error(form, exc)
        else:
            request.session[SIGNUP_EMAIL_SESSION_KEY] = data["email"]
            return redirect("signup-done")
    return render(request, "accounts/signup.html", {"form": form})


def signup_done(request: HttpRequest) -> HttpResponse:
    console = settings.EMAIL_BACKEND.endswith("console.EmailBackend")
    return render(
        request,
        "accounts/signup_done.html",
        # The demo runs with DEBUG off too: the backend alone says where the mail went.
        {"email": request.session.get(SIGNUP_EMAIL_SESSION_KEY), "console_email": console},
    )


def activate(request: HttpRequest, uidb64: str, token: str) -> HttpResponse:
    try:
        user, was_activated = services.user_activate(uidb64=uidb64, token=token)
    except ApplicationError as exc:
        return render(
            request,
            "accounts/activation_invalid.html",
            {"message": exc.message, "form": ResendActivationForm()},
            status=400,
        )
    if was_activated:
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.get_username()}: your account is active and you are logged in.")
        return redirect("home")
    messages.success(request, f"Thank you: {user.email} is confirmed.")
    return redirect("profile" if request.user.is_authenticated else "login")


def resend_activation(request: HttpRequest) -> HttpResponse:
    form = ResendActivationForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        services.activation_resend(email=form.cleaned_data["email"])
        # The same answer whether or not the address has an account.
        messages.info(
            request,
            "If an account with that address is waiting for activation, a new link is on its way. "
            "Check your spam folder too.",
        )
        return redirect("resend-activation")
    return render(request, "accounts/resend_activation.html", {"form": form})


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset_form.html"
    email_template_name = "accounts/email/password_reset_body.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"

    def form_valid(self, form: Any) -> HttpResponse:
        # Links point at the public address, not whatever Host header this request carried.
        scheme, host = services.public_origin()
        self.extra_email_context = {"protocol": scheme, "domain": host, "site_name": "Fedota"}
        return super().form_valid(form)


@login_required
def profile(request: HttpRequest) -> HttpResponse:
    summary = queries.account_summary(user=request.user)
    form = ProfileForm(
        request.POST if request.method == "POST" else None,
        initial={"email": summary["email"], "organisation": summary["organisation"]},
    )
    if request.method == "POST" and form.is_valid():
        try:
            changed = services.profile_update(
                user=request.user, email=form.cleaned_data["email"], organisation=form.cleaned_data["organisation"]
            )
        except services.EmailNotSent as exc:
            messages.warning(request, exc.message)
            return redirect("profile")
        except ApplicationError as exc:
            show_error(form, exc)
        else:
            if changed:
                messages.success(request, "Saved. We sent a confirmation link to your new address; open it to confirm.")
            else:
                messages.success(request, "Saved.")
            return redirect("profile")
    return render(
        request,
        "accounts/profile.html",
        {
            "form": form,
            "account": summary,
            "token": queries.api_token_of(user=request.user),
            "me_url": services.public_url(reverse("api-me")),
        },
    )


@login_required
@require_POST
def api_token_regenerate(request: HttpRequest) -> HttpResponse:
    had_token = queries.api_token_of(user=request.user) is not None
    services.api_token_regenerate(user=request.user)
    if had_token:
        messages.success(request, "New API token created; the old one no longer works.")
    else:
        messages.success(request, "API token created.")
    return redirect("profile")
