"""Signed provenance manifests of downloadable models, and `fedota-verify`, which checks one.

The website builds a manifest for a stored model (webserver/monitoring/provenance.py):
what it is (problem, run, attempt, round, the SHA-256 of the exact bytes served), what
made it (the app's FAB hash, the data contract's hash, the sites per round under
pseudonyms, the reply policy, the aggregation, privacy settings, the Fedota version),
and signs it with a key the problem's CA certifies. This module is the one
implementation of the canonical form, the signing and the checks, and needs no Django,
so a data holder or a reader of a paper can check a model with two files:

    fedota-verify model.npz model.npz.manifest.json [--ca ca.pem | --ca bundle.json]

The signed document is `{"manifest": {...}, "signature": {...}}`. The signature is over
`canonical(manifest)`: JSON with sorted keys, no insignificant whitespace, ASCII only
(other characters as \\u escapes), no NaN or infinities, duplicate keys refused when read.
Each manifest gets a fresh P-256 signing key whose certificate the problem's CA issues
for document signing only: the CA's own certificate is marked for signing certificates,
not documents, and the signing certificate ties each signature to that CA all the same.
Both certificates travel in the document, so checking needs nothing else; `--ca` pins the
CA the user trusts (from their join bundle, or the problem's setter).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

# The version of Fedota that signs manifests (pyproject.toml's `version`; the web image
# has no installed package metadata to read it from, tests/unit/test_provenance.py keeps
# the two equal).
FEDOTA_VERSION = "0.1.0"
MANIFEST_FORMAT = "fedota-model-manifest/1"
ALGORITHM = "ecdsa-p256-sha256"
SIGNER_DAYS = 3650
CHUNK = 1 << 20
# id-kp-documentSigning (RFC 9336): the signer's certificate must name it, so that no other
# certificate of the problem's CA (a selector's or the coordinator's TLS certificate, whose
# keys live in their containers) can sign a manifest.
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
# A manifest larger than this is not one the website makes (it lists sites as round ranges).
MAX_MANIFEST_BYTES = 64 << 20

WHAT_IT_PROVES = (
    "This model file is, byte for byte, the one the platform recorded for this problem, run, attempt "
    "and round, with the settings listed, and the record was signed by whoever holds the problem's "
    "CA key (the platform that runs the problem)."
)
WHAT_IT_DOES_NOT_PROVE = (
    "It does not prove that the sites trained on the data they claimed, or on data that met the "
    "contract (each site's client checks its own data; the platform cannot see it); that the "
    "self-reported items (sites' metrics and example counts) are true; or that the platform's "
    "operator is honest: the operator holds the CA key and could sign any record."
)


# Exit statuses of `fedota-verify`, one per kind of failure (2 is argparse's for bad usage).
class ExitCode:
    OK = 0
    MODEL_MISMATCH = 1
    UNREADABLE = 2
    MALFORMED = 3
    BAD_SIGNATURE = 4
    UNTRUSTED = 5


class VerificationError(Exception):
    """The model or manifest failed a check; `code` is the exit status that names which kind."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- canonical form and hashes ----------------------------------------------------------------


def canonical(value: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, ASCII, finite numbers only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def canonical_sha256(value: Any) -> str:
    """The SHA-256 of a JSON document's canonical form (how the data contract is hashed)."""
    return hashlib.sha256(canonical(value)).hexdigest()


def file_sha256(stream: IO[bytes]) -> tuple[str, int]:
    """(SHA-256 hex, size in bytes) of everything left in `stream`, read in bounded chunks."""
    digest, size = hashlib.sha256(), 0
    while block := stream.read(CHUNK):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a manifest may hold")


def loads(data: bytes) -> Any:
    """Parse a manifest file strictly: duplicate keys and NaN/Infinity are errors, not guesses."""
    return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)


