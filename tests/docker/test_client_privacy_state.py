"""The client image keeps a privacy budget's ledger on the data holder's machine, or refuses.

`fedota/client` with `--dp-epsilon`: without a folder of the host mounted at /state the
client refuses to start (what it spent would vanish with the container), saying what to
mount; with one, run as the folder's owner (`--user`), the ledger is written there before
the client looks for a selector.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from client_image import exits

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


def _client(docker_prefix: str, tmp_path: Path, *mounts: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    bundle = tmp_path / "join.json"
    # No selector answers on this port: the client gives up after --max-join-wait.
    bundle.write_text(json.dumps({"selectors": ["127.0.0.1:9"], "problem_id": 31, "webserver_url": "http://web"}))
    os.chmod(bundle, 0o644)
    return subprocess.run(
        [
            *("docker", "run", "--rm", "--network", "none", "--label", f"fedota.install={docker_prefix}"),
            *("-v", f"{data}:/data:ro", "-v", f"{bundle}:/join.json:ro", *mounts),
            "fedota/client:latest",
            *("--insecure", "--max-join-wait", "1", "--dp-epsilon", "4", "--dp-clipping-norm", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_budget_without_a_mounted_state_folder_is_refused(
    docker_client: Any, docker_prefix: str, tmp_path: Path
) -> None:
    done = _client(docker_prefix, tmp_path)
    assert done.returncode == exits.REFUSED, done.stderr
    assert "is inside the container" in done.stderr, done.stderr
    assert "-v /path/on/your/machine/fedota-privacy:/state" in done.stderr, done.stderr


def test_the_ledger_is_written_to_the_holders_folder(docker_client: Any, docker_prefix: str, tmp_path: Path) -> None:
    state = tmp_path / "fedota-privacy"
    state.mkdir()
    user = f"{os.getuid()}:{os.getgid()}"
    done = _client(docker_prefix, tmp_path, "-v", f"{state}:/state", "--user", user)
    assert "privacy: every update is clipped to L2 norm 1 and noised here" in done.stderr, done.stderr
    assert done.returncode == exits.REFUSED and "127.0.0.1:9" in done.stderr, done.stderr  # no selector here
    (ledger,) = state.glob("problem-31-*.json")
    doc = json.loads(ledger.read_text())
    assert doc["format"] == "fedota-privacy-ledger/1" and doc["releases"] == []
    assert doc["problem"]["key"] == "http://web#problem-31"
