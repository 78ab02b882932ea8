"""Problem pages under /problems/."""

from __future__ import annotations

from django.urls import path

from webserver.problems import infra_views, views

urlpatterns = [
    path("", views.problem_list, name="problem-list"),
    path("new/", views.problem_create, name="problem-create"),
    path("<int:pk>/", views.problem_detail, name="problem-detail"),
    path("<int:pk>/edit/", views.problem_edit, name="problem-edit"),
    path("<int:pk>/publish/", views.problem_publish, name="problem-publish"),
    path("<int:pk>/stop/", views.problem_stop, name="problem-stop"),
    path("<int:pk>/archive/", views.problem_archive, name="problem-archive"),
    path("<int:pk>/delete/", views.problem_delete, name="problem-delete"),
    path("<int:pk>/contract.json", views.problem_contract, name="problem-contract"),
    path("<int:pk>/files/<path:path>", views.problem_file, name="problem-file"),
    path("infrastructure/", infra_views.infrastructure, name="infrastructure"),
]
