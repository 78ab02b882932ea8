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
- a bundle downloaded again replaces the credential: the old one is refused;
- a new app (uploaded over the API) is a new version: the page shows its files,
  bundles for the old one are stale, the running run keeps its app, the next run
  refuses the old bundle and trains with a new one.
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


# ---- a new app needs a new review, a new bundle and a new run ----------------------------------

REVIEWED_MARKER = "reviewed change: a comment only, the behaviour is the same"


def _api(site: str, method: str, path: str, token: str, expect: int = 200, **kwargs: Any) -> Any:
    """One call of the public REST API as the owner of `token`; the status must be `expect`."""
    import requests

    resp = requests.request(method, site + path, headers={"Authorization": f"Token {token}"}, timeout=60, **kwargs)
    assert resp.status_code == expect, f"{method} {path} answered {resp.status_code}, not {expect}: {resp.text[:2000]}"
    return resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else resp.text


def _token(site: str, username: str) -> str:
    import requests

    resp = requests.post(f"{site}/api/v1/auth/token/", json={"username": username, "password": PASSWORD}, timeout=30)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


def _logged_in(site: str, username: str) -> Any:
    """A browser session of `username`, for the pages."""
    import re

    import requests

    session = requests.Session()
    page = session.get(f"{site}/accounts/login/", timeout=30)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert page.status_code == 200 and match, page.status_code
    resp = session.post(
        f"{site}/accounts/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": match.group(1)},
        headers={"Referer": f"{site}/accounts/login/"},
        allow_redirects=False,
        timeout=30,
    )
    assert resp.status_code in (302, 303), f"log-in as {username}: HTTP {resp.status_code}"
    return session


def _tabular_with_a_comment(tmp_path: Path) -> Any:
    """The built-in tabular app with one harmless edit, built as `flwr build` would."""
    import shutil

    from fedota_common.fab import load_app

    folder = tmp_path / "tabular-v2"
    shutil.copytree(REPO / "apps" / "tabular", folder, ignore=shutil.ignore_patterns("__pycache__"))
    client = folder / "fedota_tabular" / "client_app.py"
    client.write_text(client.read_text() + f"\n# {REVIEWED_MARKER}\n")
    return load_app(folder)


def _zip_hashes(content: bytes) -> dict[str, str]:
    import hashlib
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        return {i.filename: hashlib.sha256(zf.read(i)).hexdigest() for i in zf.infolist() if not i.is_dir()}


