from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "webserver.participation"
    label = "participation"
    default_auto_field = "django.db.models.BigAutoField"
