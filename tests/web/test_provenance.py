"""Every downloadable model has a signed provenance manifest next to it: downloaded through the real
views, the pair verifies against the problem's CA, names the run, round, app, contract, sites (under
pseudonyms), reply policy and the privacy requirement and self-reported budgets; a tampered model fails."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.test import Client

from fedota_common import provenance
from fedota_common.pki import make_ca
from fedota_common.provenance import ExitCode, VerificationError
from webserver.monitoring.models import Checkpoint
from webserver.participation.models import Participant, ParticipantStatus
from webserver.problems.models import Run
from webserver.problems.pki import ca_certificate

pytestmark = pytest.mark.web

TOKEN = "provenance-service-token"
NPZ = b"PK\x03\x04 round three's arrays " + bytes(range(256)) * 8


@pytest.fixture
def run(users: dict[str, Any], make_problem: Callable[..., Any]) -> Run:
    problem = make_problem(users["owner"], title="Heart disease")
    return Run.objects.create(
        problem=problem,
        number=1,
        config={"rounds": 3, "strategy": "FedAvg", "round_timeout": 30.5, "reply_policy": "strict"},
        fab_sha256=problem.fab_sha256,
        status="running",
        service_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    )


@pytest.fixture
def sites(run: Run, users: dict[str, Any]) -> list[Participant]:
    return [
        Participant.objects.create(
            problem=run.problem, user=users[who], site_name=name, contact_email=f"{who}@example.org", status=status
        )
        for who, name, status in (
            ("holder", "St Elsewhere", ParticipantStatus.APPROVED),
            ("participant", "General Hospital", ParticipantStatus.APPROVED),
        )
    ]


@pytest.fixture
def owner(users: dict[str, Any]) -> Client:
    browser = Client()
    browser.force_login(users["owner"])
    return browser


def _events(client: Client, run: Run, events: list[dict[str, Any]]) -> None:
    for event in events:
        event.setdefault("event_id", uuid.uuid4().hex)
        event.setdefault("ts", time.time())
    resp = client.post(
        f"/internal/v1/runs/{run.pk}/events",
        data=json.dumps(events),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )
    assert resp.status_code == 200, resp.content


def _put(client: Client, run: Run, round: int, kind: str, data: bytes, attempt: int = 1) -> None:
    resp = client.put(
        f"/internal/v1/runs/{run.pk}/checkpoints/{round}/{kind}?attempt={attempt}",
        data=data,
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
    )
    assert resp.status_code == 201, resp.content


def _train(client: Client, run: Run, rounds: dict[int, list[Participant]], attempt: int = 1) -> None:
    _events(client, run, [{"kind": "run_started", "reply_policy": "strict", "attempt": attempt}])
    _events(
        client,
        run,
        [
            {
                "kind": "round_finished",
                "round": number,
                "attempt": attempt,
                "participants": [{"participant": str(p.pk), "site": p.site_name} for p in who],
            }
            for number, who in rounds.items()
        ],
    )


def _download(client: Client, url: str) -> tuple[bytes, Any]:
    resp: Any = client.get(url)
    assert resp.status_code == 200, resp.content
    body = b"".join(resp.streaming_content) if resp.streaming else resp.content
    return body, resp


def _verified(model: bytes, manifest: bytes, run: Run) -> dict[str, Any]:
    ca = provenance.trusted_ca(ca_certificate(run.problem_id).encode())
    return provenance.verify_document(manifest, io.BytesIO(model), ca=ca).manifest


def test_a_downloaded_model_and_its_manifest_verify_and_say_what_made_the_model(
    client: Client, owner: Client, run: Run, sites: list[Participant], tmp_path: Path
) -> None:
    hospital, clinic = sites
    _train(client, run, {1: [hospital, clinic], 2: [hospital], 3: [hospital, clinic]})
    _put(client, run, 3, "npz", NPZ)
    _put(client, run, 0, "npz", b"final arrays")
    _put(client, run, 0, "pt", b"final state_dict")

    # The dashboard API links each model's manifest next to it, and the page shows the final model's.
    rounds = owner.get(f"/api/v1/runs/{run.pk}/rounds/").json()
    links = rounds[2]["downloads"]
    base = f"/monitoring/runs/{run.pk}/checkpoints"
    assert links["npz"] == f"{base}/3.npz" and links["npz_manifest"] == f"{base}/3.npz.manifest.json"
    assert links["pt"] is None and links["pt_manifest"] is None
    page = owner.get(f"/monitoring/problems/{run.problem_id}/").content.decode()
    assert f'href="{base}/0.pt.manifest.json"' in page and f'href="{base}/0.npz.manifest.json"' in page

    model, model_resp = _download(owner, links["npz"])
    manifest_bytes, resp = _download(owner, links["npz_manifest"])
    assert model == NPZ and resp["Content-Type"] == "application/json"
    assert "heart-disease-run1-round0003.npz.manifest.json" in resp["Content-Disposition"]
    assert resp["X-Fedota-Model-Round"] == model_resp["X-Fedota-Model-Round"] == "3"

    m = _verified(model, manifest_bytes, run)
    assert m["model"]["file"] == "heart-disease-run1-round0003.npz" and m["model"]["bytes"] == len(NPZ)
    assert m["model"]["sha256"] == hashlib.sha256(NPZ).hexdigest()
    assert m["problem"] == {"id": run.problem_id, "title": "Heart disease"}
    assert m["run"] == {"id": run.pk, "number": 1, "attempt": 1, "round": 3, "final": False}
    assert m["app"]["fab_sha256"] == run.fab_sha256
    assert m["data_contract"]["sha256"] == provenance.canonical_sha256(run.problem.contract)
    assert m["reply_policy"] == {"name": "strict", "source": "reported by the run's coordinator"}
    assert m["aggregation"]["strategy"] == "FedAvg"
    # These rounds' events do not say (as an older coordinator's): unknown, not "not used".
    assert m["aggregation"]["secure_aggregation"] == {
        "completed": [],
        "halted": [],
        "not_used": [],
        "unknown": [[1, 3]],
    }
    # No requirement and no site reported a budget: said so, not left null (tests/web/test_privacy.py has the rest).
    assert m["privacy"]["settings"]["requirement"] == {} and m["privacy"]["budgets_spent"] == {}
    assert m["platform"]["fedota_version"] == provenance.FEDOTA_VERSION
    assert m["rounds"]["by_attempt"] == [{"attempt": 1, "rounds": [[1, 3]]}]
    # Sites by pseudonym only, each with the rounds it took part in.
    train = m["sites"]["train"]
    assert sorted(train.values()) == [[[1, 1], [3, 3]], [[1, 3]]]
    assert all(name.startswith("site-") and len(name) == 21 for name in train)
    text = manifest_bytes.decode()
    assert "St Elsewhere" not in text and "General Hospital" not in text

    # The same sites carry the same pseudonyms in the final model's manifest.
    final = _verified(*(_download(owner, f"{base}/0.pt{s}")[0] for s in ("", ".manifest.json")), run=run)
    assert final["run"]["final"] is True and final["run"]["round"] == 0
    assert final["rounds"]["through"] == 3 and set(final["sites"]["train"]) == set(train)

    # The command a user runs, on the two downloaded files and the CA from their join bundle.
    (tmp_path / "model.npz").write_bytes(model)
    (tmp_path / "model.npz.manifest.json").write_bytes(manifest_bytes)
    (tmp_path / "bundle.json").write_text(json.dumps({"ca_certificate": ca_certificate(run.problem_id)}))
    args = [str(tmp_path / n) for n in ("model.npz", "model.npz.manifest.json")]
    assert provenance.main([*args, "--ca", str(tmp_path / "bundle.json")]) == ExitCode.OK

    # A tampered model, or a manifest of another file, fails.
    (tmp_path / "model.npz").write_bytes(model[:-1] + b"!")
    assert provenance.main(args) == ExitCode.MODEL_MISMATCH
    with pytest.raises(VerificationError) as caught:
        _verified(NPZ, _download(owner, f"{base}/0.npz.manifest.json")[0], run)
    assert caught.value.code == ExitCode.MODEL_MISMATCH
    # Another problem's CA does not vouch for this one's models.
    other = provenance.trusted_ca(make_ca("Fedota problem 999")[0].encode())
    with pytest.raises(VerificationError) as caught:
        provenance.verify_document(manifest_bytes, io.BytesIO(model), ca=other)
    assert caught.value.code == ExitCode.UNTRUSTED


def test_a_manifest_has_the_model_downloads_permissions(
    client: Client, owner: Client, run: Run, users: dict[str, Any]
) -> None:
    _put(client, run, 0, "npz", b"final arrays")
    url = f"/monitoring/runs/{run.pk}/checkpoints/0.npz.manifest.json"
    assert Client().get(url).status_code == 302  # to the log-in page
    other = Client()
    other.force_login(users["other_setter"])
    assert other.get(url).status_code == 403
    admin = Client()
    admin.force_login(users["admin"])
    assert admin.get(url).status_code == 200
    assert owner.get(f"/monitoring/runs/{run.pk}/checkpoints/1.npz.manifest.json").status_code == 404
    assert owner.get(f"{url}?attempt=0").status_code == 400
    assert owner.get(f"/monitoring/runs/{run.pk}/checkpoints/0.csv.manifest.json").status_code == 404
    assert client.get(url, HTTP_AUTHORIZATION="Token wrong").status_code == 401


def test_a_failed_runs_final_download_has_the_manifest_of_the_round_it_serves(
    client: Client, owner: Client, run: Run, sites: list[Participant]
) -> None:
    _train(client, run, {1: sites, 2: sites})
    _put(client, run, 2, "npz", b"round 2 arrays")
    Run.objects.filter(pk=run.pk).update(status="failed")
    base = f"/monitoring/runs/{run.pk}/checkpoints"
    model, _ = _download(owner, f"{base}/0.npz")
    manifest, resp = _download(owner, f"{base}/0.npz.manifest.json")
    m = _verified(model, manifest, run)
    assert m["run"]["round"] == 2 and m["run"]["final"] is False and resp["X-Fedota-Model-Round"] == "2"


def test_a_restarted_attempts_model_stands_on_its_own_rounds_and_its_predecessors(
    client: Client, owner: Client, run: Run, sites: list[Participant]
) -> None:
    hospital, clinic = sites
    _train(client, run, {1: [hospital], 2: [hospital]})
    # Attempt 2 resumed after round 2 with another site.
    _train(client, run, {3: [clinic]}, attempt=2)
    _put(client, run, 3, "npz", b"round 3", attempt=2)
    manifest, _ = _download(owner, f"/monitoring/runs/{run.pk}/checkpoints/3.npz.manifest.json")
    m = _verified(b"round 3", manifest, run)
    assert m["run"]["attempt"] == 2
    assert m["rounds"]["by_attempt"] == [{"attempt": 1, "rounds": [[1, 2]]}, {"attempt": 2, "rounds": [[3, 3]]}]
    assert m["rounds"]["unrecorded"] == [] and m["rounds"]["reported_by_several_attempts"] == []


def test_the_contract_is_the_one_recorded_at_upload_and_older_models_are_hashed_on_demand(
    client: Client, owner: Client, run: Run
) -> None:
    _put(client, run, 0, "npz", b"final arrays")
    recorded = provenance.canonical_sha256(run.problem.contract)
    problem = run.problem
    problem.contract = {**problem.contract, "min_rows": 1}
    problem.save(update_fields=["contract"])
    base = f"/monitoring/runs/{run.pk}/checkpoints"
    m = _verified(b"final arrays", _download(owner, f"{base}/0.npz.manifest.json")[0], run)
    assert m["data_contract"]["sha256"] == recorded
    assert m["model"]["hashed"] == "when the coordinator uploaded it"

    # A model stored before uploads were hashed: the manifest hashes the stored file, and says so.
    old = Checkpoint.objects.create(run=run, round=1)
    old.npz.save("old.npz", ContentFile(b"old round 1"))
    m = _verified(b"old round 1", _download(owner, f"{base}/1.npz.manifest.json")[0], run)
    assert m["model"]["hashed"].startswith("when its first manifest was made")
    assert m["data_contract"]["recorded"].startswith("when this manifest was made")
    assert Checkpoint.objects.get(pk=old.pk).npz_sha256 == hashlib.sha256(b"old round 1").hexdigest()


def test_an_attempt_that_restarted_at_round_1_says_its_round_numbers_repeat(
    client: Client, owner: Client, run: Run, sites: list[Participant]
) -> None:
    hospital, clinic = sites
    _train(client, run, {1: [hospital], 2: [hospital]})
    _train(client, run, {1: [clinic]}, attempt=2)
    _put(client, run, 1, "npz", b"attempt 2, round 1", attempt=2)
    manifest, _ = _download(owner, f"/monitoring/runs/{run.pk}/checkpoints/1.npz.manifest.json?attempt=2")
    m = _verified(b"attempt 2, round 1", manifest, run)
    assert m["rounds"]["by_attempt"] == [{"attempt": 2, "rounds": [[1, 1]]}]
    assert m["rounds"]["reported_by_several_attempts"] == [[1, 1]]
    # Contributions are per run and round: both sites are credited with a round 1.
    assert len(m["sites"]["train"]) == 2


def test_a_contract_json_cannot_carry_never_stops_a_model_upload() -> None:
    from webserver.monitoring.provenance import contract_sha256

    assert contract_sha256({"fields": [{"minimum": float("nan")}]}) is None
    assert contract_sha256({"kind": "none"}) == provenance.canonical_sha256({"kind": "none"})


def test_the_manifest_says_which_rounds_secure_aggregation_made(
    client: Client, owner: Client, run: Run, sites: list[Participant]
) -> None:
    hospital, clinic = sites
    outcomes = {1: "completed", 2: "completed", 3: "Insufficient available nodes.", 4: ""}
    _events(client, run, [{"kind": "run_started", "reply_policy": "flower", "attempt": 1}])
    _events(
        client,
        run,
        [
            {
                "kind": "round_finished",
                "round": number,
                "attempt": 1,
                "participants": [{"participant": str(p.pk), "site": p.site_name} for p in (hospital, clinic)],
                "secure_aggregation": outcome,
            }
            for number, outcome in outcomes.items()
        ],
    )
    _put(client, run, 4, "npz", NPZ)
    model, _ = _download(owner, f"/monitoring/runs/{run.pk}/checkpoints/4.npz")
    manifest, _ = _download(owner, f"/monitoring/runs/{run.pk}/checkpoints/4.npz.manifest.json")
    assert _verified(model, manifest, run)["aggregation"]["secure_aggregation"] == {
        "completed": [[1, 2]],
        "halted": [[3, 3]],
        "not_used": [[4, 4]],
        "unknown": [],
    }
