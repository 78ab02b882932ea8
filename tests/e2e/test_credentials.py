"""Participant credentials and TLS, end to end through the real website.

Two problems are published (the process spawner: real coordinator and
selector processes, real gRPC over TLS with each problem's own CA); hospitals
join through the services and run `fedota-client` with their join bundles.
Checked against the running selectors:

- a client with its bundle trains over TLS; a plaintext client, and a client
  trusting another problem's CA, cannot talk to the selector;
- a credential for problem A is refused by problem B's selectors;
- revoking a participant on the website closes its connected client within
  10 seconds, and it cannot join again, while the other site keeps training;
- a bundle downloaded again replaces the credential: the old one is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "a long and unusual passphrase 7"

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def site(process_site: str) -> str:
    return process_site


def _user(username: str, role: str) -> Any:
    from django.contrib.auth import get_user_model

    from webserver.accounts.models import Profile

    user = get_user_model().objects.create_user(username=username, email=f"{username}@example.org", password=PASSWORD)
    Profile.objects.create(user=user, role=role, organisation=username.title(), email_verified=True)
    return user


def _publish(owner: Any, title: str, contract: dict[str, Any], rounds: int) -> Any:
    """A problem on the built-in tabular app, published with its first run running."""
    from webserver.problems.lifecycle import run_launch, run_start
    from webserver.problems.models import Problem, ProblemState, Run
    from webserver.problems.services import problem_create

    problem = problem_create(
        owner=owner,
        title=title,
        description="",
        contract=contract,
        app_template="tabular",
        run_config={
            "rounds": rounds,
            "min_clients": 1,
            "clients_per_round": 0,
            "round_timeout": 60,
            "num_selectors": 1,
        },
    )
    Problem.objects.filter(pk=problem.pk).update(state=ProblemState.PUBLISHED)
    problem.refresh_from_db()
    run = run_start(problem=problem, user=owner)
    run_launch(run_id=run.pk)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "running", run.status_detail
    return problem


def _join(problem: Any, user: Any, tmp_path: Path) -> tuple[Any, Path]:
    from webserver.participation.services import participant_approve, participant_issue_bundle, participant_request

    participant = participant_request(
        problem=problem, user=user, site_name=user.username, contact_email=f"{user.username}@example.org"
    )
    participant_approve(participant=participant, by=problem.owner)
    path = tmp_path / f"{user.username}-{problem.pk}.json"
    path.write_text(json.dumps(participant_issue_bundle(participant=participant, by=user)))
    return participant, path


def _client(bundle: Path, data: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "client_image",
                "--join-bundle",
                str(bundle),
                "--data-path",
                str(data),
                "--cache-dir",
                str(log.with_suffix(".cache")),
                "--max-join-wait",
                "30",
                *extra,
            ],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.django_db(transaction=True)
def test_tls_credentials_scope_and_revocation(site: str, tmp_path: Path, demo: Path) -> None:
    from webserver.participation.services import participant_decide, participant_issue_bundle
    from webserver.problems.models import Run

    contract = json.loads((demo / "breast_cancer" / "contract.json").read_text())
    hospitals = demo / "breast_cancer" / "clients"
    owner = _user("setter", "setter")
    ada, bea = _user("ada", "holder"), _user("bea", "holder")
    # Far more rounds than the test lasts: both runs are still training at its end.
    problem_a = _publish(owner, "Problem A", contract, rounds=10_000)
    problem_b = _publish(owner, "Problem B", contract, rounds=10_000)
    part_ada, bundle_ada = _join(problem_a, ada, tmp_path)
    _, bundle_bea = _join(problem_a, bea, tmp_path)
    _, bundle_bea_b = _join(problem_b, bea, tmp_path)
    doc_a, doc_b = json.loads(bundle_ada.read_text()), json.loads(bundle_bea_b.read_text())
    assert "BEGIN CERTIFICATE" in doc_a["ca_certificate"] and doc_a["ca_certificate"] != doc_b["ca_certificate"]
    run_a = Run.objects.get(problem=problem_a)

    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("ada", "bea", "plain", "wrongca", "crossed", "old")}
    try:
        procs.append(ada_client := _client(bundle_ada, hospitals / "hospital_0", logs["ada"]))
        procs.append(bea_client := _client(bundle_bea, hospitals / "hospital_1", logs["bea"]))
        _wait(lambda: run_a.rounds.filter(number__gte=2).exists(), 120, "problem A to train over TLS")

        # Plaintext against a TLS selector: never gets through.
        procs.append(
            plain := _client(bundle_ada, hospitals / "hospital_2", logs["plain"], "--insecure", "--max-join-wait", "5")
        )
        # TLS, but trusting problem B's CA: the selector's certificate does not verify.
        wrong_ca = tmp_path / "wrong-ca.json"
        wrong_ca.write_text(json.dumps({**doc_a, "ca_certificate": doc_b["ca_certificate"]}))
        procs.append(wrongca := _client(wrong_ca, hospitals / "hospital_2", logs["wrongca"], "--max-join-wait", "5"))
        # Problem B's credential presented to problem A's selector (with A's CA, so TLS is fine).
        crossed = tmp_path / "crossed.json"
        crossed.write_text(json.dumps({**doc_a, "credential": doc_b["credential"]}))
        procs.append(crossed_client := _client(crossed, hospitals / "hospital_2", logs["crossed"]))
        for proc, name in ((wrongca, "wrongca"), (crossed_client, "crossed")):
            proc.wait(timeout=90)
            assert proc.returncode == 4, f"{name}: exit {proc.returncode}\n{logs[name].read_text()[-2000:]}"
        assert "does not accept the credential" in logs["crossed"].read_text()
        plain.wait(timeout=90)
        assert plain.returncode != 0 and "joined" not in logs["plain"].read_text()

        # Revocation on the website reaches the selector and closes ada's session.
        participant_decide(participant=part_ada, by=owner, verb="revoke", reason="data withdrawn")
        revoked_at = time.monotonic()
        ada_client.wait(timeout=30)
        took = time.monotonic() - revoked_at
        assert took < 10, f"the revoked client was disconnected only after {took:.1f} s"
        assert ada_client.returncode == 4, logs["ada"].read_text()[-2000:]
        assert "access withdrawn" in logs["ada"].read_text() or "does not accept" in logs["ada"].read_text()
        # It cannot come back with the same bundle.
        again = _client(bundle_ada, hospitals / "hospital_0", tmp_path / "again.log")
        procs.append(again)
        again.wait(timeout=60)
        assert again.returncode == 4
        # bea keeps training meanwhile.
        before = run_a.rounds.count()
        _wait(lambda: run_a.rounds.count() >= before + 2, 60, "problem A to go on training with bea")
        assert bea_client.poll() is None

        # A new bundle replaces bea's credential: the running client with the old one is closed.
        bea_part = problem_a.participants.get(user=bea)
        old_bundle = bundle_bea.read_text()
        participant_issue_bundle(participant=bea_part, by=bea)
        bea_client.wait(timeout=30)
        assert bea_client.returncode == 4
        (tmp_path / "old.json").write_text(old_bundle)
        procs.append(old := _client(tmp_path / "old.json", hospitals / "hospital_1", logs["old"]))
        old.wait(timeout=60)
        assert old.returncode == 4

        # Last (it throttles this address): a flood of guessed credentials is cut off,
        # and the selector keeps serving.
        _flood(doc_a, bea_part.pk)
    except Exception:
        for name, path in logs.items():
            if path.exists():
                print(f"--- {name}\n{path.read_text()[-2500:]}")
        raise
    finally:
        for proc in procs:
            _stop(proc)


def _flood(bundle: dict[str, Any], participant_id: int) -> None:
    import grpc

    from fedota_common.grpcutil import channel
    from protos.selector.v1 import selector_pb2 as spb
    from protos.selector.v1 import selector_pb2_grpc

    codes = []
    with channel(bundle["selectors"][0], bundle["ca_certificate"].encode()) as ch:
        stub = selector_pb2_grpc.SelectorStub(ch)
        for attempt in range(15):
            try:
                stub.Join(spb.JoinRequest(credential=f"fdp_{participant_id}_guess{attempt}"), timeout=30)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
        assert "OK" not in codes
        assert codes[-1] == "RESOURCE_EXHAUSTED", codes
        assert codes.count("UNAUTHENTICATED") <= 10, codes
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
