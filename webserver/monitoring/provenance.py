"""Signed provenance manifests of the models the website serves (issue 18; docs/provenance.md).

A manifest is built when it is downloaded, from what the platform has recorded by then,
and signed with a fresh key certified by the problem's CA (fedota_common/provenance.py
holds the canonical form, the signing and `fedota-verify`). It describes the very file
the model download of the same URL serves, including a failed run's "final" model that
is its last completed round's.

Sites appear under pseudonyms, `site-` and 16 hex digits of an HMAC-SHA256 of the
participant's id keyed by a key derived from the problem's CA private key: stable for
the problem's life (unlike a client's node id, which changes on every connection, or a
key derived from SECRET_KEY, which may be rotated), different between problems, and not
reversible by whoever reads the manifest (participant ids are small numbers; a plain hash
of one is found by counting). Only the platform, which holds the CA key, can map them back.

Sites are listed with the rounds they took part in as ranges, not round by round: a run
of 1,000 rounds with 1,000 sites would otherwise sign a manifest of tens of megabytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from fedota_common import provenance
from webserver.monitoring import queries
from webserver.monitoring.models import Checkpoint, PrivacyReport, RoundRecord
from webserver.participation.models import Contribution
from webserver.problems.models import Run
from webserver.problems.pki import problem_ca
from webserver.problems.privacy import privacy_sentence

PSEUDONYM_HEX = 16

PSEUDONYMS = (
    "site-<16 hex digits>: an HMAC-SHA256 of the site's participant id, keyed by a key derived from the "
    "problem's CA key. The same site has the same pseudonym in every manifest of this problem, and a "
    "different one in another problem's; only the platform can tell which site it is."
)
PARTICIPATION_NOTE = (
    "Rounds each site was credited with a reply in, as [first, last] ranges. The platform records "
    "contributions per run and round, not per attempt: where an attempt restarted at round 1, a site "
    "listed for round r replied in round r of at least one of the attempts that ran it."
)
PRIVACY_NOTE = (
    "Differential privacy is applied on each data holder's machine: the client clips and noises the site's update "
    "before it leaves, and accounts the site's spending across every round and run of the problem. settings.requirement "
    "is what the problem required of every site ({}: none, each site decided). budgets_spent maps each site's "
    "pseudonym to its latest report as of this model (reports of rounds up to the model's; every report of the run "
    "for a final model) and is SELF-REPORTED by the site: the platform never sees the noise and cannot verify it. "
    "epsilon is cumulative over every run of the problem, at delta. A site absent from budgets_spent reported "
    "nothing (no budget of its own and no requirement, or a client older than privacy reports). An uploaded app "
    "may also apply its own DP (Flower's DP strategy wrappers or client mods); the platform neither knows nor "
    "accounts it."
)
SECURE_AGGREGATION_NOTE = (
    "Rounds whose fit went through Flower's SecAgg+ workflow, as the run's coordinator reported them: completed "
    "(the model is the sum SecAgg+ revealed), halted (that round's model was not updated) or not used; unknown "
    "for rounds reported by a coordinator older than this record."
)


def _ranges(numbers: Iterable[int]) -> list[list[int]]:
    """Sorted whole numbers as [first, last] ranges: 1, 2, 3, 5 -> [[1, 3], [5, 5]]."""
    out: list[list[int]] = []
    for n in sorted(set(numbers)):
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def _pseudonym_key(ca_key_pem: str) -> bytes:
    key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    info = b"fedota: pseudonymous site ids in model manifests"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def pseudonym(key: bytes, participant_id: int | None, site_name: str) -> str:
    """A site's id in manifests: by participant where known (a deleted one leaves only its site name)."""
    subject = f"participant:{participant_id}" if participant_id is not None else f"site:{site_name}"
    return "site-" + hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def _lineage(run: Run, attempt: int, round: int) -> tuple[int, dict[int, int]]:
    """(the last round behind the model, round number -> the attempt whose record of it counts).

    A round's record is the latest attempt's up to `attempt`: a resumed attempt continues
    its predecessor's rounds, one that restarted at round 1 replaces them. The final model
    (round 0) stands on every round its attempt reported (else on its predecessors').
    """
    records = RoundRecord.objects.filter(run=run, attempt__lte=attempt).order_by()
    if round == 0:
        own = records.filter(attempt=attempt).aggregate(last=Max("number"))["last"]
        round = own if own is not None else (records.aggregate(last=Max("number"))["last"] or 0)
    chosen: dict[int, int] = {}
    for number, of_attempt in records.filter(number__lte=round).values_list("number", "attempt"):
        chosen[number] = max(of_attempt, chosen.get(number, 0))
    return round, chosen


