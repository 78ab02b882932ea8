"""Signed model manifests: a tampered model or manifest, a swapped signature or another CA fails
verification, each with its own exit status and a message that says what is wrong."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedota_common import provenance
from fedota_common.pki import make_ca
from fedota_common.provenance import ExitCode, VerificationError

REPO = Path(__file__).resolve().parents[2]
MODEL = b"PK\x03\x04 a model's bytes " + bytes(range(256)) * 40


@pytest.fixture(scope="module")
def ca() -> tuple[str, str]:
    return make_ca("Fedota problem 7")


def _manifest(model: bytes = MODEL, **extra: Any) -> dict[str, Any]:
    digest, size = provenance.file_sha256(io.BytesIO(model))
    return {
        "format": provenance.MANIFEST_FORMAT,
        "model": {"file": "heart-run1-round0003.npz", "kind": "npz", "sha256": digest, "bytes": size},
        "problem": {"id": 7, "title": "Heart ☤ disease"},
        "run": {"id": 12, "number": 1, "attempt": 1, "round": 3, "final": False},
        "sites": {"train": {"site-0123456789abcdef": [[1, 3]]}},
        "run_config": {"round_timeout": 30.5, "strategy": "FedAvg"},
        "privacy": {"settings": None, "budgets_spent": None},
        "signed_at": "2026-12-07T05:00:00+00:00",
        **extra,
    }


def _signed(ca: tuple[str, str], manifest: dict[str, Any] | None = None) -> bytes:
    return provenance.dumps(provenance.sign(manifest or _manifest(), ca_cert_pem=ca[0], ca_key_pem=ca[1]))


def _verify(document: bytes, model: bytes = MODEL, ca_pem: str | None = None) -> provenance.Verified:
    trusted = None if ca_pem is None else provenance.trusted_ca(ca_pem.encode())
    return provenance.verify_document(document, io.BytesIO(model), ca=trusted)


def _fails(document: bytes, model: bytes = MODEL, ca_pem: str | None = None) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        _verify(document, model, ca_pem)
    return caught.value


def test_canonical_form_is_sorted_compact_ascii_and_refuses_nan() -> None:
    assert provenance.canonical({"b": 1, "a": [1.5, "é"]}) == b'{"a":[1.5,"\\u00e9"],"b":1}'
    with pytest.raises(ValueError):
        provenance.canonical({"x": float("nan")})
    # The file's layout is for people: parsing it back gives the same canonical bytes.
    doc = {"z": {"y": 0.1, "x": 10**30}, "a": "☤"}
    assert provenance.canonical(provenance.loads(provenance.dumps(doc))) == provenance.canonical(doc)


def test_a_signed_manifest_and_its_model_verify_against_the_problems_ca(ca: tuple[str, str]) -> None:
    verified = _verify(_signed(ca), ca_pem=ca[0])
    assert verified.ca_pinned and verified.manifest["run"]["round"] == 3
    text = provenance.summary(verified)
    assert "OK" in text and "round 3 of run 1" in text and "Heart" in text
    assert "What this proves" in text and "does not prove" in text and "operator" in text
    # Without --ca it still checks, but says that trust rests on the fingerprint.
    assert "WARNING" in provenance.summary(_verify(_signed(ca)))


def test_a_tampered_model_fails(ca: tuple[str, str]) -> None:
    changed = bytearray(MODEL)
    changed[100] ^= 1
    error = _fails(_signed(ca), bytes(changed), ca[0])
    assert error.code == ExitCode.MODEL_MISMATCH and "not the one this manifest records" in error.message
    # A truncated or extended file too, even if a hash were somehow equal.
    assert _fails(_signed(ca), MODEL + b"\0").code == ExitCode.MODEL_MISMATCH


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["run"].update(round=4),
        lambda m: m["sites"]["train"].update({"site-fedcba9876543210": [[2, 2]]}),
        lambda m: m["privacy"].update(settings={"epsilon": 1.0}),
        lambda m: m["run_config"].update(round_timeout=30.50001),
        lambda m: m["problem"].update(title="Heart disease"),
    ],
)
def test_an_edited_manifest_field_fails(ca: tuple[str, str], edit: Any) -> None:
    document = json.loads(_signed(ca))
    edit(document["manifest"])
    error = _fails(json.dumps(document).encode(), ca_pem=ca[0])
    assert error.code == ExitCode.BAD_SIGNATURE and "changed after it was signed" in error.message


def test_a_manifest_edited_to_match_a_swapped_model_fails(ca: tuple[str, str]) -> None:
    other = b"another model entirely"
    document = json.loads(_signed(ca))
    digest, size = provenance.file_sha256(io.BytesIO(other))
    document["manifest"]["model"].update(sha256=digest, bytes=size)
    assert _fails(json.dumps(document).encode(), other, ca[0]).code == ExitCode.BAD_SIGNATURE


def test_a_signature_swapped_from_another_manifest_fails(ca: tuple[str, str]) -> None:
    ours = json.loads(_signed(ca))
    theirs = json.loads(_signed(ca, _manifest(run={"id": 12, "number": 1, "attempt": 1, "round": 4, "final": False})))
    ours["signature"] = theirs["signature"]
    assert _fails(json.dumps(ours).encode(), ca_pem=ca[0]).code == ExitCode.BAD_SIGNATURE
    # A signature that is not even one: malformed.
    ours["signature"]["value"] = "not base64!"
    assert _fails(json.dumps(ours).encode()).code == ExitCode.MALFORMED


def test_another_ca_is_refused(ca: tuple[str, str]) -> None:
    other_cert, other_key = make_ca("Fedota problem 8")
    # Signed under problem 8's CA, checked against problem 7's.
    error = _fails(_signed((other_cert, other_key)), ca_pem=ca[0])
    assert error.code == ExitCode.UNTRUSTED and "another CA" in error.message
    # Problem 7's CA certificate pasted into a manifest signed under problem 8's: the chain breaks.
    document = json.loads(_signed((other_cert, other_key)))
    document["signature"]["ca_certificate"] = ca[0]
    error = _fails(json.dumps(document).encode(), ca_pem=ca[0])
    assert error.code == ExitCode.UNTRUSTED and "not issued by" in error.message


def test_a_manifest_signed_with_the_ca_certificate_itself_as_signer_is_refused(ca: tuple[str, str]) -> None:
    """Only a certificate for signing documents may sign; the CA's own is for certificates."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    document = json.loads(_signed(ca))
    key = serialization.load_pem_private_key(ca[1].encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(provenance.canonical(document["manifest"]), ec.ECDSA(hashes.SHA256()))
    document["signature"].update(value=base64.b64encode(signature).decode(), signer_certificate=ca[0])
    assert _fails(json.dumps(document).encode(), ca_pem=ca[0]).code == ExitCode.UNTRUSTED


def test_a_tls_certificate_of_the_same_ca_cannot_sign_a_manifest(ca: tuple[str, str]) -> None:
    """A selector's or coordinator's certificate is the problem CA's too, but its key lives in a container."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from fedota_common.pki import issue_server_cert

    cert, key_pem = issue_server_cert(ca[0], ca[1], ["selector.example"])
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    document = json.loads(_signed(ca))
    signature = key.sign(provenance.canonical(document["manifest"]), ec.ECDSA(hashes.SHA256()))
    document["signature"].update(value=base64.b64encode(signature).decode(), signer_certificate=cert)
    error = _fails(json.dumps(document).encode(), ca_pem=ca[0])
    assert error.code == ExitCode.UNTRUSTED and "not one for signing documents" in error.message


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"manifest": {}, "signature": {}}',
        b'{"manifest": {"format": "fedota-model-manifest/1"}, "signature": {}}',
        b'{"manifest": {"format": "x"}, "signature": {}, "extra": 1}',
        b'{"manifest": {"a": NaN}, "signature": {}}',
    ],
)
def test_a_malformed_manifest_is_named_as_such(body: bytes) -> None:
    error = _fails(body)
    assert error.code == ExitCode.MALFORMED and error.message.startswith("the manifest is malformed")


def test_a_duplicate_key_cannot_show_one_value_and_sign_another(ca: tuple[str, str]) -> None:
    text = _signed(ca).decode()
    doubled = text.replace('"number": 1,', '"number": 1,\n      "number": 2,', 1)
    assert doubled != text
    assert _fails(doubled.encode()).code == ExitCode.MALFORMED


def test_ca_may_come_from_a_join_bundle(ca: tuple[str, str], tmp_path: Path) -> None:
    bundle = json.dumps({"format": "fedota-join-bundle/1", "ca_certificate": ca[0]}).encode()
    pem = provenance.trusted_ca(ca[0].encode())
    assert provenance.fingerprint(provenance.trusted_ca(bundle)) == provenance.fingerprint(pem)
    with pytest.raises(VerificationError):
        provenance.trusted_ca(b'{"no": "ca"}')


def test_main_exit_statuses(ca: tuple[str, str], tmp_path: Path, capsys: Any) -> None:
    model, manifest, ca_file = tmp_path / "m.npz", tmp_path / "m.npz.manifest.json", tmp_path / "ca.pem"
    model.write_bytes(MODEL)
    manifest.write_bytes(_signed(ca))
    ca_file.write_text(ca[0])
    assert provenance.main([str(model), str(manifest), "--ca", str(ca_file)]) == ExitCode.OK
    assert "OK" in capsys.readouterr().out
    ca_file.write_text(make_ca("someone else")[0])
    assert provenance.main([str(model), str(manifest), "--ca", str(ca_file)]) == ExitCode.UNTRUSTED
    assert "FAILED" in capsys.readouterr().err
    assert provenance.main([str(tmp_path / "missing.npz"), str(manifest)]) == ExitCode.UNREADABLE
    assert "cannot read" in capsys.readouterr().err


def test_the_version_in_manifests_is_the_projects() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert provenance.FEDOTA_VERSION == project["version"]
    assert project["scripts"]["fedota-verify"] == "fedota_common.provenance:main"


def test_fedota_verify_as_a_command(ca: tuple[str, str], tmp_path: Path) -> None:
    """The console script's entry point run as a separate process, as a user would."""
    model, manifest = tmp_path / "model.npz", tmp_path / "model.npz.manifest.json"
    model.write_bytes(MODEL)
    manifest.write_bytes(_signed(ca))
    (tmp_path / "ca.pem").write_text(ca[0])
    command = [sys.executable, "-m", "fedota_common.provenance", str(model), str(manifest), "--ca", "ca.pem"]
    ok = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=_env())
    assert ok.returncode == 0, ok.stderr
    assert "What this proves" in ok.stdout
    model.write_bytes(MODEL[:-1] + b"X")
    bad = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=_env())
    assert bad.returncode == ExitCode.MODEL_MISMATCH and "not the one this manifest records" in bad.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}
