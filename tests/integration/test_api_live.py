"""Schemathesis's own command line against the site served by gunicorn, with every check.

tests/web/test_api_fuzz.py calls the WSGI app in-process with generated input; this is
the same API through a real server and socket, as a user's client meets it: `st run`
fetches /api/schema/ from gunicorn (the demo's production settings: DEBUG off,
WhiteNoise, the site's error pages) and runs its coverage, fuzzing and stateful phases
(sequences of calls that follow the schema's links) with all checks, once with a
problem setter's token and once with a data holder's. Any failure fails the test, with
schemathesis's report (each failure with a curl line to reproduce it).

The operations whose checks are relaxed are the in-process test's, for the same reasons
(NOT_ALL_VALID_ACCEPTED there). Generated credentials are turned off: a made-up
session cookie beside the token the test sends would make `ignored_auth` take the
token's success for accepting the cookie. Examples are fewer than in-process (the
phases here add their own cases) and the seed is fixed.

Its first runs found GET runs/metrics?runs=<a number past 64 bits> answering 500; the search
is random, so tests/web/test_api_hostile.py keeps that case for good.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.servers import serving
from tests.web.api_world import NOT_ALL_VALID_ACCEPTED

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = 25


def _config(ids: dict[str, int]) -> str:
    """schemathesis.toml: every check, the in-process test's exclusions, real ids where a path needs one."""
    names = ", ".join(json.dumps(label) for label in sorted(NOT_ALL_VALID_ACCEPTED))
    return f"""\
seed = 1
workers = 2
[generation]
with-security-parameters = false
# The schema's description says text never holds NUL (U+0000), which no per-field schema can state.
allow-x00 = false
max-examples = {EXAMPLES}
[checks]
enabled = true
[[operations]]
include-name = [{names}]
checks.positive_data_acceptance.enabled = false
# Operations the schema links from nothing (a participant or problem made by another call): without a real id
# every generated one is a 404 and their handlers are never reached.
[[operations]]
include-path-regex = "^/api/v1/participants/\\\\{{participant_id\\\\}}/(bundle|partition)/$"
parameters = {{ participant_id = {ids["approved"]} }}
[[operations]]
include-path = "/api/v1/problems/{{problem_id}}/participants/"
include-method = "POST"
parameters = {{ problem_id = {ids["published"]} }}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """gunicorn serving a fresh database with the world of tests/web/api_world.py; its URL, ids and tokens."""
    var = tmp_path_factory.mktemp("live-api")
    env = {
        **os.environ,
        "FEDOTA_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "webserver.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "PYTHONPATH": str(REPO),
    }
    env.pop("DATABASE_URL", None)  # its own SQLite file in `var`, never the test run's database
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput"], cwd=REPO, env=env, check=True, capture_output=True)
    subprocess.run(
        [python, "manage.py", "collectstatic", "--noinput"], cwd=REPO, env=env, check=True, capture_output=True
    )
    seeded = subprocess.run(
        [python, "-m", "tests.web.api_world"], cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    world = json.loads(seeded.stdout.strip().splitlines()[-1])
    port = free_port()
    gunicorn = [str(Path(python).with_name("gunicorn")), "webserver.wsgi", "--bind", f"127.0.0.1:{port}"]
    url = f"http://127.0.0.1:{port}"
    with serving(
        gunicorn + ["--worker-class", "gthread", "--workers", "2", "--threads", "4"],
        ready_url=f"{url}/healthz",
        log=var / "gunicorn.log",
        cwd=REPO,
        env=env,
    ):
        yield {"url": url, "var": var, **world}


@pytest.mark.parametrize("role", ["owner", "holder"])
def test_schemathesis_finds_nothing_against_the_live_site(site: dict[str, object], role: str) -> None:
    var = Path(str(site["var"]))
    config = var / f"schemathesis-{role}.toml"
    config.write_text(_config(site["ids"]))  # type: ignore[arg-type]
    token = site["tokens"][role]  # type: ignore[index]
    st = Path(sys.executable).with_name("st")
    done = subprocess.run(
        [str(st), "--no-color", "--config-file", str(config), "run", f"{site['url']}/api/schema/"]
        + ["--header", f"Authorization: Token {token}"],
        cwd=var,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = done.stdout + done.stderr
    (var / f"schemathesis-{role}.log").write_text(report)
    assert done.returncode == 0, f"schemathesis failed as the {role}:\n{report[:6000]}\n...\n{report[-8000:]}"
    # It tested every operation of the schema, with cases generated (not a run that tested nothing).
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert selected and tested and generated, report[-3000:]
    assert int(tested[1]) == int(selected[2]) >= 25, report[-3000:]
    assert int(generated[2]) == int(generated[1]) > 25 * int(tested[1]), report[-3000:]
