from __future__ import annotations

from django.apps import AppConfig


class Config(AppConfig):
    name = "webserver.monitoring"
    label = "monitoring"
    default_auto_field = "django.db.models.BigAutoField"