@pytest.mark.django_db(transaction=True)
def test_changing_the_app_needs_a_new_review_bundle_and_run(
    site: str, tmp_path: Path, demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setter swaps the app of a published problem; the holder's reviewed code stays what runs.

    Everything a person does goes through the REST API and the pages of the live
    site; the test plays the Celery worker (launch and teardown) in between.
    """
    from webserver.problems import lifecycle, tasks
    from webserver.problems.models import Run

    launches: list[int] = []
    teardowns: list[int] = []
    monkeypatch.setattr(tasks.publish, "delay", lambda run_id: launches.append(run_id))
    monkeypatch.setattr(tasks.stop, "delay", lambda problem_id: teardowns.append(problem_id))

    def work_off_queue() -> None:
        while teardowns:
            lifecycle.run_teardown(problem_id=teardowns.pop(0))
        while launches:
            run = lifecycle.run_launch(run_id=launches.pop(0))
            assert run is not None and run.status == "running", run and run.status_detail

    contract = json.loads((demo / "breast_cancer" / "contract.json").read_text())
    hospital = demo / "breast_cancer" / "clients" / "hospital_0"
    _user("setter", "setter")
    _user("cleo", "holder")
    setter, holder = _token(site, "setter"), _token(site, "cleo")
    run_config = {"rounds": 10_000, "min_clients": 1, "clients_per_round": 0, "round_timeout": 60, "num_selectors": 1}

    # 1. Published with the built-in app; the holder joins, reviews it and takes bundle v1.
    body = {"title": "Tumour grading", "contract": contract, "app_template": "tabular", "run_config": run_config}
    problem = _api(site, "POST", "/api/v1/problems/", setter, 201, json=body)
    pid, v1_sha = problem["id"], problem["fab_sha256"]
    _api(site, "POST", f"/api/v1/problems/{pid}/publish/", setter, 201)
    work_off_queue()
    v1_files = {f["path"]: f["sha256"] for f in _api(site, "GET", f"/api/v1/problems/{pid}/files/", holder)}
    part = _api(site, "POST", f"/api/v1/problems/{pid}/participants/", holder, 201, json={"site_name": "Cleo"})
    _api(site, "POST", f"/api/v1/participants/{part['id']}/approve/", setter)
    bundle_v1 = _api(site, "POST", f"/api/v1/participants/{part['id']}/bundle/", holder)
    assert (bundle_v1["fab_sha256"], bundle_v1["app_version"]) == (v1_sha, 1)
    (v1_path := tmp_path / "bundle-v1.json").write_text(json.dumps(bundle_v1))
    run1 = Run.objects.get(problem_id=pid, number=1)

    def rounds(run_number: int) -> int:
        doc = _api(site, "GET", f"/api/v1/problems/{pid}/dashboard/?run={run_number}", setter)
        assert doc["run"]["number"] == run_number
        return len(doc["rounds"])

    logs = {name: tmp_path / f"{name}.log" for name in ("v1", "v1-again", "v2")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # --follow: when run 1 ends, this client waits for the problem's next run.
        procs.append(v1_client := _client(v1_path, hospital, logs["v1"], "--follow"))
        _wait(lambda: rounds(1) >= 1, 90, "run 1 to train with bundle v1")

        # 2. The setter uploads a changed app: a new version, new files, stale bundles.
        new = _tabular_with_a_comment(tmp_path)
        assert new.sha256 != v1_sha
        edited = _api(
            site,
            "PATCH",
            f"/api/v1/problems/{pid}/",
            setter,
            files={"fab": ("tabular-v2.fab", new.content, "application/octet-stream")},
        )
        assert (edited["app_version"], edited["fab_sha256"]) == (2, new.sha256)
        listing = _api(site, "GET", f"/api/v1/problems/{pid}/files/", holder)
        assert {f["path"]: f["sha256"] for f in listing} == _zip_hashes(new.content)
        # Of the sources, exactly the edited one has a new SHA-256 (flwr's manifest, .info/CONTENT, too).
        changed = "fedota_tabular/client_app.py"
        now = {f["path"]: f["sha256"] for f in listing}
        assert {p for p, sha in v1_files.items() if p.endswith(".py") and now[p] != sha} == {changed}
        source = _api(site, "GET", f"/api/v1/problems/{pid}/files/{changed}", holder)
        assert REVIEWED_MARKER in source
        mine = _api(site, "GET", "/api/v1/me/participations/", holder)["results"]
        assert [
            (m["problem_id"], m["bundle_app_version"], m["problem_app_version"], m["bundle_stale"]) for m in mine
        ] == [(pid, 1, 2, True)]
        browser = _logged_in(site, "cleo")
        page = browser.get(f"{site}/problems/{pid}/", timeout=30)
        assert page.status_code == 200
        assert "The app changed since your last join bundle (version 1, now 2)" in page.text
        assert new.sha256 in page.text and now[changed] in page.text
        source_page = browser.get(f"{site}/problems/{pid}/files/{changed}", timeout=30)
        assert source_page.status_code == 200 and REVIEWED_MARKER in source_page.text

        # 3. The edit does not touch the active run: it goes on with the app it started with.
        runs = _api(site, "GET", f"/api/v1/problems/{pid}/runs/", setter)
        assert [(r["number"], r["status"], r["app_version"], r["fab_sha256"]) for r in runs] == [
            (1, "running", 1, v1_sha)
        ]
        before = rounds(1)
        _wait(lambda: rounds(1) >= before + 2, 60, "run 1 to go on training after the edit")
        assert v1_client.poll() is None, logs["v1"].read_text()[-2000:]
        # Running the new app takes a new run, and only one run at a time.
        refused = _api(site, "POST", f"/api/v1/problems/{pid}/publish/", setter, 409)
        assert "still active" in refused["detail"] and "stop it" in refused["detail"], refused
        _api(site, "POST", f"/api/v1/problems/{pid}/stop/", setter, 202)
        work_off_queue()
        run1.refresh_from_db()
        assert run1.status == "stopped"
        run2 = _api(site, "POST", f"/api/v1/problems/{pid}/publish/", setter, 201)
        assert (run2["number"], run2["app_version"], run2["fab_sha256"]) == (2, 2, new.sha256)
        work_off_queue()

        # 4. Bundle v1 pins code the new run does not run: refused, with what to do.
        # The client connected during run 1 (following the problem) comes back to run 2 and is refused ...
        v1_client.wait(timeout=60)
        assert v1_client.returncode == 4, logs["v1"].read_text()[-2000:]
        assert (
            "the run was stopped" in logs["v1"].read_text()
            and "waiting for the problem's next run" in logs["v1"].read_text()
        )
        # ... and so is one started afresh with bundle v1.
        procs.append(again := _client(v1_path, hospital, logs["v1-again"]))
        again.wait(timeout=60)
        assert again.returncode == 4, logs["v1-again"].read_text()[-2000:]
        for name in ("v1", "v1-again"):
            assert "download a new join bundle and review the new code" in logs[name].read_text(), name
        assert rounds(2) == 0
        # Bundle v2 pins the new app; with it the holder trains in run 2.
        bundle_v2 = _api(site, "POST", f"/api/v1/participants/{part['id']}/bundle/", holder)
        assert (bundle_v2["fab_sha256"], bundle_v2["app_version"]) == (new.sha256, 2)
        assert not _api(site, "GET", "/api/v1/me/participations/", holder)["results"][0]["bundle_stale"]
        (v2_path := tmp_path / "bundle-v2.json").write_text(json.dumps(bundle_v2))
        procs.append(v2_client := _client(v2_path, hospital, logs["v2"]))
        _wait(lambda: rounds(2) >= 1, 90, "run 2 to train with bundle v2")
        assert v2_client.poll() is None, logs["v2"].read_text()[-2000:]
    except Exception:
        for name, path in logs.items():
            if path.exists():
                print(f"--- {name}\n{path.read_text()[-2500:]}")
        raise
    finally:
        for proc in procs:
            _stop(proc)
