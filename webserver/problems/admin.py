"""Admin views of problems and runs (read-mostly: changes go through the site's services)."""

from __future__ import annotations

from django.contrib import admin

from webserver.problems.models import Problem, Run, Service


@admin.register(Problem)
class ProblemAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "owner", "state", "join_policy", "app_template", "app_version", "created_at")
    list_filter = ("state", "join_policy", "app_template")
    search_fields = ("title", "owner__username", "fab_sha256")
    readonly_fields = ("fab_sha256", "app_version", "created_at", "updated_at")


class ServiceInline(admin.TabularInline):
    model = Service
    extra = 0
    fields = ("role", "index", "handle", "address", "metrics", "health", "clients_connected", "detail", "updated_at")
    readonly_fields = fields
    can_delete = False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "problem", "number", "status", "backend", "current_round", "total_rounds", "created_at")
    list_filter = ("status", "backend")
    search_fields = ("problem__title",)
    readonly_fields = ("service_token_hash", "fab_sha256", "created_at", "started_at", "finished_at")
    inlines = [ServiceInline]
