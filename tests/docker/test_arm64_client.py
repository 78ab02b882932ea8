"""The client for ARM data holders: `fedota/client:latest-arm64`, run under QEMU user emulation.

The image is built for linux/arm64 (`scripts/build-images.sh client-arm64`) and run here
with `docker run --platform linux/arm64` through the kernel's binfmt handler for aarch64
(Debian's qemu-user-static). Asserted from inside the container: it is an aarch64
machine, and its torch computes. A hospital's data folder with a wrong cell is refused
before any connection with the file, row and column named and exit code 3, as on amd64.
Then the arm64 client trains two rounds of the built-in tabular app with an amd64
federation: the problem's coordinator and selector containers started by the Docker
spawner (TLS from a CA made for the test), the client dialling the selector's published
port with a join bundle like the website's.

Slow: every Python instruction in the arm64 container is emulated (the figures are in
docs/containers.md). Skipped loudly, like every docker test, without an engine, the
images or the emulation; failing instead under FEDOTA_REQUIRE_DOCKER=1.

Run alone: `FEDOTA_REQUIRE_DOCKER=1 .venv/bin/pytest -q tests/docker/test_arm64_client.py -s`.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from fedota_common.fab import load_app
from fedota_common.pki import issue_server_cert, make_ca
from tests.docker.conftest import leftovers
from webserver.spawner.base import RunSpec
from webserver.spawner.docker import DockerSpawner

REPO = Path(__file__).resolve().parents[2]
PROBLEM = 7301
ROUNDS = 2

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def _world_readable(root: Path) -> None:
    """The client runs as uid 10001: the mounted files must be readable by anyone."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One hospital's breast-cancer CSV folder and the problem's data contract."""
    from scripts.make_demo_data import make_breast_cancer

    root = tmp_path_factory.mktemp("arm64")
    demo = make_breast_cancer(root / "demo", 2, seed=0)
    _world_readable(root)
    return demo / "clients" / "hospital_0", json.loads((demo / "contract.json").read_text())


def _bundle(folder: Path, **fields: Any) -> Path:
    """A join bundle file with the fields the client reads (the website's format)."""
    doc = {"format": "fedota-join-bundle/1", "site_name": "ARM hospital", **fields}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "join.json"
    path.write_text(json.dumps(doc, indent=2))
    _world_readable(folder)
    return path


