"""The dashboard's charts load plotly.js from the site itself, out of the installed plotly package.

No CDN: the dashboard works on a closed network. The browser side is
tests/web/test_dashboard_charts_browser.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly
import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from tests.web.test_api_docs import _assets, _same_origin
from webserver.problems.models import Run

REPO = Path(__file__).resolve().parents[2]
BUNDLE = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

pytestmark = pytest.mark.web


def test_the_dashboard_loads_every_script_from_the_sites_own_static_files(
    client: Client, users: dict[str, Any], make_problem: Callable[..., Any], settings: Any
) -> None:
    problem = make_problem(users["owner"])
    Run.objects.create(problem=problem, number=1, fab_sha256=problem.fab_sha256, status="running")
    client.force_login(users["owner"])
    html = client.get(f"/monitoring/problems/{problem.pk}/").content.decode()
    static = "/" + settings.STATIC_URL.lstrip("/")
    scripts = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html)
    assert [s.removeprefix(static) for s in scripts] == [
        "plotly/plotly.min.js",
        "monitoring/charts.js",
        "monitoring/dashboard.js",
    ]
    assert all(_same_origin(u) for u in _assets(html)), _assets(html)
    assert not re.search(r"""["'](https?:)?//""", html), "a URL to another host on the dashboard"
    # The very file the plotly package ships, not a copy that could fall behind it.
    assert finders.find("plotly/plotly.min.js") == str(BUNDLE)


def test_only_the_bundle_of_the_plotly_package_is_a_static_file() -> None:
    assert finders.find("plotly/plotly.min.js", find_all=True) == [str(BUNDLE)]
    assert (BUNDLE.parent / "datasets").is_dir()  # what the package also holds, and the site must not serve
    assert finders.find("plotly/datasets/iris.csv.gz") is None
    assert finders.find("plotly/../plotly.min.js") is None


def test_plotly_is_served_in_production_after_collectstatic(tmp_path: Path) -> None:
    """DEBUG off, as the web image runs: collectstatic copies the bundle alone and WhiteNoise serves it."""
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
import django
from pathlib import Path
from django.conf import settings
from django.core.management import call_command
django.setup()
assert not settings.DEBUG and not settings.WHITENOISE_USE_FINDERS
call_command("collectstatic", interactive=False, verbosity=0)
print(sorted(p.name for p in (Path(settings.STATIC_ROOT) / "plotly").iterdir()))
from django.test import Client
for url in ("/static/plotly/plotly.min.js", "/static/monitoring/charts.js", "/static/monitoring/dashboard.js"):
    response = Client().get(url)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    print(url, response.status_code, len(body), body[:40])
"""
    result = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # collectstatic copied the bundle alone (with the gzip copy WhiteNoise sends), not the package's data sets.
    assert lines[0] == "['plotly.min.js', 'plotly.min.js.gz']"
    size = BUNDLE.stat().st_size
    assert lines[1].startswith(f"/static/plotly/plotly.min.js 200 {size} b'/**\\n* plotly.js v"), lines[1]
    assert all(" 200 " in line for line in lines[2:]) and len(lines) == 4, lines
