"""A data holder's side of joining: the `docker run` line the website shows, run as shown.

The line is taken from the problem page (what the Copy button copies), and only the
placeholder paths a data holder fills in are replaced: their data folder and the
downloaded bundle. Tests add nothing but a name and labels, to find the container again.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DATA_PLACEHOLDER = "/path/to/your/data"


def login(url: str, username: str, password: str) -> Any:
    """A logged-in requests session on the website, as a browser holds one."""
    import requests

    session = requests.Session()
    page = session.get(f"{url}/accounts/login/", timeout=30)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert page.status_code == 200 and match, f"GET /accounts/login/ answered {page.status_code}"
    _loopback_is_secure(session, url)
    resp = session.post(
        f"{url}/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": match.group(1)},
        headers={"Referer": f"{url}/accounts/login/"},
        allow_redirects=False,
        timeout=30,
    )
    assert resp.status_code in (302, 303), f"log-in as {username} failed: HTTP {resp.status_code}"
    _loopback_is_secure(session, url)
    return session


def _loopback_is_secure(session: Any, url: str) -> None:
    """Send `Secure` cookies to a loopback site over plain HTTP, as browsers do.

    A production site (the compose images) marks its cookies Secure; browsers still send
    them to http://127.0.0.1 and http://localhost (a secure context), requests does not.
    """
    if urlsplit(url).hostname in ("127.0.0.1", "localhost"):
        for cookie in session.cookies:
            cookie.secure = False


def shown_docker_run(session: Any, url: str, problem_id: int) -> str:
    """The `docker run` line the problem page shows the logged-in data holder."""
    page = session.get(f"{url}/problems/{problem_id}/", timeout=30)
    assert page.status_code == 200, f"GET /problems/{problem_id}/ answered {page.status_code}"
    match = re.search(rf'<code id="docker-run-{problem_id}">(.*?)</code>', page.text, re.S)
    assert match, f"the page of problem {problem_id} shows no docker run line"
    return html.unescape(match.group(1))


def readable(folder: Path) -> None:
    """Let the client image's unprivileged user read `folder` and everything in it."""
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    folder.chmod(0o755)


def filled_in(shown: str, problem_id: int, data: Path, bundle: dict[str, Any], folder: Path) -> list[str]:
    """The shown line with the data holder's two paths filled in; the bundle is written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    bundle_file = folder / f"fedota-join-{problem_id}.json"
    bundle_file.write_text(json.dumps(bundle, indent=2))
    bundle_file.chmod(0o644)
    line = shlex.split(shown)
    data_arg = f"{DATA_PLACEHOLDER}:/data:ro"
    bundle_arg = f"/path/to/fedota-join-{problem_id}.json:/join.json:ro"
    assert line[:3] == ["docker", "run", "--rm"] and data_arg in line and bundle_arg in line, line
    # A data holder's machine has no network of the platform's to join.
    assert not any(a.startswith("--network") for a in line), line
    return [
        f"{data}:/data:ro" if a == data_arg else f"{bundle_file}:/join.json:ro" if a == bundle_arg else a for a in line
    ]
