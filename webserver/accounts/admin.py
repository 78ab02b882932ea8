"""Admin: a user's role, organisation and e-mail confirmation on the user's own page."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from webserver.accounts.models import Profile


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    extra = 0
    max_num = 1
    verbose_name = verbose_name_plural = "Fedota profile"


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class FedotaUserAdmin(UserAdmin):
    inlines = [ProfileInline]
    list_display = ["username", "email", "role", "organisation", "email_verified", "is_active", "is_staff"]
    list_filter = ["profile__role", "profile__email_verified", "is_active", "is_staff"]
    search_fields = ["username", "email", "profile__organisation"]
    list_select_related = ["profile"]

    @admin.display(ordering="profile__role")
    def role(self, user: object) -> str:
        profile = getattr(user, "profile", None)
        return profile.get_role_display() if profile is not None else "—"

    @admin.display(ordering="profile__organisation")
    def organisation(self, user: object) -> str:
        profile = getattr(user, "profile", None)
        return profile.organisation if profile is not None else ""

    @admin.display(boolean=True, ordering="profile__email_verified")
    def email_verified(self, user: object) -> bool | None:
        profile = getattr(user, "profile", None)
        return profile.email_verified if profile is not None else None


@admin.register(Profile)
class ProfileAdmin(admin.ModelAdmin):
    list_display = ["user", "role", "organisation", "email_verified"]
    list_filter = ["role", "email_verified"]
    search_fields = ["user__username", "user__email", "organisation"]
    raw_id_fields = ["user"]
