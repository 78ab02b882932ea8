"""Flower app bundles on the website: built-in templates, upload checks, source listing.

Data holders review the code that will run on their machines, so the problem
page lists every file of the FAB with its hash and shows the source
highlighted. Everything here reads the stored FAB bytes; nothing is extracted
to disk.
"""

from __future__ import annotations

import hashlib
import io
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.utils.safestring import SafeString, mark_safe
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

from fedota_common.fab import UNPACK_ERRORS, App, FabError, load_app, parse_fab
from webserver.errors import ApplicationError
from webserver.problems.resumability import Resumability, analyse_fab

APPS_DIR = Path(settings.BASE_DIR) / "apps"
# A file bigger than this is listed but not shown (nobody reviews a 5 MB blob in a browser).
MAX_SHOWN_BYTES = 1 << 20
PYGMENTS_STYLE = "default"


@dataclass(frozen=True)
class BuiltinApp:
    """A Flower app under apps/ that a problem setter can pick without writing code."""

    name: str
    title: str
    description: str
    version: str
    path: Path


@dataclass(frozen=True)
class FabFile:
    """One file inside a FAB."""

    path: str
    size: int
    sha256: str
    is_text: bool


def builtin_apps() -> list[BuiltinApp]:
    """The folders of apps/ whose pyproject.toml declares `[tool.flwr.app.components]`."""
    found = []
    if not APPS_DIR.is_dir():
        return []
    for folder in sorted(APPS_DIR.iterdir()):
        pyproject = folder / "pyproject.toml"
        if not pyproject.is_file():
            continue
        try:
            config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # a broken template is not offered; its own tests catch it
        if not isinstance(config.get("tool", {}).get("flwr", {}).get("app", {}).get("components"), dict):
            continue
        project = config.get("project", {})
        found.append(
            BuiltinApp(
                name=folder.name,
                title=str(project.get("name", folder.name)),
                description=str(project.get("description", "")),
                version=str(project.get("version", "")),
                path=folder,
            )
        )
    return found


def builtin_app(name: str) -> BuiltinApp:
    """The built-in app called `name`, or ApplicationError naming the ones that exist."""
    for app in builtin_apps():
        if app.name == name:
            return app
    names = ", ".join(a.name for a in builtin_apps()) or "(none)"
    raise ApplicationError(f"there is no built-in app {name!r}; choose one of: {names}", field="app_template")


def template_fab(name: str) -> App:
    """Build the built-in app `name` into a FAB (exactly as `flwr build` would)."""
    app = builtin_app(name)
    try:
        return load_app(app.path)
    except FabError as exc:
        raise ApplicationError(f"the built-in app {name!r} cannot be built: {exc}", field="app_template") from exc


def check_fab(content: bytes, *, name: str) -> App:
    """Check an uploaded FAB; ApplicationError (field `fab`) says what is wrong."""
    limit = settings.FEDOTA_MAX_FAB_BYTES
    if len(content) > limit:
        raise ApplicationError(
            f"{name or 'the FAB'} is {len(content)} bytes; a FAB may be at most {limit} bytes", field="fab"
        )
    if not content:
        raise ApplicationError(f"{name or 'the FAB'} is empty; build the app with `flwr build`", field="fab")
    try:
        app = parse_fab(content, origin=name or "the FAB")
    except FabError as exc:
        raise ApplicationError(str(exc), field="fab") from exc
    _check_entries_readable(content, name or "the FAB")
    return app


def _check_entries_readable(content: bytes, origin: str) -> None:
    """Decompress every entry once (bounded by the sizes parse_fab already capped).

    parse_fab reads only pyproject.toml; a damaged or encrypted entry would
    otherwise be found only when a data holder's client unpacks the app.
    """
    with _read(content) as zf:
        for info in zf.infolist():
            try:
                with zf.open(info) as fh:
                    while fh.read(1 << 20):
                        pass
            except UNPACK_ERRORS as exc:
                raise ApplicationError(
                    f"{origin}: entry {info.filename!r} cannot be unpacked ({exc}); build the app again with `flwr build`",
                    field="fab",
                ) from exc


def _read(content: bytes) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(content))


