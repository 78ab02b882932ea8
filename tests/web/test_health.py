"""/healthz: what compose's health check of the web container and a load balancer ask."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client

pytestmark = [pytest.mark.web, pytest.mark.django_db]


def test_healthz_answers_ok_without_a_login() -> None:
    resp = Client().get("/healthz")
    assert (resp.status_code, resp.content) == (200, b"ok\n")
    assert "no-cache" in resp["Cache-Control"]


def test_healthz_answers_503_when_the_database_does_not(monkeypatch: Any) -> None:
    from django.db import connection

    def down() -> None:
        raise OperationalError("could not connect to server: Connection refused")

    monkeypatch.setattr(connection, "cursor", down)
    resp = Client().get("/healthz")
    assert resp.status_code == 503
    assert b"Connection refused" not in resp.content


def test_healthz_takes_no_writes() -> None:
    assert Client().post("/healthz").status_code == 405
