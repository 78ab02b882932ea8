"""scripts/install-debian.sh for real, in a fresh Debian container: what the YunoHost package calls.

YunoHost cannot run here, so its package (deploy/yunohost/) hands all the real work to
this one script, and this test runs that script the way a server would, in a container
from the project's Debian base image (no init system, so `--services direct` starts the
same commands the systemd units run). The source tree and the wheelhouse that
scripts/build-images.sh makes are mounted read-only; nothing comes from the internet.

install (admin account, services up) -> the website answers -> the demo federation of
scripts/start.sh trains (three hospitals' clients, rounds recorded) -> upgrade (code
replaced, the database, the secret key and the rounds kept) -> remove (services gone, data
kept) -> remove --purge (data gone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import unavailable
from tests.docker.joining import readable

pytestmark = [pytest.mark.docker, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / "build" / "wheelhouse"
# What scripts/build-base-image.sh makes here, or the image it prefers where it can be pulled.
BASE_IMAGES = ("fedota/base:bookworm", "python:3.11-slim-bookworm")
SCRIPT = "/src/scripts/install-debian.sh"
MANAGE = ["setpriv", "--reuid", "fedota", "--regid", "fedota", "--init-groups", "/opt/fedota/bin/fedota-manage"]
ADMIN_PASSWORD = "an-admin-password-for-the-test"


class Debian:
    """A Debian container and the commands the test runs in it."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def run(self, *argv: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        code, (out, err) = self.container.exec_run(list(argv), environment=env or {}, demux=True)
        text = (out or b"").decode() + (err or b"").decode()
        if check:
            assert code == 0, f"{' '.join(argv)} exited {code}:\n{text[-4000:]}"
        return text

    def script(self, *argv: str, env: dict[str, str] | None = None) -> str:
        return self.run("bash", SCRIPT, *argv, env=env)

    def python(self, code: str) -> str:
        return self.run("python3", "-c", code).strip()

    def status(self, path: str) -> int:
        """The HTTP status the website answers `path` with, on the loopback port nginx would proxy to."""
        return int(
            self.python(
                "import urllib.request, urllib.error\n"
                "try:\n"
                f"    print(urllib.request.urlopen('http://127.0.0.1:8095{path}', timeout=10).status)\n"
                "except urllib.error.HTTPError as e:\n"
                "    print(e.code)\n"
            )
        )

    def django(self, code: str) -> str:
        """What `code` prints, run by the installed site's `manage.py shell` as its user."""
        return self.run(*MANAGE, "shell", "-c", code).strip().splitlines()[-1]

    def processes(self, user_id: int) -> list[str]:
        """The command lines of the live processes of `user_id` (zombies left out)."""
        listing = self.python(
            "import os\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            "        stat = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()\n"
            "        uid = os.stat(f'/proc/{pid}').st_uid\n"
            "        cmd = open(f'/proc/{pid}/cmdline').read().replace('\\0', ' ')\n"
            "    except OSError:\n"
            "        continue\n"
            f"    if uid == {user_id} and stat[0] != 'Z':\n"
            "        print(cmd)\n"
        )
        return [line for line in listing.splitlines() if line]


@pytest.fixture(scope="module")
def debian(docker_client: Any, docker_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Debian]:
    import docker.errors

    base = next((name for name in BASE_IMAGES if _has_image(docker_client, name)), None)
    if base is None:
        unavailable(f"no Debian base image ({' or '.join(BASE_IMAGES)}; scripts/build-images.sh makes the first)")
    if not any(WHEELHOUSE.glob("torch-*.whl")):
        unavailable(f"no wheelhouse with torch at {WHEELHOUSE} (scripts/build-images.sh makes it)")

    from scripts.make_demo_data import make_breast_cancer

    demo = tmp_path_factory.mktemp("debian-install-demo")
    make_breast_cancer(demo, 3, seed=0)
    readable(demo)
    container = docker_client.containers.run(
        base,
        ["sleep", "infinity"],
        name=f"{docker_prefix}-debian-install",
        labels={"fedota.install": docker_prefix},
        # An init that reaps what the services leave, as on a server.
        init=True,
        detach=True,
        volumes={
            str(REPO): {"bind": "/src", "mode": "ro"},
            str(WHEELHOUSE): {"bind": "/wheels", "mode": "ro"},
            str(demo): {"bind": "/demo", "mode": "ro"},
        },
    )
    try:
        yield Debian(container)
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