def dumps(document: dict[str, Any]) -> bytes:
    """The file the website serves: indented for people; verification re-canonicalises."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False).encode() + b"\n"


# ---- signing -----------------------------------------------------------------------------------


def _signer(ca_cert_pem: str, ca_key_pem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh signing key and its certificate, issued by the problem's CA for digital signatures only."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fedota"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Fedota model provenance"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SIGNER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([DOCUMENT_SIGNING]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def sign(manifest: dict[str, Any], *, ca_cert_pem: str, ca_key_pem: str) -> dict[str, Any]:
    """The signed document: `manifest` with a signature by a key the CA certifies, and both certificates."""
    key, cert = _signer(ca_cert_pem, ca_key_pem)
    signature = key.sign(canonical(manifest), ec.ECDSA(hashes.SHA256()))
    return {
        "manifest": manifest,
        "signature": {
            "algorithm": ALGORITHM,
            "value": base64.b64encode(signature).decode(),
            "signer_certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "ca_certificate": ca_cert_pem,
        },
    }


# ---- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """What a successful check established."""

    manifest: dict[str, Any]
    ca_fingerprint: str  # SHA-256 of the CA certificate's DER
    ca_subject: str
    ca_pinned: bool  # the CA was the one the user gave (--ca), not only the one the file carries


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _malformed(why: str) -> VerificationError:
    return VerificationError(ExitCode.MALFORMED, f"the manifest is malformed: {why}")


def _certificate(pem: Any, what: str) -> x509.Certificate:
    if not isinstance(pem, str):
        raise _malformed(f"signature.{what} must be a PEM certificate")
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise _malformed(f"signature.{what} is not a readable certificate ({exc})") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _may_sign_documents(cert: x509.Certificate) -> bool:
    """Issued for signing documents: digital signatures, and the document-signing extended key usage."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        purposes = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return bool(usage.digital_signature) and DOCUMENT_SIGNING in purposes


