"""Settings from the environment, overridable by command-line flags.

Each service declares its keys once; `load()` reads `FEDOTA_<KEY>` variables and
flags `--<key>`, converts them, and reports every missing or invalid key in one
error. Only a service's `main()` calls this.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar


class SettingsError(ValueError):
    """One or more settings are missing or invalid (all are listed)."""


@dataclass(frozen=True)
class Key:
    name: str  # flag name, e.g. "round-timeout"; env FEDOTA_ROUND_TIMEOUT
    convert: Callable[[str], Any]
    default: Any = None
    help: str = ""
    required: bool = False
    # A secret may also come from a file named by FEDOTA_<KEY>_FILE (a Docker or Swarm secret
    # mounted in the container), so it need not sit in the environment.
    secret: bool = False

    @property
    def env(self) -> str:
        return "FEDOTA_" + self.name.upper().replace("-", "_")

    @property
    def file_env(self) -> str:
        return self.env + "_FILE"

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # NaN too
        raise ValueError("must be >= 0")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def run_config(text: str) -> dict[str, bool | int | float | str]:
    """A JSON object, or space-separated key=value pairs (TOML values), as `flwr run --run-config`."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
    else:
        from flwr.common.config import parse_config_args

        value = parse_config_args([text])
    for k, v in value.items():
        if not isinstance(v, (bool, int, float, str)):
            raise ValueError(f"value of {k!r} must be a bool, number or string")
    return dict(value)


def load(
    prog: str, description: str, keys: Sequence[Key], argv: Sequence[str] | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Parse flags and environment; raise SettingsError listing every problem."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for key in keys:
        where = f"env {key.env}" + (f" or {key.file_env}" if key.secret else "")
        if key.convert is boolean:
            # A switch: `--insecure` alone means true; `--insecure 0` still works.
            parser.add_argument(
                f"--{key.name}", dest=key.attr, default=None, nargs="?", const="1", help=f"{key.help} ({where})"
            )
        else:
            parser.add_argument(f"--{key.name}", dest=key.attr, default=None, help=f"{key.help} ({where})")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key in keys:
        raw = getattr(args, key.attr)
        source = f"--{key.name}"
        if raw is None:
            raw = environ.get(key.env)
            source = key.env
            from_file = key.secret and bool(environ.get(key.file_env))
        else:
            from_file = False  # a flag overrides the environment, files included
        if from_file:
            if raw:
                problems.append(f"{source} and {key.file_env} are both set: give one of them")
                continue
            source = key.file_env
            try:
                # The file's own final newline (echo, most editors) is not part of the secret.
                raw = Path(environ[key.file_env]).read_text().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{key.file_env}: cannot read {environ[key.file_env]}: {exc}")
                continue
        if raw is None or raw == "":
            if key.required:
                problems.append(f"{key.env} (or --{key.name}) is required: {key.help}")
            values[key.attr] = key.default
            continue
        try:
            values[key.attr] = key.convert(raw)
        except (ValueError, TypeError) as exc:
            # A secret's value is never echoed.
            problems.append(f"{source} is invalid: {exc}" if key.secret else f"{source}={raw!r} is invalid: {exc}")
    if problems:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
    return values


class _HasLogLevel(Protocol):
    @property
    def log_level(self) -> str: ...


S = TypeVar("S", bound=_HasLogLevel)


def service_main(
    service: str,
    from_env: Callable[[Mapping[str, str], Sequence[str] | None], S],
    run: Callable[[S], int],
    argv: Sequence[str] | None,
) -> int:
    """The one place a service reads its environment: settings, logging, then run."""
    from fedota_common import astlock, logs, memtune

    astlock.install()
    memtune.install()

    try:
        settings = from_env(os.environ, argv)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    logs.setup(service, settings.log_level)
    return run(settings)
