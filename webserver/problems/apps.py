from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "webserver.problems"
    label = "problems"
    default_auto_field = "django.db.models.BigAutoField"