def _looks_like_text(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# FAB hash -> listing: a listing is computed once per app version, not per page view.
_LISTINGS: dict[str, tuple[FabFile, ...]] = {}


def _listing(content: bytes) -> tuple[FabFile, ...]:
    files = []
    with _read(content) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            data = zf.read(info)
            files.append(
                FabFile(
                    path=info.filename,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    is_text=_looks_like_text(data),
                )
            )
    return tuple(sorted(files, key=lambda f: (f.path != "pyproject.toml", f.path)))


def fab_bytes(problem: Any) -> bytes:
    """The stored FAB of `problem`; ApplicationError (field `fab`) if it is missing or unreadable."""
    if not problem.fab:
        raise ApplicationError("the problem has no Flower app; choose a built-in app or upload a FAB", field="fab")
    try:
        with problem.fab.open("rb") as fh:
            return bytes(fh.read())
    except OSError as exc:
        raise ApplicationError(f"the stored app cannot be read ({exc}); upload it again", field="fab") from exc


def fab_files(problem: Any) -> list[FabFile]:
    """Every file of the problem's FAB with its size and SHA-256, pyproject.toml first."""
    if not problem.fab:
        return []
    listing = _LISTINGS.get(problem.fab_sha256)
    if listing is None:
        try:
            listing = _listing(fab_bytes(problem))
        except UNPACK_ERRORS as exc:
            raise ApplicationError(f"the stored app cannot be read ({exc}); upload it again", field="fab") from exc
        if len(_LISTINGS) > 64:
            _LISTINGS.clear()
        _LISTINGS[problem.fab_sha256] = listing
    return list(listing)


def fab_file_text(problem: Any, path: str) -> str:
    """The text of one file of the FAB; ApplicationError if it is absent, binary or too big."""
    clean = str(PurePosixPath(path))
    with _read(fab_bytes(problem)) as zf:
        try:
            info = zf.getinfo(clean)
        except KeyError:
            raise ApplicationError(f"the app has no file {path!r}", field="path") from None
        if info.file_size > MAX_SHOWN_BYTES:
            raise ApplicationError(
                f"{path} is {info.file_size} bytes; only files up to {MAX_SHOWN_BYTES} bytes are shown", field="path"
            )
        data = zf.read(info)
    if not _looks_like_text(data):
        raise ApplicationError(f"{path} is a binary file and cannot be shown as text", field="path")
    return data.decode("utf-8")


def highlight_source(path: str, text: str) -> SafeString:
    """`text` as highlighted HTML (Pygments escapes the source, so this is safe to embed)."""
    try:
        lexer = get_lexer_for_filename(path, stripnl=False)
    except ClassNotFound:
        lexer = TextLexer(stripnl=False)
    formatter = HtmlFormatter(style=PYGMENTS_STYLE, linenos="table", cssclass="highlight")
    return mark_safe(highlight(text, lexer, formatter))  # noqa: S308 - Pygments output escapes the source


def pygments_css() -> str:
    """The stylesheet for `highlight_source` (also written to static/problems/pygments.css)."""
    return str(HtmlFormatter(style=PYGMENTS_STYLE, cssclass="highlight").get_style_defs(".highlight"))


def read_upload(upload: Any) -> tuple[bytes, str]:
    """The bytes and file name of an uploaded FAB, refusing an oversized one before reading it."""
    limit = settings.FEDOTA_MAX_FAB_BYTES
    name = PurePosixPath(str(getattr(upload, "name", "") or "app.fab")).name
    # The name is shown and stored: no control characters (PostgreSQL refuses NUL).
    name = "".join(ch for ch in name if ch.isprintable()) or "app.fab"
    if upload.size is not None and upload.size > limit:
        raise ApplicationError(f"{name} is {upload.size} bytes; a FAB may be at most {limit} bytes", field="fab")
    data = upload.read(limit + 1)
    if len(data) > limit:
        raise ApplicationError(f"{name} is larger than {limit} bytes, the most a FAB may be", field="fab")
    return bytes(data), name


@dataclass(frozen=True)
class AppSummary:
    """What the problem page says about the app, read from its pyproject.toml."""

    name: str
    version: str
    serverapp: str
    clientapp: str
    default_config: dict[str, Any]


_SUMMARIES: dict[str, AppSummary] = {}


def app_summary(problem: Any) -> AppSummary:
    """The problem's app name, version, components and default config (cached per FAB hash)."""
    summary = _SUMMARIES.get(problem.fab_sha256)
    if summary is None:
        app = check_fab(fab_bytes(problem), name=problem.fab_name)
        summary = AppSummary(app.name, app.version, app.serverapp, app.clientapp, dict(app.default_config))
        if len(_SUMMARIES) > 64:
            _SUMMARIES.clear()
        _SUMMARIES[problem.fab_sha256] = summary
    return summary


# FAB hash -> what a coordinator restart does to the app: read once per app version, for
# problems stored before this was read as well as new ones (no column to fill in).
_RESUMABILITY: dict[str, Resumability] = {}


def app_resumability(problem: Any) -> Resumability:
    """Whether a coordinator restart resumes the problem's app, read from its source (cached per FAB hash)."""
    result = _RESUMABILITY.get(problem.fab_sha256)
    if result is None:
        result = analyse_fab(fab_bytes(problem), app_summary(problem).serverapp)
        if len(_RESUMABILITY) > 64:
            _RESUMABILITY.clear()
        _RESUMABILITY[problem.fab_sha256] = result
    return result