def _arm64_run(
    prefix: str, name: str, options: list[str], image: str, command: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`docker run --rm --platform linux/arm64 OPTIONS IMAGE COMMAND`; the container is gone afterwards."""
    line = ["docker", "run", "--rm", "--platform", "linux/arm64", "--name", name, "--label", f"fedota.install={prefix}"]
    line += [*options, image, *command]
    started = time.monotonic()
    try:
        done = subprocess.run(line, capture_output=True, text=True, timeout=timeout)
    except BaseException:  # a time-out or an interrupt ends the docker CLI, not the container
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        raise
    print(
        f"[arm64] {' '.join(line)}\n  exit {done.returncode} after {time.monotonic() - started:.0f} s; "
        f"stderr (tail):\n{done.stderr[-1500:]}",
        flush=True,
    )
    return done


def test_the_arm64_image_is_an_aarch64_machine_whose_torch_computes(
    arm64_client_image: str, docker_prefix: str
) -> None:
    # The privacy accountant (client_image/privacy.py) runs there too: scipy and dm-tree are compiled.
    probe = (
        "import os, platform, torch\n"
        "from client_image import privacy\n"
        "x = torch.ones(2, 3)\n"
        "eps = privacy.epsilon({1.0: 10}, 1e-5)\n"
        "print(os.uname().machine, platform.machine(), torch.__version__, float((x @ x.T).sum()), eps)\n"
    )
    done = _arm64_run(
        docker_prefix,
        f"{docker_prefix}-arm64-probe",
        ["--entrypoint", "python"],
        arm64_client_image,
        ["-c", probe],
        600,
    )
    assert done.returncode == 0, done.stderr
    machine, python_machine, torch_version, total, eps = done.stdout.split()
    assert (machine, python_machine) == ("aarch64", "aarch64")
    # The last CPU-only aarch64 torch on PyPI (requirements/client-arm64.txt).
    assert torch_version.startswith("2.10.0"), torch_version
    assert float(total) == 12.0
    from client_image import privacy

    assert float(eps) == pytest.approx(privacy.epsilon({1.0: 10}, 1e-5), rel=1e-9)  # as on amd64


def test_bad_data_is_refused_naming_file_row_and_column_before_any_connection(
    arm64_client_image: str, docker_prefix: str, hospital: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    data, contract = hospital
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    rows = list(csv.reader((bad / "records.csv").open()))
    column = rows[0].index("mean_radius")
    rows[16][column] = "twelve"  # spreadsheet row 17: the header is row 1
    with (bad / "records.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    _world_readable(tmp_path)
    # A selector nobody listens on: the data check comes first, so it is never dialled.
    bundle = _bundle(tmp_path / "bundle", selectors=["127.0.0.1:9"], data_contract=contract, fab_sha256="0" * 64)

    def client(folder: Path, name: str, *flags: str) -> subprocess.CompletedProcess[str]:
        mounts = ["-v", f"{folder}:/data:ro", "-v", f"{bundle}:/join.json:ro", "--read-only", "--tmpfs", "/tmp"]
        return _arm64_run(docker_prefix, f"{docker_prefix}-arm64-{name}", mounts, arm64_client_image, list(flags), 600)

    good = client(data, "check", "--check-only", "1")
    assert good.returncode == 0, good.stderr
    assert "data check passed" in good.stderr

    refused = client(bad, "bad-data")
    assert refused.returncode == 3, refused.stderr
    assert "records.csv, row 17, column 'mean_radius'" in refused.stderr
    assert "nothing was sent" in refused.stderr


@pytest.fixture
def federation(docker_client: Any, docker_prefix: str, tmp_path: Path) -> Iterator[tuple[DockerSpawner, RunSpec]]:
    """The problem's amd64 coordinator and selector containers, as the platform starts them."""
    app = load_app(REPO / "apps" / "tabular")
    fab = tmp_path / "tabular.fab"
    fab.write_bytes(app.content)
    spawner = DockerSpawner(client=docker_client, prefix=docker_prefix, coordinator_memory="2g", selector_memory="1g")
    ca_cert, ca_key = make_ca(f"Fedota problem {PROBLEM}")
    # The client dials the selector's published port on the host's loopback.
    selector_cert, selector_key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1"])
    coordinator_cert, coordinator_key = issue_server_cert(ca_cert, ca_key, spawner.coordinator_hosts(PROBLEM))
    spec = RunSpec(
        problem_id=PROBLEM,
        run_id=1,
        run_number=1,
        fab_path=fab,
        fab_sha256=app.sha256,
        run_config={"num-server-rounds": ROUNDS, "min-available-nodes": 1},
        num_selectors=1,
        # Emulated, the client needs far longer than natively to import torch and train.
        round_timeout=900.0,
        min_clients=1,
        report_url="",  # no website: the selectors admit any client
        service_token="",
        selector_token="arm64-test-selector-token",
        selector_ports=(random.randrange(13000, 20000),),
        tls_cert_pem=selector_cert,
        tls_key_pem=selector_key,
        coordinator_tls_cert_pem=coordinator_cert,
        coordinator_tls_key_pem=coordinator_key,
        ca_cert_pem=ca_cert,
    )
    try:
        states = spawner.start(spec)
        assert [(s.role, s.health) for s in states] == [("coordinator", "healthy"), ("selector", "healthy")]
        yield spawner, spec
    finally:
        spawner.stop(PROBLEM)
    assert leftovers(docker_client, docker_prefix, PROBLEM) == []


def _rounds(docker_client: Any, prefix: str, spec: RunSpec) -> list[dict[str, Any]]:
    """The coordinator's rounds.jsonl, read from its (possibly exited) container."""
    container = docker_client.containers.get(f"{prefix}-p{spec.problem_id}-coordinator")
    stream, _ = container.get_archive(f"/state/run_{spec.run_number:03d}/rounds.jsonl")
    with tarfile.open(fileobj=BytesIO(b"".join(stream))) as archive:
        member = archive.extractfile("rounds.jsonl")
        assert member is not None
        return [json.loads(line) for line in member.read().decode().splitlines() if line.strip()]


def test_an_arm64_client_trains_the_tabular_app_with_an_amd64_federation(
    arm64_client_image: str,
    docker_client: Any,
    docker_prefix: str,
    hospital: tuple[Path, dict[str, Any]],
    federation: tuple[DockerSpawner, RunSpec],
    tmp_path: Path,
) -> None:
    data, contract = hospital
    _, spec = federation
    coordinator = docker_client.containers.get(f"{docker_prefix}-p{PROBLEM}-coordinator")
    assert docker_client.images.get(coordinator.attrs["Config"]["Image"]).attrs["Architecture"] == "amd64"
    bundle = _bundle(
        tmp_path / "bundle",
        problem_id=PROBLEM,
        selectors=[f"127.0.0.1:{spec.selector_ports[0]}"],
        credential="arm64-hospital-credential",
        ca_certificate=spec.ca_cert_pem,
        fab_sha256=spec.fab_sha256,
        data_contract=contract,
    )
    # What a data holder on an ARM device types (here --network host: the selector is
    # published on this machine's loopback, as for a client on the platform's own host).
    options = ["--network", "host", "--read-only", "--tmpfs", "/tmp"]
    options += ["-v", f"{data}:/data:ro", "-v", f"{bundle}:/join.json:ro"]
    done = _arm64_run(docker_prefix, f"{docker_prefix}-arm64-client", options, arm64_client_image, [], 1500)
    assert done.returncode == 0, done.stderr

    rounds = _rounds(docker_client, docker_prefix, spec)
    print(f"[arm64] rounds: {json.dumps(rounds)}")
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1)), rounds
    for record in rounds:
        assert len(record["participants"]) == 1 and record["failures"] == 0, record
        assert record["train_metrics"], record
        # Evaluated on the hospital's own held-out rows: a real model, not a coin toss.
        assert record["eval_metrics"].get("eval_acc", 0) >= 0.8, record