def _rounds(run: Run, attempt: int, through: int, chosen: dict[int, int]) -> dict[str, Any]:
    by_attempt: dict[int, list[int]] = {}
    for number, of_attempt in chosen.items():
        by_attempt.setdefault(of_attempt, []).append(number)
    several = [n for n, c in _counts(run, attempt, through).items() if c > 1]
    return {
        "through": through,
        "by_attempt": [{"attempt": a, "rounds": _ranges(ns)} for a, ns in sorted(by_attempt.items())],
        "unrecorded": _ranges(n for n in range(1, through + 1) if n not in chosen),
        "reported_by_several_attempts": _ranges(several),
    }


def _secure_aggregation(run: Run, chosen: dict[int, int]) -> dict[str, list[list[int]]]:
    """The model's rounds by what SecAgg+ did in them (completed, halted, not used, unknown)."""
    found: dict[str, list[int]] = {"completed": [], "halted": [], "not_used": [], "unknown": []}
    records = RoundRecord.objects.filter(run=run, attempt__in=set(chosen.values())).order_by()
    for number, of_attempt, metrics in records.values_list("number", "attempt", "metrics"):
        if chosen.get(number) != of_attempt:
            continue
        outcome = (metrics or {}).get("secure_aggregation")
        if not isinstance(outcome, str):
            found["unknown"].append(number)
        elif outcome == "completed":
            found["completed"].append(number)
        else:
            found["halted" if outcome else "not_used"].append(number)
    return {what: _ranges(numbers) for what, numbers in found.items()}


def _counts(run: Run, attempt: int, through: int) -> dict[int, int]:
    """Round number -> how many of the run's attempts up to `attempt` reported it."""
    counts: dict[int, int] = {}
    records = RoundRecord.objects.filter(run=run, attempt__lte=attempt, number__lte=through).order_by()
    for number in records.values_list("number", flat=True):
        counts[number] = counts.get(number, 0) + 1
    return counts


def _sites(run: Run, through: int, key: bytes) -> dict[str, Any]:
    rounds: dict[str, dict[str, list[int]]] = {"train": {}, "evaluate": {}}
    rows = (
        Contribution.objects.filter(run=run, round__lte=through, round__gte=1)
        .order_by()
        .values_list("participant_id", "site_name", "kind", "round")
    )
    names: dict[tuple[int | None, str], str] = {}
    for participant_id, site_name, kind, number in rows.iterator(chunk_size=5000):
        if kind not in rounds:
            continue
        ident = (participant_id, "" if participant_id is not None else site_name)
        name = names.get(ident)
        if name is None:
            name = names[ident] = pseudonym(key, participant_id, site_name)
        rounds[kind].setdefault(name, []).append(number)
    return {
        "pseudonyms": PSEUDONYMS,
        "note": PARTICIPATION_NOTE,
        **{kind: {name: _ranges(ns) for name, ns in sorted(sites.items())} for kind, sites in rounds.items()},
    }


def _privacy(run: Run, served: int, through: int, key: bytes) -> dict[str, Any]:
    """The problem's requirement and each site's latest self-reported spending as of the model."""
    reports = PrivacyReport.objects.filter(run=run)
    if served != 0:
        # A round's model: what the sites had reported by that round (a report of no known round cannot be placed).
        reports = reports.filter(round__lte=through)
    latest = reports.order_by().values("site_name").annotate(last=Max("pk")).values("last")
    spent: dict[str, Any] = {}
    for r in PrivacyReport.objects.filter(pk__in=latest).order_by("pk"):
        spent[pseudonym(key, r.participant_id, r.site_name)] = {
            "epsilon": r.epsilon,
            "delta": r.delta,
            "epsilon_cap": r.epsilon_cap,
            "noise_multiplier": r.noise_multiplier,
            "clipping_norm": r.clipping_norm,
            "releases": r.releases,
            "run_releases": r.run_releases,
            "round": r.round,
            "state": r.state,
        }
    requirement = dict(run.problem.privacy or {})
    return {
        "settings": {
            "requirement": requirement,
            "requirement_text": privacy_sentence(requirement),
            "applied_by": "each site's client, on the data holder's machine",
        },
        "budgets_spent": dict(sorted(spent.items())),
        "self_reported": True,
        "note": PRIVACY_NOTE,
    }


def contract_sha256(contract: Any) -> str | None:
    """The data contract's hash for manifests; None for one JSON cannot carry (a NaN bound slipped in)."""
    try:
        return provenance.canonical_sha256(contract)
    except ValueError:
        return None