def trusted_ca(data: bytes) -> x509.Certificate:
    """The CA a user trusts, from a PEM certificate file or a Fedota join bundle (its `ca_certificate`)."""
    text = data.decode("utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        try:
            bundle = json.loads(text)
        except ValueError:
            bundle = None
        pem = bundle.get("ca_certificate") if isinstance(bundle, dict) else None
        if not isinstance(pem, str):
            raise VerificationError(ExitCode.UNREADABLE, "--ca: a JSON file must be a join bundle with ca_certificate")
        text = pem
    try:
        return x509.load_pem_x509_certificate(text.encode())
    except ValueError:
        raise VerificationError(ExitCode.UNREADABLE, "--ca: not a PEM certificate or a join bundle") from None


def verify_document(document_bytes: bytes, model: IO[bytes], *, ca: x509.Certificate | None = None) -> Verified:
    """Check a manifest file and a model against each other; raises VerificationError saying what failed.

    In order: the file is a well-formed signed manifest; its CA is `ca` (when given); the
    signing certificate was issued by that CA for signatures; the signature covers the
    manifest as it is now (an edit anywhere breaks it); the model's bytes have the
    SHA-256 and size the manifest records.
    """
    if len(document_bytes) > MAX_MANIFEST_BYTES:
        raise _malformed(f"it is {len(document_bytes)} bytes, more than any manifest ({MAX_MANIFEST_BYTES})")
    try:
        document = loads(document_bytes)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _malformed(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict) or set(document) != {"manifest", "signature"}:
        raise _malformed("expected a JSON object with exactly `manifest` and `signature`")
    manifest, signature = document["manifest"], document["signature"]
    if not isinstance(manifest, dict) or not isinstance(signature, dict):
        raise _malformed("`manifest` and `signature` must be objects")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise _malformed(f"manifest.format is {manifest.get('format')!r}; this tool reads {MANIFEST_FORMAT!r}")
    recorded = manifest.get("model")
    if (
        not isinstance(recorded, dict)
        or not isinstance(recorded.get("sha256"), str)
        or len(recorded["sha256"]) != 64
        or isinstance(recorded.get("bytes"), bool)
        or not isinstance(recorded.get("bytes"), int)
    ):
        raise _malformed("manifest.model must hold the model's sha256 (64 hex digits) and bytes")
    if signature.get("algorithm") != ALGORITHM:
        raise _malformed(f"signature.algorithm is {signature.get('algorithm')!r}; expected {ALGORITHM!r}")
    try:
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
    except ValueError:
        raise _malformed("signature.value is not base64") from None
    signer = _certificate(signature.get("signer_certificate"), "signer_certificate")
    carried = _certificate(signature.get("ca_certificate"), "ca_certificate")

    if ca is not None and carried.public_bytes(serialization.Encoding.DER) != ca.public_bytes(
        serialization.Encoding.DER
    ):
        raise VerificationError(
            ExitCode.UNTRUSTED,
            "the manifest was signed under another CA than the one given with --ca "
            f"(manifest's CA {fingerprint(carried)[:16]}…, yours {fingerprint(ca)[:16]}…): "
            "it is not a record of the problem you trust",
        )
    if not _is_ca(carried):
        raise VerificationError(ExitCode.UNTRUSTED, "the manifest's ca_certificate is not a CA certificate")
    try:
        signer.verify_directly_issued_by(carried)
    except (ValueError, TypeError, InvalidSignature):
        raise VerificationError(
            ExitCode.UNTRUSTED, "the signing certificate was not issued by the manifest's CA"
        ) from None
    if _is_ca(signer) or not _may_sign_documents(signer):
        raise VerificationError(ExitCode.UNTRUSTED, "the signing certificate is not one for signing documents")
    public = signer.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise VerificationError(ExitCode.UNTRUSTED, "the signing certificate does not hold an EC key")
    try:
        public.verify(value, canonical(manifest), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerificationError(
            ExitCode.BAD_SIGNATURE,
            "the signature does not match the manifest: the manifest was changed after it was signed, "
            "or the signature belongs to another manifest",
        ) from None

    digest, size = file_sha256(model)
    if digest != recorded["sha256"] or size != recorded["bytes"]:
        raise VerificationError(
            ExitCode.MODEL_MISMATCH,
            f"the model is not the one this manifest records: its SHA-256 is {digest} ({size} bytes), "
            f"the manifest's {recorded['sha256']} ({recorded['bytes']} bytes)",
        )
    return Verified(
        manifest=manifest,
        ca_fingerprint=fingerprint(carried),
        ca_subject=carried.subject.rfc4514_string(),
        ca_pinned=ca is not None,
    )


def summary(verified: Verified) -> str:
    """What `fedota-verify` prints on success: what was checked, what it proves and what it does not."""
    m = verified.manifest
    problem, run = m.get("problem") or {}, m.get("run") or {}
    model = m.get("model") or {}
    which = "the final model" if run.get("final") else f"round {run.get('round')}"
    lines = [
        "OK: the signature and the model's hash check out.",
        f"  model:    {model.get('file', '?')} ({model.get('bytes')} bytes, SHA-256 {model.get('sha256')})",
        f"  what:     {which} of run {run.get('number')}, attempt {run.get('attempt')}, "
        f"of problem {problem.get('id')} ({problem.get('title', '')!s})",
        f"  signed:   {m.get('signed_at', '?')} by a key certified by {verified.ca_subject}",
        f"  CA:       SHA-256 fingerprint {verified.ca_fingerprint}",
    ]
    if not verified.ca_pinned:
        lines.append(
            "  WARNING:  no --ca given: anyone can make a CA and sign a manifest. Compare the fingerprint above "
            "with the problem's CA certificate (the `ca_certificate` of a join bundle), or pass --ca."
        )
    lines += ["", "What this proves: " + WHAT_IT_PROVES, "What it does not prove: " + WHAT_IT_DOES_NOT_PROVE]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`fedota-verify MODEL MANIFEST [--ca CA]`: 0 when the model and manifest check out, else a failure's code."""
    parser = argparse.ArgumentParser(
        prog="fedota-verify",
        description="Check a model downloaded from Fedota against its signed provenance manifest.",
        epilog=f"Exit status: {ExitCode.OK} verified; {ExitCode.MODEL_MISMATCH} the model's hash differs; "
        f"{ExitCode.UNREADABLE} a file cannot be read; {ExitCode.MALFORMED} malformed manifest; "
        f"{ExitCode.BAD_SIGNATURE} the signature does not match (manifest edited); "
        f"{ExitCode.UNTRUSTED} the certificates are not the trusted CA's.",
    )
    parser.add_argument("model", type=Path, help="the model file (.npz or .pt) as downloaded")
    parser.add_argument("manifest", type=Path, help="its manifest (.manifest.json)")
    parser.add_argument(
        "--ca", type=Path, help="the problem's CA certificate you trust: a PEM file, or your join bundle (JSON)"
    )
    args = parser.parse_args(argv)
    try:
        try:
            document = args.manifest.read_bytes()
            ca = None if args.ca is None else trusted_ca(args.ca.read_bytes())
            with args.model.open("rb") as model:
                verified = verify_document(document, model, ca=ca)
        except OSError as exc:
            raise VerificationError(ExitCode.UNREADABLE, f"cannot read {exc.filename}: {exc.strerror}") from None
    except VerificationError as exc:
        print(f"fedota-verify: FAILED: {exc.message}", file=sys.stderr)
        return exc.code
    print(summary(verified))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
