"""Flower app bundles (FABs): build, check, extract, read their config.

A FAB is the zip `flwr build` makes. Coordinator and client both accept either
an app folder (built into a FAB in memory, exactly as `flwr build` would) or a
`.fab` file, and refuse anything that is not a well-formed app before running
a line of it.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import shutil
import stat
import tempfile
import time
import tomllib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from flwr.common.config import flatten_dict

# Bounds on what a FAB may be, checked before anything is unpacked (`flwr build`
# output is a few hundred KB; these leave room for weights shipped with an app):
# - the packed file: 50 MiB;
MAX_FAB_SIZE = 50 << 20
# - the sum of the sizes its entries declare: 200 MiB (reading never goes past a
#   declared size: zipfile stops there and a longer stream fails its CRC check);
MAX_UNPACKED_SIZE = 200 << 20
# - the number of entries: 2000;
MAX_FILES = 2000
# - compression: an entry above 1 MiB may unpack to at most 100 times its packed
#   size (source and weights compress 2-10x; a zip bomb compresses 1000x). Smaller
#   entries are exempt: a 10 KB file of padding is harmless and the total bound
#   above caps many of them.
MAX_RATIO = 100
RATIO_MIN_SIZE = 1 << 20
# Compression methods zipfile unpacks without extra modules: stored, deflate, bzip2, lzma.
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
# A Windows drive ("C:", "c:") as the first component of an entry name.
_DRIVE = re.compile(r"^[A-Za-z]:")
# Errors zipfile and its decompressors raise on damaged or unsupported entries.
UNPACK_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, lzma.LZMAError)


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
    except UNPACK_ERRORS as exc:
        raise FabError(
            f"{origin}: pyproject.toml cannot be unpacked ({exc}); build the app again with `flwr build`"
        ) from exc
    try:
        config = tomllib.loads(pyproject.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FabError(f"{origin}: pyproject.toml is not valid TOML: {exc}") from exc
    except RecursionError:
        raise FabError(f"{origin}: pyproject.toml nests arrays or tables too deeply to be read") from None
    app_cfg = _table(_table(_table(config, "tool"), "flwr"), "app")
    components = app_cfg.get("components")
    if not isinstance(components, dict):
        raise FabError(
            f"{origin}: pyproject.toml has no [tool.flwr.app.components] table; expected "
            'serverapp = "package.module:app" and clientapp = "package.module:app"'
        )
    missing = [k for k in ("serverapp", "clientapp") if not isinstance(components.get(k), str) or not components[k]]
    if missing:
        raise FabError(
            f"{origin}: [tool.flwr.app.components] lacks {' and '.join(missing)} "
            '(expected e.g. serverapp = "mypkg.server_app:app")'
        )
    raw_config = app_cfg.get("config", {})
    if not isinstance(raw_config, dict):
        raise FabError(f"{origin}: [tool.flwr.app.config] must be a table of key = value settings")
    try:
        defaults = flatten_dict(raw_config)
    except ValueError as exc:
        raise FabError(
            f"{origin}: [tool.flwr.app.config] may hold only strings, numbers and booleans (and tables of them): {exc}"
        ) from exc
    except RecursionError:
        raise FabError(f"{origin}: [tool.flwr.app.config] nests tables too deeply to be read") from None
    project = _table(config, "project")
    return App(
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        serverapp=components["serverapp"],
        clientapp=components["clientapp"],
        default_config=defaults,
        name=_text(project.get("name"), "app"),
        version=_text(project.get("version"), "0"),
    )


def _text(value: Any, default: str) -> str:
    """A name or version from pyproject.toml: a string or a number, else `default`."""
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else default


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """`doc[key]` if it is a table, else {} (a `tool = 1` is no [tool] table)."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _check_members(zf: zipfile.ZipFile, origin: str) -> None:
    """Refuse entries that could escape the app folder, are not plain files, or unpack too big."""
    infos = zf.infolist()
    if len(infos) > MAX_FILES:
        raise FabError(f"{origin} has {len(infos)} entries; a FAB may have at most {MAX_FILES}")
    total = 0
    seen: dict[str, bool] = {}  # entry path -> is a folder
    for info in infos:
        name = info.filename
        pure = PurePosixPath(name)
        if (
            str(pure) in ("", ".")
            or name.startswith("/")
            or "\\" in name
            or "\x00" in name
            or _DRIVE.match(name)
            or ".." in pure.parts
        ):
            raise FabError(
                f"{origin}: entry {name!r} points outside the app folder; "
                "expected relative paths with / separators and no '..'"
            )
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise FabError(f"{origin}: entry {name!r} is a symbolic link; links are not allowed, only plain files")
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise FabError(f"{origin}: entry {name!r} is a special file; a FAB holds only plain files and folders")
        if info.flag_bits & 0x1:
            raise FabError(f"{origin}: entry {name!r} is encrypted; a FAB must not be password-protected")
        if info.compress_type not in _METHODS:
            raise FabError(
                f"{origin}: entry {name!r} uses compression method {info.compress_type}, which cannot be "
                "unpacked; build the app with `flwr build` (deflate)"
            )
        path = str(pure)
        if path in seen:
            raise FabError(f"{origin}: entry {path!r} appears twice; each path may appear once")
        seen[path] = info.is_dir()
        total += info.file_size
        if total > MAX_UNPACKED_SIZE:
            raise FabError(f"{origin} unpacks to more than {MAX_UNPACKED_SIZE} bytes; a FAB may unpack to at most that")
        if info.file_size and not info.compress_size:
            raise FabError(f"{origin}: entry {name!r} claims {info.file_size} bytes but holds no data")
        if info.file_size > RATIO_MIN_SIZE and info.file_size > MAX_RATIO * info.compress_size:
            raise FabError(
                f"{origin}: entry {name!r} has a suspicious compression ratio ({info.file_size} bytes packed "
                f"into {info.compress_size}); files over {RATIO_MIN_SIZE} bytes may compress at most "
                f"{MAX_RATIO}:1 (is it a zip bomb?)"
            )
    folders = {str(parent) for path in seen for parent in PurePosixPath(path).parents}
    clash = sorted(path for path, is_dir in seen.items() if not is_dir and path in folders)
    if clash:
        raise FabError(f"{origin}: {clash[0]!r} is both a file and a folder; each path must be one or the other")


