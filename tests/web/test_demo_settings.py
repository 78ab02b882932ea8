"""The demo (`scripts/start.sh`) runs as production does: DEBUG off, the site's own error pages,
static files collected and served by WhiteNoise, a favicon.

A real gunicorn is started with the environment start.sh gives it (and nothing else: no secret
key, no allowed hosts), after the same collectstatic, and asked over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import RequestFactory
from django.views.defaults import server_error

pytestmark = [pytest.mark.web]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, host: str | None = None, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={**({"Host": host} if host else {}), **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    var = tmp_path_factory.mktemp("demo") / "var"
    port = _free_port()
    environ = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "FEDOTA_VAR_DIR": str(var),
        # What start.sh exports before it starts the web server.
        "DJANGO_DEBUG": "0",
        "FEDOTA_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "FEDOTA_INTERNAL_URL": f"http://127.0.0.1:{port}",
        "FEDOTA_SPAWNER": "process",
    }
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        env=environ,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collect.returncode == 0, collect.stderr[-3000:]
    log = open(var / "web.log", "w")  # noqa: SIM115 - closed below, after the server
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "webserver.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env=environ,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/favicon.ico", timeout=5).close()
                break
            except OSError:
                assert server.poll() is None, (var / "web.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "gunicorn did not answer within 60 s"
                time.sleep(0.3)
        yield {"base": base, "var": var, "port": port}
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_start_sh_turns_debug_off_and_collects_static_files_before_the_web_server() -> None:
    script = (REPO / "scripts" / "start.sh").read_text()
    assert "export DJANGO_DEBUG=${DJANGO_DEBUG:-0}" in script
    assert script.index("manage.py collectstatic") < script.index("gunicorn webserver.wsgi")


def test_a_bad_url_gets_the_sites_own_404_page(demo_site: dict[str, Any]) -> None:
    status, headers, body = _get(f"{demo_site['base']}/no/such/page/")
    page = body.decode()
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert "Page not found" in page and "<code>/no/such/page/</code>" in page
    assert "/static/fedota/site.css" in page and 'href="/problems/"' in page
    # Not Django's debug page, which lists the URL patterns tried and tells how to turn DEBUG off.
    assert "URLconf" not in page and "DEBUG = True" not in page


def test_the_apis_404_stays_json(demo_site: dict[str, Any]) -> None:
    status, headers, body = _get(f"{demo_site['base']}/api/v1/no-such-thing/")
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"detail": "Not found."}


def test_favicon_and_static_files_are_served_by_whitenoise(demo_site: dict[str, Any]) -> None:
    status, headers, body = _get(f"{demo_site['base']}/favicon.ico")
    assert status == 200 and body[:4] == b"\x00\x00\x01\x00"  # an ICO file
    status, headers, body = _get(f"{demo_site['base']}/static/fedota/favicon.svg")
    assert status == 200 and b"<svg" in body
    status, headers, body = _get(f"{demo_site['base']}/static/fedota/site.css")
    # With DEBUG off Django serves no static file itself: WhiteNoise does, from collectstatic's output
    # (its cache header; Django's debug view sends none).
    assert status == 200 and b".brand-mark" in body
    assert "max-age=60" in headers.get("Cache-Control", "")
    assert (demo_site["var"] / "static" / "fedota" / "site.css").read_bytes() == body
    home = _get(f"{demo_site['base']}/")[2].decode()
    assert 'rel="icon" href="/favicon.ico"' in home and "/static/fedota/favicon.svg" in home


def test_static_files_go_out_gzipped_to_browsers_that_accept_it(demo_site: dict[str, Any]) -> None:
    import gzip

    url = f"{demo_site['base']}/static/plotly/plotly.min.js"
    status, plain_headers, plain = _get(url)
    assert status == 200 and "Content-Encoding" not in plain_headers and len(plain) > 3_000_000
    status, headers, packed = _get(url, **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    # What a data holder's browser downloads for the charts: well under half, the same file once unpacked.
    assert len(packed) < len(plain) / 2 and gzip.decompress(packed) == plain


def test_the_demo_answers_at_its_address_only_and_keeps_its_key_in_var(demo_site: dict[str, Any]) -> None:
    assert _get(f"{demo_site['base']}/favicon.ico", host=f"localhost:{demo_site['port']}")[0] == 200
    status, _headers, body = _get(f"{demo_site['base']}/", host="attacker.example")
    assert status == 400 and b"The request was refused" in body
    key = demo_site["var"] / "dev-secret-key"
    assert len(key.read_text().strip()) >= 50 and key.stat().st_mode & 0o077 == 0


def test_the_500_page_needs_no_database_or_user() -> None:
    response = server_error(RequestFactory().get("/"))
    page = response.content.decode()
    assert response.status_code == 500
    assert "Something went wrong on our side" in page and "/static/fedota/site.css" in page


def test_without_debug_the_site_answers_to_the_hosts_of_its_own_urls(tmp_path: Path) -> None:
    environ = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "FEDOTA_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_DEBUG": "0",
        "FEDOTA_PUBLIC_URL": "https://fl.example.org",
        "FEDOTA_INTERNAL_URL": "http://[fd00::5]:8000",
    }
    code = "import webserver.settings as s; print(','.join(s.ALLOWED_HOSTS))"
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hosts = result.stdout.strip().split(",")
    assert hosts == ["localhost", "127.0.0.1", "[::1]", "host.docker.internal", "fl.example.org", "[fd00::5]"]
    explicit = subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, "DJANGO_ALLOWED_HOSTS": "only.example"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert explicit.stdout.strip() == "only.example"
