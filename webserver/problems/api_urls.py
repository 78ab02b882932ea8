"""Problems API under /api/v1/."""

from __future__ import annotations

from django.urls import path

from webserver.problems import api

urlpatterns = [
    path("problems/", api.ProblemListCreate.as_view(), name="api-problem-list"),
    path("problems/<int:pk>/", api.ProblemDetail.as_view(), name="api-problem-detail"),
    path("problems/<int:pk>/publish/", api.ProblemPublish.as_view(), name="api-problem-publish"),
    path("problems/<int:pk>/stop/", api.ProblemStop.as_view(), name="api-problem-stop"),
    path("problems/<int:pk>/archive/", api.ProblemArchive.as_view(), name="api-problem-archive"),
    path("problems/<int:pk>/files/", api.ProblemFiles.as_view(), name="api-problem-files"),
    path("problems/<int:pk>/files/<path:path>", api.ProblemFile.as_view(), name="api-problem-file"),
    path("problems/<int:pk>/runs/", api.ProblemRuns.as_view(), name="api-problem-runs"),
    path("apps/", api.BuiltinApps.as_view(), name="api-apps"),
]
