"""Account forms: input shape only; the rules live in services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm

from webserver.accounts import services
from webserver.accounts.models import Role
from webserver.errors import ApplicationError

ORGANISATION_HELP = (
    "Data holders: the hospital, clinic or site you will join problems for (required). "
    "Problem setters: your lab or organisation (optional)."
)


def show_error(form: forms.Form, exc: ApplicationError) -> None:
    """Put a service's error on the form: per input where it names inputs, else above the form."""
    placed = False
    for name, messages in exc.extra.items():
        if name in form.fields and isinstance(messages, list):
            for message in messages:
                form.add_error(name, message)
            placed = True
    if not placed:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)


class SignupForm(forms.Form):
    username = forms.CharField(
        max_length=150,
        help_text="Letters, digits and @ . + - _ only. Others see it next to your problems and contributions.",
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    email = forms.EmailField(
        label="E-mail address",
        help_text="We send a link there to activate your account.",
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    password = forms.CharField(
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password_confirm = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    role = forms.ChoiceField(
        label="I am a",
        choices=Role.choices,
        widget=forms.RadioSelect,
        help_text="Problem setters publish training problems; data holders train them on their own data.",
    )
    organisation = forms.CharField(
        max_length=services.ORGANISATION_MAX,
        required=False,
        help_text=ORGANISATION_HELP,
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )

    def clean(self) -> dict[str, Any]:
        super().clean()  # Form.clean returns self.cleaned_data; the stubs allow None for overrides
        data = self.cleaned_data
        password, again = data.get("password"), data.get("password_confirm")
        if password and again and password != again:
            self.add_error("password_confirm", "The two passwords differ; type the same password twice.")
        return data


class LoginForm(AuthenticationForm):
    """Django's log-in form, with the site's limit and a clear word for inactive accounts."""

    def __init__(self, request: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        # The template offers the "resend activation e-mail" link when this is set.
        self.needs_activation = False

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is not None and password:
            try:
                self.user_cache = services.user_authenticate(request=self.request, username=username, password=password)
            except services.AccountInactive as exc:
                self.needs_activation = exc.needs_activation
                raise forms.ValidationError(exc.message, code="inactive") from exc
            except ApplicationError as exc:
                raise forms.ValidationError(exc.message, code="invalid_login") from exc
        return self.cleaned_data


class ResendActivationForm(forms.Form):
    email = forms.EmailField(
        label="E-mail address",
        help_text="The address you signed up with.",
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )


class ProfileForm(forms.Form):
    email = forms.EmailField(
        label="E-mail address",
        help_text="Changing it sends a confirmation link to the new address.",
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    organisation = forms.CharField(
        max_length=services.ORGANISATION_MAX,
        required=False,
        help_text=ORGANISATION_HELP,
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )
