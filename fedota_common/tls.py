"""TLS settings the coordinator and the selector share: certificate keys, checks, PEM loading.

Both serve gRPC over TLS with a certificate the website issues from the
problem's CA (fedota_common/pki.py), and the selector verifies its coordinator
against that CA. Each refuses to start without what it needs unless given
`--insecure` (local development only), and then says so on every start.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedota_common.settings import Key, SettingsError, boolean

CERT = Key("tls-cert", str, "", "server certificate chain: a PEM file, or the PEM text itself", secret=True)
KEY = Key("tls-key", str, "", "the certificate's private key: a PEM file, or the PEM text itself", secret=True)


def insecure_key(what: str) -> Key:
    """The `--insecure` switch; `what` says what it turns off."""
    return Key("insecure", boolean, False, f"{what} (local development only)")


def unless_insecure(values: Mapping[str, Any], keys: Sequence[Key], why: str) -> str | None:
    """The problem to report when one of `keys` is empty and `--insecure` was not given."""
    if values["insecure"] or all(values[key.attr] for key in keys):
        return None
    flags = " and ".join(f"--{key.name}" for key in keys)
    envs = " / ".join(key.env for key in keys)
    return f"{why}: give {flags} ({envs}), or --insecure for local development"


def check(problems: Sequence[str | None]) -> None:
    """Raise one SettingsError listing every problem found."""
    found = [p for p in problems if p]
    if found:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(found))


def pem(value: str, flag: str) -> bytes:
    """PEM given as the text itself or as a file name (SettingsError naming `flag` if unreadable)."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{flag}: cannot read {value}: {exc}") from exc


def server_pair(cert: str, key: str, insecure: bool) -> tuple[bytes, bytes] | None:
    """(certificate PEM, key PEM) for `grpcutil.bind`; None when insecure."""
    if insecure:
        return None
    return pem(cert, f"--{CERT.name}"), pem(key, f"--{KEY.name}")


def warn_insecure(log: logging.Logger, what: str) -> None:
    """Say on stderr and in the log that this service runs without TLS."""
    warning = f"INSECURE: {what} (--insecure); use it for local development only"
    print(f"warning: {warning}", file=sys.stderr, flush=True)
    log.warning(warning)
