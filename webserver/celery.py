"""The Celery application; tasks live in each Django app's `tasks.py`."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webserver.settings")

from webserver.metrics import connect_celery  # noqa: E402 - needs the settings module named first

app = Celery("webserver")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# How each task ended, counted in the process that ran it (docs/metrics.md).
connect_celery()
