"""Admin: participants and contributions. The credential hash is never shown or editable."""

from __future__ import annotations

from django.contrib import admin

from webserver.participation.models import Contribution, Participant


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    list_display = ["site_name", "problem", "user", "status", "bundle_app_version", "created_at", "decided_at"]
    list_filter = ["status"]
    search_fields = ["site_name", "contact_email", "user__username", "problem__title"]
    raw_id_fields = ["problem", "user"]
    # Status changes go through the problem page or the API so the credential
    # is cleared on revocation; the admin edits the descriptive fields only.
    exclude = ["credential_hash"]
    readonly_fields = ["status", "has_credential", "bundle_app_version", "bundle_issued_at", "created_at", "decided_at"]

    @admin.display(boolean=True, description="Credential issued")
    def has_credential(self, obj: Participant) -> bool:
        return bool(obj.credential_hash)


@admin.register(Contribution)
class ContributionAdmin(admin.ModelAdmin):
    list_display = ["run", "site_name", "round", "kind", "participant", "created_at"]
    list_filter = ["kind"]
    search_fields = ["site_name", "run__problem__title"]
    raw_id_fields = ["run", "participant"]
