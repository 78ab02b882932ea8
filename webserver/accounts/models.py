"""Who a user is on this site: problem setter or data holder."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    SETTER = "setter", "Problem setter"
    HOLDER = "holder", "Data holder"


class Profile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    role = models.CharField(max_length=16, choices=Role.choices)
    organisation = models.CharField(max_length=200, blank=True)
    email_verified = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.user.get_username()} ({self.get_role_display()})"
