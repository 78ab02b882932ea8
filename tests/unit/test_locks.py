"""The lock files pin what pyproject.toml asks for, with hashes, and agree with each other.

`scripts/lock.sh --check` (a CI phase) re-resolves against the package index; these
checks need no network and say which pin breaks which requirement.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def read_lock(name: str) -> dict[str, tuple[Version, int]]:
    """{package: (version, number of hashes)} of one lock file."""
    pins: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in (LOCKS / name).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{name}: {current} pinned twice"
            pins[current] = (Version(match.group(2)), 0)
        elif stripped.startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        else:
            pytest.fail(f"{name}: line is neither a pin nor a hash: {line!r}")
    return pins


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extras: list[str]) -> list[Requirement]:
    """The project's requirements with these extras, self-references expanded."""
    optional = project()["optional-dependencies"]
    reqs, todo, seen = [Requirement(r) for r in project()["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "fedota":
                todo.extend(req.extras)
            else:
                reqs.append(req)
    return reqs


def environment(machine: str) -> dict[str, str]:
    env = default_environment()
    env.update(
        platform_machine=machine,
        platform_system="Linux",
        sys_platform="linux",
        python_version="3.11",
        python_full_version="3.11.2",
    )
    return env


CASES = [
    ("dev.txt", ["dev"], "x86_64"),
    ("selector.txt", [], "x86_64"),
    ("torch.txt", ["torch"], "x86_64"),
    ("web.txt", ["web"], "x86_64"),
    ("client-arm64.txt", ["torch"], "aarch64"),
]


@pytest.mark.parametrize(("lock", "extras", "machine"), CASES)
def test_lock_pins_every_requirement_with_hashes(lock: str, extras: list[str], machine: str) -> None:
    pins = read_lock(lock)
    env = environment(machine)
    for req in requirements(extras):
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} does not pin {req}: run scripts/lock.sh"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, which pyproject.toml's {req} excludes: run scripts/lock.sh"
        )
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, f"{lock}: no hash for {unhashed}"


@pytest.mark.parametrize("lock", ["selector.txt", "torch.txt", "web.txt", "client-arm64.txt"])
def test_every_lock_runs_the_versions_of_the_dev_lock(lock: str) -> None:
    """Tests run in .venv (dev.txt): the images must run exactly what was tested."""
    dev = read_lock("dev.txt")
    for name, (version, _) in read_lock(lock).items():
        if lock == "client-arm64.txt" and name == "torch":
            continue  # another release on aarch64, see pyproject.toml
        assert name in dev, f"{lock} pins {name}, which the tested environment (dev.txt) lacks"
        assert dev[name][0] == version, f"{lock} pins {name}=={version}, dev.txt {dev[name][0]}"


def test_arm64_client_gets_the_cpu_torch() -> None:
    """PyPI's aarch64 torch wheels from 2.11 on are CUDA builds pulling gigabytes of CUDA libraries."""
    pins = read_lock("client-arm64.txt")
    assert pins["torch"][0] == Version("2.10.0")
    assert not [name for name in pins if name.startswith(("nvidia-", "cuda-", "triton"))]
    assert read_lock("torch.txt")["torch"][0] == Version("2.13.0+cpu")
