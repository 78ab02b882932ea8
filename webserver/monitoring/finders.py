"""plotly.js for the dashboard's charts, served as a static file straight from the `plotly` package.

The Python package ships the browser bundle (`package_data/plotly.min.js`), so the charts need
no CDN and no copy of a 4.8 MB file in this repository: upgrading `plotly` upgrades the charts.
Only that one file is exposed (as `plotly/plotly.min.js`), not the package's data sets, so
`collectstatic` copies 4.8 MB rather than the whole folder. Listed in STATICFILES_FINDERS, it
serves development (Django's static view, WhiteNoise with finders) and production
(`collectstatic`, then WhiteNoise) alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from django.contrib.staticfiles.finders import BaseFinder
from django.contrib.staticfiles.utils import matches_patterns
from django.core.checks import CheckMessage, Error
from django.core.files.storage import FileSystemStorage

PREFIX = "plotly"
NAME = "plotly.min.js"
STATIC_PATH = f"{PREFIX}/{NAME}"


def _bundle_dir() -> Path | None:
    spec = find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "package_data"
    return folder if (folder / NAME).is_file() else None


class PlotlyFinder(BaseFinder):
    """Finds `plotly/plotly.min.js` in the installed `plotly` package, and nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = _bundle_dir()

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        if self.folder is None:
            return [
                Error(
                    f"The dashboard's charts need {NAME} from the plotly package, which is not installed.",
                    hint="Install the web extra: pip install -e '.[web]'.",
                    id="monitoring.E001",
                )
            ]
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        if self.folder is None or path != STATIC_PATH:
            return []  # as Django's own finders answer: finders.find() treats None as a match
        found = str(self.folder / NAME)
        return [found] if find_all else found

    def list(self, ignore_patterns: Iterable[str] | None) -> Iterator[tuple[str, FileSystemStorage]]:
        if self.folder is None or matches_patterns(NAME, list(ignore_patterns or [])):
            return
        storage = FileSystemStorage(location=self.folder)
        # collectstatic and WhiteNoise put a storage's files under its `prefix`.
        storage.prefix = PREFIX  # type: ignore[attr-defined]
        yield NAME, storage
