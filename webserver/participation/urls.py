"""Participation pages, mounted under /participation/."""

from __future__ import annotations

from django.urls import path

from webserver.participation import views

urlpatterns = [
    path("mine/", views.my_participations, name="my-participations"),
    path("problems/<int:problem_pk>/join/", views.participant_request, name="participant-request"),
    path("<int:participant_pk>/approve/", views.participant_approve, name="participant-approve"),
    path("<int:participant_pk>/reject/", views.participant_reject, name="participant-reject"),
    path("<int:participant_pk>/revoke/", views.participant_revoke, name="participant-revoke"),
    path("<int:participant_pk>/partition/", views.participant_partition, name="participant-partition"),
    path("problems/<int:problem_pk>/partitions/", views.problem_num_partitions, name="problem-num-partitions"),
    path("<int:participant_pk>/bundle.json", views.participant_bundle, name="participant-bundle"),
]
