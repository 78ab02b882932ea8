"""Hostile app bundles: refused with a message that says what is wrong, and never unpacked outside their folder."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from fedota_common import fab
from fedota_common.fab import App, FabError, extract, load_app, parse_fab
from tests.unit.hostile_fabs import HOSTILE_FABS, PYPROJECT, app, entry, lying_sizes, zip_of


@pytest.mark.parametrize("case", sorted(HOSTILE_FABS))
def test_hostile_fab_is_refused_with_the_reason(case: str) -> None:
    content, message = HOSTILE_FABS[case]
    with pytest.raises(FabError) as caught:
        parse_fab(content, origin="bad.fab")
    assert message in str(caught.value)
    assert str(caught.value).startswith("bad.fab")


def test_bounds_are_what_the_docs_say() -> None:
    assert fab.MAX_FAB_SIZE == 50 << 20
    assert fab.MAX_UNPACKED_SIZE == 200 << 20
    assert fab.MAX_FILES == 2000
    assert (fab.MAX_RATIO, fab.RATIO_MIN_SIZE) == (100, 1 << 20)


def test_a_fab_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with pytest.raises(FabError, match=f"a FAB may be at most {fab.MAX_FAB_SIZE}"):
        parse_fab(bytes(fab.MAX_FAB_SIZE + 1))
    huge = tmp_path / "huge.fab"
    with huge.open("wb") as fh:
        fh.truncate(fab.MAX_FAB_SIZE + 1)  # sparse: nothing to read, only its size
    with pytest.raises(FabError, match=f"{fab.MAX_FAB_SIZE + 1} bytes; a FAB may be at most"):
        load_app(huge)


def test_small_entries_may_compress_well() -> None:
    """Padding and empty-ish files (1000:1 under 1 MiB) are normal; only big ones count as bombs."""
    parsed = parse_fab(app(("mine/padding.txt", bytes(500_000))))
    assert parsed.serverapp == "mine.server:app"


def test_a_bundle_at_the_limits_is_accepted() -> None:
    entries = [(f"mine/f{i}.py", b"x = 1\n") for i in range(fab.MAX_FILES - 2)]
    assert parse_fab(app(*entries)).name == "mine"


# ----------------------------------------------------------------------------- extract


def crafted(content: bytes) -> App:
    """An App that skipped parse_fab (a caller building one by hand, or a future bug)."""
    return App(
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        serverapp="mine.server:app",
        clientapp="mine.client:app",
        default_config={},
        name="mine",
        version="0",
    )


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    "name", ["../evil.py", "../../evil.py", "mine/../../evil.py", "/tmp/evil.py", "..\\evil.py", "C:/evil.py"]
)
def test_extract_never_writes_outside_its_folder(tmp_path: Path, name: str) -> None:
    root = tmp_path / "cache" / "apps"
    root.mkdir(parents=True)
    with pytest.raises(FabError, match="points outside the app folder"):
        extract(crafted(app((name, b"import os\n"))), root)
    assert files_under(tmp_path) == ["cache", "cache/apps"]  # nothing written, nothing left half-done
    assert not Path("/tmp/evil.py").exists()


@pytest.mark.parametrize("name", ["../evil.py", "mine/../../evil.py", "/tmp/evil.py"])
def test_extract_stays_in_its_folder_even_without_the_entry_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The second line of defence: every path is resolved and must lie under the folder being written."""
    monkeypatch.setattr(fab, "_check_members", lambda zf, origin: None)
    root = tmp_path / "cache" / "apps"
    root.mkdir(parents=True)
    with pytest.raises(FabError, match="points outside the app folder"):
        extract(crafted(app((name, b"import os\n"))), root)
    assert files_under(tmp_path) == ["cache", "cache/apps"]
    assert not Path("/tmp/evil.py").exists()


def test_extract_refuses_links_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FabError, match="symbolic link"):
        extract(crafted(app((entry("mine/link", stat.S_IFLNK), b"/etc/passwd"))), tmp_path)
    assert files_under(tmp_path) == []


def test_extract_refuses_a_hash_that_is_not_the_content(tmp_path: Path) -> None:
    forged = App(**{**crafted(app()).__dict__, "sha256": "../../escaped"})
    with pytest.raises(FabError, match="does not match its hash"):
        extract(forged, tmp_path / "apps")
    assert files_under(tmp_path) == []


def test_a_damaged_entry_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    bundle = lying_sizes()
    parsed = parse_fab(bundle)  # the headers are fine; only unpacking finds the damage
    with pytest.raises(FabError, match="cannot be unpacked"):
        extract(parsed, tmp_path)
    assert files_under(tmp_path) == []


def test_extract_of_something_that_is_not_a_zip_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FabError, match="cannot be unpacked"):
        extract(crafted(b"not a zip"), tmp_path)
    assert files_under(tmp_path) == []


def test_extract_writes_a_good_app(tmp_path: Path) -> None:
    bundle = zip_of([("pyproject.toml", PYPROJECT), ("mine/server.py", b"app = None\n")])
    folder = extract(parse_fab(bundle), tmp_path)
    assert (folder / "mine" / "server.py").read_text() == "app = None\n"
    assert files_under(tmp_path) == [
        folder.name,
        f"{folder.name}/.complete",
        f"{folder.name}/mine",
        f"{folder.name}/mine/server.py",
        f"{folder.name}/pyproject.toml",
    ]
