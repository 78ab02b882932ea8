"""Admin views of what coordinators reported (read-only: the coordinator is the source)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from webserver.monitoring.models import Checkpoint, LogLine, PrivacyReport, RoundRecord


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RoundRecord)
class RoundRecordAdmin(_ReadOnly):
    list_display = (
        "run",
        "attempt",
        "number",
        "clients",
        "train_loss",
        "eval_loss",
        "eval_acc",
        "results",
        "no_results",
        "rejected",
        "seconds",
        "finished_at",
    )
    list_filter = ("run__problem",)


@admin.register(Checkpoint)
class CheckpointAdmin(_ReadOnly):
    list_display = ("run", "attempt", "round", "npz", "pt", "created_at")


@admin.register(LogLine)
class LogLineAdmin(_ReadOnly):
    list_display = ("run", "ts", "level", "source", "message")
    list_filter = ("level",)
    search_fields = ("message",)


@admin.register(PrivacyReport)
class PrivacyReportAdmin(_ReadOnly):
    list_display = (
        "run",
        "site_name",
        "state",
        "epsilon",
        "delta",
        "epsilon_cap",
        "noise_multiplier",
        "releases",
        "run_releases",
        "round",
        "reported_at",
    )
    list_filter = ("state", "run__problem")
    search_fields = ("site_name",)
