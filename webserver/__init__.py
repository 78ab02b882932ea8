"""Fedota webserver: the Django site where problems are published and joined."""

from webserver.celery import app as celery_app

__all__ = ["celery_app"]
