"""Flower app bundles (FABs): build, check, extract, read their config.

A FAB is the zip `flwr build` makes. Coordinator and client both accept either
an app folder (built into a FAB in memory, exactly as `flwr build` would) or a
`.fab` file, and refuse anything that is not a well-formed app before running
a line of it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from flwr.common.config import flatten_dict

MAX_FAB_SIZE = 50 << 20
MAX_UNPACKED_SIZE = 200 << 20
MAX_FILES = 2000
MAX_RATIO = 100


class FabError(ValueError):
    """The app bundle is unusable; the message says why and what is expected."""


@dataclass(frozen=True)
class App:
    """A checked Flower app bundle."""

    content: bytes
    sha256: str
    serverapp: str
    clientapp: str
    default_config: dict[str, bool | int | float | str]
    name: str
    version: str

    def fused_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The app's `[tool.flwr.app.config]` with run-config overrides applied."""
        unknown = sorted(set(overrides) - set(self.default_config))
        if unknown:
            known = ", ".join(sorted(self.default_config)) or "(none)"
            raise FabError(
                f"run config key(s) {', '.join(unknown)} are not in the app's "
                f"[tool.flwr.app.config]; the app accepts: {known}"
            )
        fused = dict(self.default_config)
        fused.update(overrides)
        return fused


def load_app(source: str | Path) -> App:
    """Load an app from a folder (built like `flwr build`) or a `.fab` file."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "pyproject.toml").is_file():
            raise FabError(f"{path} is not a Flower app: it has no pyproject.toml")
        from flwr.cli.build import build_fab_from_disk

        try:
            content = build_fab_from_disk(path)
        except Exception as exc:  # flwr raises several types for bad projects
            raise FabError(f"could not build a FAB from {path}: {exc}") from exc
    elif path.is_file():
        size = path.stat().st_size
        if size > MAX_FAB_SIZE:
            raise FabError(f"{path} is {size} bytes; a FAB may be at most {MAX_FAB_SIZE} bytes")
        content = path.read_bytes()
    else:
        raise FabError(f"app {path} not found: expected an app folder or a .fab file")
    return parse_fab(content, origin=str(path))


def parse_fab(content: bytes, *, origin: str = "FAB") -> App:
    """Check a FAB's zip structure and its pyproject.toml."""
    if len(content) > MAX_FAB_SIZE:
        raise FabError(f"{origin} is {len(content)} bytes; a FAB may be at most {MAX_FAB_SIZE}")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            _check_members(zf, origin)
            try:
                pyproject = zf.read("pyproject.toml")
            except KeyError:
                raise FabError(f"{origin} has no pyproject.toml at its root") from None
    except zipfile.BadZipFile as exc:
        raise FabError(f"{origin} is not a valid zip file ({exc}); build it with `flwr build`") from exc
    try:
        config = tomllib.loads(pyproject.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FabError(f"{origin}: pyproject.toml is not valid TOML: {exc}") from exc
    app_cfg = config.get("tool", {}).get("flwr", {}).get("app", {})
    components = app_cfg.get("components")
    if not isinstance(components, dict):
        raise FabError(
            f"{origin}: pyproject.toml has no [tool.flwr.app.components] table; expected "
            'serverapp = "package.module:app" and clientapp = "package.module:app"'
        )
    missing = [k for k in ("serverapp", "clientapp") if not isinstance(components.get(k), str)]
    if missing:
        raise FabError(
            f"{origin}: [tool.flwr.app.components] lacks {' and '.join(missing)} "
            '(expected e.g. serverapp = "mypkg.server_app:app")'
        )
    project = config.get("project", {})
    defaults = flatten_dict(app_cfg.get("config", {}))
    return App(
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        serverapp=components["serverapp"],
        clientapp=components["clientapp"],
        default_config=defaults,
        name=str(project.get("name", "app")),
        version=str(project.get("version", "0")),
    )


def _check_members(zf: zipfile.ZipFile, origin: str) -> None:
    infos = zf.infolist()
    if len(infos) > MAX_FILES:
        raise FabError(f"{origin} has {len(infos)} files; at most {MAX_FILES} are allowed")
    total = 0
    for info in infos:
        name = info.filename
        pure = PurePosixPath(name)
        if name.startswith("/") or "\\" in name or ".." in pure.parts:
            raise FabError(f"{origin}: entry {name!r} points outside the app folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise FabError(f"{origin}: entry {name!r} is a symbolic link; links are not allowed")
        total += info.file_size
        if total > MAX_UNPACKED_SIZE:
            raise FabError(f"{origin} unpacks to more than {MAX_UNPACKED_SIZE} bytes")
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
            raise FabError(f"{origin}: entry {name!r} has a suspicious compression ratio")


def extract(app: App, root: Path) -> Path:
    """Extract the app under `root/<sha256>` (once) and return that folder."""
    target = root / app.sha256
    if (target / ".complete").exists():
        return target
    tmp = root / f".{app.sha256}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(app.content)) as zf:
        for info in zf.infolist():
            dest = tmp / info.filename
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(info))
    (tmp / ".complete").write_text(app.sha256)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