def extract(app: App, root: Path) -> Path:
    """Extract the app under `root/<sha256>` (once) and return that folder.

    The bundle is checked again here, whatever made `app`: nothing is ever
    written outside `root/<sha256>`, and a damaged bundle leaves nothing behind.
    """
    digest = hashlib.sha256(app.content).hexdigest()
    if digest != app.sha256:
        raise FabError(f"the app's content does not match its hash {app.sha256!r}; load it again")
    target = root / digest
    if (target / ".complete").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    _drop_abandoned(root, digest)
    # A folder of its own: several processes (clients sharing one cache, a
    # restarted coordinator beside a dying one) may extract the same app at once.
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", suffix=".tmp", dir=root))
    base = tmp.resolve()
    try:
        with zipfile.ZipFile(io.BytesIO(app.content)) as zf:
            _check_members(zf, f"app {app.name}")
            for info in zf.infolist():
                dest = (base / info.filename).resolve()
                if dest != base and base not in dest.parents:
                    raise FabError(f"app {app.name}: entry {info.filename!r} points outside the app folder")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        (tmp / ".complete").write_text(digest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, FabError) or not isinstance(exc, UNPACK_ERRORS):
            raise
        raise FabError(f"app {app.name} cannot be unpacked ({exc}); build it again with `flwr build`") from exc
    _publish(tmp, target)
    return target


ABANDONED_AFTER = 3600.0  # seconds; an extraction never takes this long


def _drop_abandoned(root: Path, digest: str) -> None:
    """Remove folders left by extractions of this app whose process was killed."""
    cutoff = time.time() - ABANDONED_AFTER
    for left in root.glob(f".{digest}.*.tmp"):
        try:
            if left.stat().st_mtime < cutoff:
                shutil.rmtree(left, ignore_errors=True)
        except FileNotFoundError:
            pass


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished extraction into place without ever removing a complete one.

    Another process may be importing from `target`, so a complete folder is
    kept and this one dropped; only a leftover without `.complete` (from a
    crash before this scheme) is moved aside first.
    """
    for _ in range(3):
        try:
            tmp.rename(target)
            return
        except OSError:
            if (target / ".complete").exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stale", dir=target.parent))
            try:
                target.rename(aside / "old")
            except FileNotFoundError:
                pass
            shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    raise FabError(f"cannot move the unpacked app into {target}; another process keeps replacing it")
