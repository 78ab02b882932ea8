"""Account API under /api/v1/."""

from __future__ import annotations

from django.urls import path

from webserver.accounts import api

urlpatterns = [
    path("auth/signup/", api.SignupApi.as_view(), name="api-signup"),
    path("auth/token/", api.TokenApi.as_view(), name="api-token"),
    path("me/", api.MeApi.as_view(), name="api-me"),
]
