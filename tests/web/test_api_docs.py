"""The API docs and the pages load nothing from another host, so they work air-gapped.

Swagger UI comes from drf-spectacular-sidecar as the site's own static files; a CDN
would leave /api/docs/ blank offline. The browser side (Chromium with every other
host blocked) is tests/e2e/test_web_browser.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.web


class _Assets(HTMLParser):
    """Every URL a page loads by itself: scripts, styles, icons, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source") and a.get("src"):
            self.urls.append(a["src"] or "")
        if tag == "link" and a.get("href") and (a.get("rel") or "") != "canonical":
            self.urls.append(a["href"] or "")


def _assets(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


def _same_origin(url: str) -> bool:
    return url.startswith("/") and not url.startswith("//")


def test_api_docs_load_swagger_ui_from_the_sites_own_static_files(client: Any, settings: Any) -> None:
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assets = _assets(html)
    assert any(u.endswith("swagger-ui-bundle.js") for u in assets), assets
    assert any(u.endswith("swagger-ui.css") for u in assets), assets
    for url in assets:
        assert _same_origin(url), f"/api/docs/ loads {url} from another host"
        assert url.startswith("/" + settings.STATIC_URL.lstrip("/")), url
        assert finders.find(url.removeprefix("/" + settings.STATIC_URL.lstrip("/"))), f"{url} is not a static file"
    assert not re.search(r"""["'](https?:)?//""", html), "a URL to another host in /api/docs/"


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/accounts/login/", "/accounts/signup/", "/problems/", "/api/v1/problems/"])
def test_pages_load_nothing_from_another_host(client: Any, path: str) -> None:
    response = client.get(path, HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    offsite = [u for u in _assets(response.content.decode()) if not _same_origin(u)]
    assert offsite == [], f"{path} loads {offsite}"


@pytest.mark.django_db
def test_the_browsable_api_renders_every_read_endpoint(client: Any, users: dict[str, Any], make_problem: Any) -> None:
    """A person opening an API address in the browser gets the HTML page, not a server error."""
    from webserver.problems.models import Run

    problem = make_problem(users["owner"])
    run = Run.objects.create(problem=problem, number=1, fab_sha256=problem.fab_sha256)
    client.force_login(users["owner"])
    paths = [
        "/api/v1/me/",
        "/api/v1/apps/",
        "/api/v1/problems/",
        f"/api/v1/problems/{problem.pk}/",
        f"/api/v1/problems/{problem.pk}/files/",
        f"/api/v1/problems/{problem.pk}/runs/",
        f"/api/v1/problems/{problem.pk}/participants/",
        f"/api/v1/problems/{problem.pk}/dashboard/",
        f"/api/v1/problems/{problem.pk}/runs/metrics/",
        f"/api/v1/runs/{run.pk}/rounds/",
        f"/api/v1/runs/{run.pk}/logs/",
        "/api/v1/me/participations/",
    ]
    failed = {}
    for path in paths:
        response = client.get(path, HTTP_ACCEPT="text/html")
        if response.status_code != 200 or not response["Content-Type"].startswith("text/html"):
            failed[path] = response.status_code
        elif offsite := [u for u in _assets(response.content.decode()) if not _same_origin(u)]:
            failed[path] = offsite
    assert failed == {}


def test_no_template_or_stylesheet_loads_from_another_host() -> None:
    """Also the pages the requests above do not reach (dashboards, problem pages)."""
    loads = re.compile(
        r"""<script[^>]+src=["'](https?:)?//|<link[^>]+href=["'](https?:)?//|url\(\s*["']?(https?:)?//|@import\s+["'](https?:)?//""",
        re.IGNORECASE,
    )
    files = [p for ext in ("html", "css", "js") for p in (REPO / "webserver").rglob(f"*.{ext}")]
    assert files
    offenders = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in files for m in loads.finditer(p.read_text())]
    assert offenders == []


def test_api_docs_assets_are_served_in_production_after_collectstatic(tmp_path: Path) -> None:
    """DEBUG off, as the web image runs: WhiteNoise serves Swagger UI from collectstatic's output."""
    environ = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "FEDOTA_VAR_DIR": str(tmp_path / "var"),
        "FEDOTA_ENV": "production",
        "DJANGO_SECRET_KEY": "test-" + "x" * 60,
        "DJANGO_ALLOWED_HOSTS": "testserver",
        "DJANGO_SETTINGS_MODULE": "webserver.settings",
    }
    code = """
import re, django
from django.conf import settings
from django.core.management import call_command
django.setup()
assert not settings.DEBUG and not settings.WHITENOISE_USE_FINDERS
call_command("collectstatic", interactive=False, verbosity=0)
from django.test import Client
client = Client()
html = client.get("/api/docs/").content.decode()
urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
assert len(urls) >= 3, html
for url in urls:
    response = client.get(url)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert response.status_code == 200 and len(body) > 100, (url, response.status_code)
    print(url)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "swagger-ui-bundle.js" in result.stdout
