"""The images carry no secret: nothing secret-named in their environment, no key or secret file inside.

Secrets reach containers only at run time (compose interpolates .env, the spawner passes
each run's tokens and certificate). This reads every image scripts/build-images.sh makes:
its configured environment and build history, and, for the Python images, the files of
the places a secret would be left (the app, home folders, /etc, state folders).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.docker.conftest import unavailable

pytestmark = [pytest.mark.docker]

PYTHON_IMAGES = ("fedota/web:latest", "fedota/coordinator:latest", "fedota/selector:latest", "fedota/client:latest")
OTHER_IMAGES = ("fedota/postgres:15", "fedota/redis:7")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|(^|_)KEY$|_KEY_FILE$")
# An environment variable may name where a secret is read from, never hold one.
HARMLESS_VALUES = {""}

# Prints JSON: [path, why] for each finding under the given roots.
SCAN = r"""
import json, os, re, sys
roots = ["/app", "/root", "/home", "/etc", "/var/lib/fedota", "/state", "/data", "/srv", "/opt/fedota"]
skip = ("/etc/ssl/certs", "/etc/alternatives")
names = re.compile(r"(^\.env$|\.(pem|key|p12|pfx|sqlite3?)$|^id_(rsa|ecdsa|ed25519)$)")
found = []
for root in roots:
    for folder, dirs, files in os.walk(root):
        if folder.startswith(skip):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(folder, name)
            if names.search(name):
                found.append([path, "secret-looking file name"])
            try:
                if os.path.islink(path) or os.path.getsize(path) > 2_000_000:
                    continue
                with open(path, "rb") as fh:
                    if b"PRIVATE KEY-----" in fh.read():
                        found.append([path, "holds a PEM private key"])
            except OSError:
                pass
print(json.dumps(found))
"""


def _image(docker_client: Any, name: str) -> Any:
    import docker.errors

    try:
        return docker_client.images.get(name)
    except docker.errors.ImageNotFound:
        unavailable(f"image {name} is missing")


@pytest.mark.parametrize("name", PYTHON_IMAGES + OTHER_IMAGES)
def test_no_secret_in_the_images_environment_or_history(docker_client: Any, name: str) -> None:
    image = _image(docker_client, name)
    config = image.attrs["Config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    filled = {k: v for k, v in env.items() if SECRET_NAME.search(k) and v not in HARMLESS_VALUES}
    assert not filled, f"{name} has secrets in its environment: {sorted(filled)}"
    assert str(config.get("User") or "") not in ("", "0", "root", "0:0"), f"{name} runs as root"
    for step in image.history():
        created_by = str(step.get("CreatedBy") or "")
        for item in re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S+)", created_by):
            assert not (SECRET_NAME.search(item[0]) and item[1] not in ("''", '""')), (
                f"{name} was built with {item[0]} set: {created_by[:300]}"
            )


@pytest.mark.parametrize("name", PYTHON_IMAGES)
def test_no_key_or_secret_file_inside_the_image(docker_client: Any, docker_prefix: str, name: str) -> None:
    _image(docker_client, name)
    label = ["--label", f"fedota.install={docker_prefix}"]
    done = subprocess.run(
        ["docker", "run", "--rm", *label, "--network", "none", "--entrypoint", "python", name, "-c", SCAN],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert not found, f"{name} holds: {found}"
