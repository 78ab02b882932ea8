"""Participation API, mounted under /api/v1/."""

from __future__ import annotations

from django.urls import path

from webserver.participation import api

urlpatterns = [
    path(
        "problems/<int:problem_id>/participants/",
        api.ProblemParticipantsApi.as_view(),
        name="api-problem-participants",
    ),
    path(
        "participants/<int:participant_id>/approve/",
        api.ParticipantApproveApi.as_view(),
        name="api-participant-approve",
    ),
    path(
        "participants/<int:participant_id>/reject/", api.ParticipantRejectApi.as_view(), name="api-participant-reject"
    ),
    path(
        "participants/<int:participant_id>/revoke/", api.ParticipantRevokeApi.as_view(), name="api-participant-revoke"
    ),
    path(
        "participants/<int:participant_id>/partition/",
        api.ParticipantPartitionApi.as_view(),
        name="api-participant-partition",
    ),
    path(
        "problems/<int:problem_id>/partitions/",
        api.ProblemPartitionsApi.as_view(),
        name="api-problem-partitions",
    ),
    path(
        "participants/<int:participant_id>/bundle/", api.ParticipantBundleApi.as_view(), name="api-participant-bundle"
    ),
    path("me/participations/", api.MyParticipationsApi.as_view(), name="api-my-participations"),
]