def _model_hash(checkpoint: Checkpoint, kind: str, stored: Any) -> tuple[str, str]:
    """(SHA-256 of the stored file, when it was taken): recorded at upload, or now for older files."""
    recorded = getattr(checkpoint, f"{kind}_sha256")
    if recorded:
        return recorded, "when the coordinator uploaded it"
    with stored.open("rb") as f:
        digest, _ = provenance.file_sha256(f)
    Checkpoint.objects.filter(pk=checkpoint.pk).update(**{f"{kind}_sha256": digest})
    return digest, "when its first manifest was made (it was stored before the platform hashed uploads)"


def manifest_build(
    *, run: Run, stored: Any, kind: str, served: int, attempt: int, file_name: str, ca_key_pem: str
) -> dict[str, Any]:
    """The unsigned manifest of `stored` (a Checkpoint's file of `kind`), served as round `served` of `attempt`.

    `ca_key_pem`, the problem's CA key, keys the sites' pseudonyms.
    """
    checkpoint: Checkpoint = stored.instance
    problem = run.problem
    sha256, hashed = _model_hash(checkpoint, kind, stored)
    contract: dict[str, str | None]
    if checkpoint.contract_sha256:
        contract = {"sha256": checkpoint.contract_sha256, "recorded": "when the model was uploaded"}
    elif (digest := contract_sha256(problem.contract)) is not None:
        contract = {
            "sha256": digest,
            "recorded": "when this manifest was made (the model was stored before the platform recorded "
            "contracts; the problem's contract may have been edited since the run)",
        }
    else:
        contract = {"sha256": None, "recorded": "never: the contract holds a number JSON cannot carry (NaN, infinity)"}
    contract["hash_of"] = "the contract's canonical JSON (sorted keys, no spaces, ASCII), as in join bundles"
    through, chosen = _lineage(run, attempt, served)
    key = _pseudonym_key(ca_key_pem)
    config = dict(run.config or {})
    strategy = config.get("strategy")
    policy = queries.run_reply_policy(run=run)
    return {
        "format": provenance.MANIFEST_FORMAT,
        "model": {"file": file_name, "kind": kind, "sha256": sha256, "bytes": stored.size, "hashed": hashed},
        "problem": {"id": problem.pk, "title": problem.title},
        "run": {"id": run.pk, "number": run.number, "attempt": attempt, "round": served, "final": served == 0},
        "app": {"fab_sha256": run.fab_sha256, "app_version": run.app_version},
        "data_contract": contract,
        "rounds": _rounds(run, attempt, through, chosen),
        "sites": _sites(run, through, key),
        "reply_policy": {
            "name": policy["name"] or None,
            "source": "reported by the run's coordinator" if policy["reported"] else "the run's configuration",
        },
        "aggregation": {
            "strategy": strategy if isinstance(strategy, str) else None,
            "chosen_by": "the run configuration" if isinstance(strategy, str) else "the app's own code",
            "secure_aggregation": _secure_aggregation(run, chosen),
            "secure_aggregation_note": SECURE_AGGREGATION_NOTE,
        },
        "run_config": config,
        "privacy": _privacy(run, served, through, key),
        "platform": {"fedota_version": provenance.FEDOTA_VERSION, "site": settings.FEDOTA_PUBLIC_URL},
        "signed_at": timezone.now().isoformat(),
        "what_it_proves": provenance.WHAT_IT_PROVES,
        "what_it_does_not_prove": provenance.WHAT_IT_DOES_NOT_PROVE,
    }


def checkpoint_manifest(
    *, run: Run, round: int, kind: str, attempt: int | None = None
) -> tuple[bytes, str, int, int] | None:
    """The signed manifest file of the model `checkpoint_download` serves for the same arguments.

    (file bytes, file name, round served, attempt served), or None when that model is not stored.
    """
    stored, served, of_attempt = queries.model_file(run=run, round=round, kind=kind, attempt=attempt)
    if stored is None or of_attempt is None:
        return None
    name = queries.model_file_name(run=run, served=served, attempt=of_attempt, kind=kind)
    ca_cert, ca_key = problem_ca(run.problem_id)
    manifest = manifest_build(
        run=run, stored=stored, kind=kind, served=served, attempt=of_attempt, file_name=name, ca_key_pem=ca_key
    )
    document = provenance.sign(manifest, ca_cert_pem=ca_cert, ca_key_pem=ca_key)
    return provenance.dumps(document), f"{name}.manifest.json", served, of_attempt
