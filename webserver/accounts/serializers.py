"""Account API shapes: input types only; the rules live in services."""

from __future__ import annotations

from django.core.validators import RegexValidator
from rest_framework import serializers

from webserver.accounts.models import Role

# A username is trimmed, so one of spaces alone is blank; the pattern puts that refusal in the schema too.
_NOT_BLANK = RegexValidator(r"\S", "This field may not be blank.")


class SignupSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, min_length=1, validators=[_NOT_BLANK])
    email = serializers.EmailField()
    password = serializers.CharField(
        write_only=True, trim_whitespace=False, min_length=1, style={"input_type": "password"}
    )
    role = serializers.ChoiceField(choices=Role.choices)
    organisation = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="Required for data holders: the hospital or site you will join problems for.",
    )


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(min_length=1, validators=[_NOT_BLANK])
    password = serializers.CharField(trim_whitespace=False, min_length=1, style={"input_type": "password"})


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as `Authorization: Token <token>`.")


class AccountSerializer(serializers.Serializer):
    username = serializers.CharField()
    email = serializers.EmailField()
    email_verified = serializers.BooleanField()
    role = serializers.ChoiceField(
        choices=Role.choices, allow_null=True, help_text="null for a site admin without a role"
    )
    organisation = serializers.CharField(allow_blank=True)
    is_site_admin = serializers.BooleanField()


class SignupResultSerializer(AccountSerializer):
    detail = serializers.CharField()