def _has_image(client: Any, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def test_install_train_upgrade_remove(debian: Debian) -> None:
    started = time.monotonic()

    # -- install: the admin account, the three services, the website answering
    out = debian.script(
        "install",
        "--wheelhouse",
        "/wheels",
        "--admin",
        "organiser",
        "--admin-email",
        "organiser@example.org",
        env={"FEDOTA_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    assert "the website answers" in out, out
    status = debian.script("status")
    assert all(f"{role}: running" in status for role in ("web", "worker", "beat")), status
    assert debian.status("/healthz") == 200
    assert debian.status("/accounts/login/") == 200
    assert debian.status("/no-such-page/") == 404  # DEBUG off: the site's own 404
    assert (
        debian.django(
            "from django.contrib.auth import get_user_model; "
            f"u = get_user_model().objects.get(username='organiser'); print(u.is_superuser and u.check_password('{ADMIN_PASSWORD}'))"
        )
        == "True"
    )
    env_before = debian.run("cat", "/opt/fedota/fedota.env")
    assert "FEDOTA_ENV=production" in env_before and "DJANGO_SECRET_KEY=" in env_before
    assert debian.run("stat", "-c", "%a %U:%G", "/opt/fedota/fedota.env").strip() == "640 root:fedota"
    installed = time.monotonic()

    # -- the demo federation of scripts/start.sh: the problem published through the installed
    # Celery worker (process backend), three hospitals' clients, rounds recorded by the website
    debian.run("install", "-d", "-o", "fedota", "/tmp/bundles")
    demo_out = debian.run(
        *MANAGE, "fedota_demo", "--data", "/demo/breast_cancer", "--bundles", "/tmp/bundles", "--wait", "120"
    )
    assert "run 1: running" in demo_out, demo_out
    for i in range(3):
        debian.container.exec_run(
            [
                "sh",
                "-c",
                f"echo $$ > /tmp/client-{i}.pid; cd /tmp; exec env FLWR_TELEMETRY_ENABLED=0 "
                "PYTHONPATH=/opt/fedota/app /opt/fedota/venv/bin/python -m client_image "
                f"--join-bundle /tmp/bundles/hospital-{i + 1}.json "
                f"--data-path /demo/breast_cancer/clients/hospital_{i} >/tmp/client-{i}.log 2>&1",
            ],
            detach=True,
        )
    count_rounds = "from webserver.monitoring.models import RoundRecord; print(RoundRecord.objects.count())"
    deadline = time.monotonic() + 120
    rounds = 0
    while time.monotonic() < deadline:
        rounds = int(debian.django(count_rounds))
        if rounds >= 2:
            break
        time.sleep(2)
    logs = debian.run("sh", "-c", "tail -n 5 /tmp/client-*.log /var/log/fedota/worker.log", check=False)
    assert rounds >= 2, f"no rounds recorded within 120 s:\n{logs}"
    accuracy = float(
        debian.django(
            "from webserver.monitoring.models import RoundRecord; "
            "print(RoundRecord.objects.exclude(eval_acc=None).order_by('-id').first().eval_acc)"
        )
    )
    assert 0.5 < accuracy <= 1.0, f"held-out accuracy {accuracy} after {rounds} rounds"
    debian.run("sh", "-c", "kill $(cat /tmp/client-*.pid)", check=False)
    trained = time.monotonic()

    # -- upgrade: new code in place, the database, secret key and rounds kept, migrations run
    debian.run("touch", "/opt/fedota/app/left-from-the-old-version")
    rounds_before = int(debian.django(count_rounds))
    out = debian.script("upgrade", "--wheelhouse", "/wheels")
    assert "venv /opt/fedota/venv is up to date" in out, out
    code, _ = debian.container.exec_run(["test", "-e", "/opt/fedota/app/left-from-the-old-version"])
    assert code == 1, "upgrade left the old code in place"
    assert debian.run("cat", "/opt/fedota/fedota.env") == env_before
    assert int(debian.django(count_rounds)) >= rounds_before
    assert (
        debian.django(
            "from django.contrib.auth import get_user_model; "
            "print(get_user_model().objects.filter(username='demo-setter').exists())"
        )
        == "True"
    )
    assert "No migrations to apply" in debian.run("cat", "/var/log/fedota/migrate.log")
    assert debian.status("/healthz") == 200
    assert "stopped" not in debian.script("status")
    upgraded = time.monotonic()

    # -- remove: services and code gone, data and settings kept; then --purge
    uid = int(debian.run("id", "-u", "fedota").strip())
    debian.script("remove")
    assert debian.processes(uid) == [], "processes of the fedota user outlived remove"
    code, _ = debian.container.exec_run(["test", "-e", "/opt/fedota/app"])
    assert code == 1, "remove left the code"
    code, _ = debian.container.exec_run(["test", "-s", "/var/lib/fedota/fedota.sqlite3"])
    assert code == 0, "remove (without --purge) deleted the database"
    debian.script("remove", "--purge")
    code, _ = debian.container.exec_run(["test", "-e", "/var/lib/fedota"])
    assert code == 1, "remove --purge left the data"
    code, _ = debian.container.exec_run(["id", "fedota"])
    assert code == 1, "remove --purge left the user"
    done = time.monotonic()
    print(
        f"install {installed - started:.0f} s, demo trained ({rounds} rounds) {trained - installed:.0f} s, "
        f"upgrade {upgraded - trained:.0f} s, remove {done - upgraded:.0f} s"
    )
