"""Tests against a real Docker engine with the images built by scripts/build-images.sh.

No engine or no images: the tests are skipped with a loud reason, unless
FEDOTA_REQUIRE_DOCKER=1 (scripts/test.sh sets it once it has started the engine
and built the images; CI always does), where they fail instead. So a CI run
can never pass without them having run.

Everything a test creates carries the install label of a prefix unique to this
test session, so the tests never touch the containers of a running demo or of
another session, and a final check proves they left nothing behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

IMAGES = ("fedota/coordinator:latest", "fedota/selector:latest", "fedota/client:latest")
PREFIX = f"fdt{secrets.token_hex(3)}"


def _require() -> bool:
    return os.environ.get("FEDOTA_REQUIRE_DOCKER", "") == "1"


def unavailable(reason: str) -> NoReturn:
    message = f"NO DOCKER: {reason}. Start the engine and build the images with scripts/build-images.sh."
    if _require():
        pytest.fail(message + " (FEDOTA_REQUIRE_DOCKER=1: container tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        import docker
    except ImportError:
        unavailable("the docker Python package is not installed")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - whatever the reason, there is no engine to test against
        unavailable(f"no Docker engine answers ({exc})")
    require_images(client, IMAGES)
    yield client
    leftovers = _labelled(client, {"label": [f"fedota.install={PREFIX}"]})
    client.close()
    assert not leftovers, f"the docker tests left these behind: {leftovers}"


def require_images(client: Any, images: tuple[str, ...]) -> None:
    """Every one of `images` is on the engine, or the test is unavailable naming those missing."""
    import docker.errors

    missing = []
    for image in images:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        unavailable(f"images missing: {', '.join(missing)}")


def _labelled(client: Any, filters: dict[str, list[str]]) -> list[str]:
    # The plain listing: docker-py's containers.list() inspects each container it lists, and one
    # the reconciler removes in between fails the whole call with NotFound (seen once in CI).
    found = [f"container {c['Names'][0].lstrip('/')}" for c in client.api.containers(all=True, filters=filters)]
    found += [f"network {n.name}" for n in client.networks.list(filters=filters)]
    found += [f"volume {v.name}" for v in client.volumes.list(filters=filters)]
    return found


@pytest.fixture(scope="session")
def docker_prefix() -> str:
    """The install prefix (and label) of everything this session creates."""
    return PREFIX


def leftovers(client: Any, prefix: str, problem_id: int) -> list[str]:
    """Every container, network and volume still labelled with the problem."""
    return _labelled(client, {"label": [f"fedota.install={prefix}", f"fedota.problem={problem_id}"]})


ARM64_CLIENT_IMAGE = "fedota/client:latest-arm64"
BINFMT_AARCH64 = "/proc/sys/fs/binfmt_misc/qemu-aarch64"


@pytest.fixture(scope="session")
def arm64_client_image(docker_client: Any) -> str:
    """The linux/arm64 client image, with QEMU user emulation registered to run it on this machine."""
    import docker

    build = "scripts/build-images.sh client-arm64 builds it and sets up the emulation"
    try:
        arch = docker_client.images.get(ARM64_CLIENT_IMAGE).attrs["Architecture"]
    except docker.errors.ImageNotFound:
        unavailable(f"image missing: {ARM64_CLIENT_IMAGE} ({build})")
    assert arch == "arm64", f"{ARM64_CLIENT_IMAGE} is built for {arch}, not arm64"
    try:
        with open(BINFMT_AARCH64) as handler:
            registered = handler.read()
    except OSError:
        registered = ""
    if not registered.startswith("enabled"):
        unavailable(f"no arm64 emulation: {BINFMT_AARCH64} is not enabled (scripts/arm64-emulation.sh)")
    return ARM64_CLIENT_IMAGE
