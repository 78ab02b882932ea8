"""Flower app bundles are checked before a line of them runs."""

from __future__ import annotations

import io
import multiprocessing
import os
import stat
import time
import zipfile
from pathlib import Path

import pytest

from fedota_common import fab
from fedota_common.fab import FabError, extract, load_app, parse_fab

PYPROJECT = """
[project]
name = "tiny"
version = "1.0.0"
dependencies = ["flwr==1.41.0"]

[tool.flwr.app]
publisher = "fedota"

[tool.flwr.app.components]
serverapp = "tiny.server:app"
clientapp = "tiny.client:app"

[tool.flwr.app.config]
num-server-rounds = 3
lr = 0.1
"""


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _app_dir(tmp_path: Path, pyproject: str = PYPROJECT) -> Path:
    app = tmp_path / "tiny_app"
    (app / "tiny").mkdir(parents=True)
    (app / "pyproject.toml").write_text(pyproject)
    (app / "tiny" / "__init__.py").write_text("")
    (app / "tiny" / "server.py").write_text("app = None\n")
    (app / "tiny" / "client.py").write_text("app = None\n")
    return app


def test_folder_is_built_like_flwr_build_and_config_fused(tmp_path: Path) -> None:
    app = load_app(_app_dir(tmp_path))
    assert app.serverapp == "tiny.server:app" and app.clientapp == "tiny.client:app"
    assert len(app.sha256) == 64
    assert app.fused_config({"lr": 0.5}) == {"num-server-rounds": 3, "lr": 0.5}
    folder = extract(app, tmp_path / "cache")
    assert (folder / "tiny" / "server.py").is_file()
    assert extract(app, tmp_path / "cache") == folder


def _extract_and_read(args: tuple[Path, Path, str]) -> str:
    app_folder, cache, start = args
    app = load_app(app_folder)
    while not Path(start).exists():  # all processes extract at the same moment
        pass
    folder = extract(app, cache)
    return (folder / "tiny" / "server.py").read_text()


def test_processes_sharing_a_cache_extract_one_app_at_once(tmp_path: Path) -> None:
    # Three clients of a demo started together once raced on one fixed temporary
    # folder: one failed with FileExistsError, and the others lost their app while
    # importing it when a later extraction replaced the finished folder.
    app_folder, cache, start = _app_dir(tmp_path), tmp_path / "cache", tmp_path / "go"
    for i in range(400):  # long enough to unpack that the extractions overlap
        (app_folder / "tiny" / f"part_{i}.py").write_text(f"N = {i}\n" * 50)
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        pending = pool.map_async(_extract_and_read, [(app_folder, cache, str(start))] * 8)
        time.sleep(1.0)
        start.touch()
        assert pending.get(timeout=60) == ["app = None\n"] * 8
    assert [p.name for p in cache.iterdir()] == [load_app(app_folder).sha256]


def test_a_finished_folder_is_never_replaced_under_a_user(tmp_path: Path) -> None:
    app = load_app(_app_dir(tmp_path))
    folder = extract(app, tmp_path / "cache")
    before = (folder / "tiny" / "server.py").stat().st_ino
    (folder / ".complete").unlink()  # as if another process checked before this one finished
    late = tmp_path / "cache" / f".{app.sha256}.late.tmp"
    (late / "tiny").mkdir(parents=True)
    (late / ".complete").write_text(app.sha256)
    (folder / ".complete").write_text(app.sha256)
    fab._publish(late, folder)
    assert (folder / "tiny" / "server.py").stat().st_ino == before
    assert not late.exists()


def test_a_leftover_without_its_marker_is_replaced(tmp_path: Path) -> None:
    app = load_app(_app_dir(tmp_path))
    stale = tmp_path / "cache" / app.sha256
    (stale / "half").mkdir(parents=True)
    folder = extract(app, tmp_path / "cache")
    assert folder == stale and not (folder / "half").exists()
    assert (folder / "tiny" / "server.py").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [app.sha256]


def test_a_killed_extraction_is_cleared_once_abandoned(tmp_path: Path) -> None:
    app = load_app(_app_dir(tmp_path))
    cache = tmp_path / "cache"
    old, recent = cache / f".{app.sha256}.old.tmp", cache / f".{app.sha256}.recent.tmp"
    old.mkdir(parents=True)
    recent.mkdir()
    long_ago = time.time() - fab.ABANDONED_AFTER - 60
    os.utime(old, (long_ago, long_ago))
    extract(app, cache)
    assert not old.exists() and recent.exists()  # a recent one may still be in progress


def test_unknown_run_config_key_names_the_accepted_keys(tmp_path: Path) -> None:
    app = load_app(_app_dir(tmp_path))
    with pytest.raises(FabError, match="num-rounds.*the app accepts: lr, num-server-rounds"):
        app.fused_config({"num-rounds": 2})


def test_corrupted_fab_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "broken.fab"
    good = _zip({"pyproject.toml": PYPROJECT.encode()})
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(FabError, match="not a valid zip file"):
        load_app(bad)


def test_fab_without_components_is_refused() -> None:
    text = PYPROJECT.replace("[tool.flwr.app.components]", "[tool.other]")
    with pytest.raises(FabError, match=r"no \[tool.flwr.app.components\] table"):
        parse_fab(_zip({"pyproject.toml": text.encode()}))


def test_fab_missing_clientapp_names_it() -> None:
    text = PYPROJECT.replace('clientapp = "tiny.client:app"', "")
    with pytest.raises(FabError, match="lacks clientapp"):
        parse_fab(_zip({"pyproject.toml": text.encode()}))


def test_fab_without_pyproject_is_refused() -> None:
    with pytest.raises(FabError, match="no pyproject.toml"):
        parse_fab(_zip({"tiny/x.py": b""}))


def test_malformed_pyproject_is_refused() -> None:
    with pytest.raises(FabError, match="not valid TOML"):
        parse_fab(_zip({"pyproject.toml": b"[tool.flwr\nbroken"}))


@pytest.mark.parametrize("name", ["../evil.py", "/etc/cron.d/evil", "a/../../evil.py"])
def test_path_traversal_is_refused(name: str) -> None:
    with pytest.raises(FabError, match="outside the app folder"):
        parse_fab(_zip({"pyproject.toml": PYPROJECT.encode(), name: b"x"}))


def test_symlink_is_refused() -> None:
    with pytest.raises(FabError, match="symbolic link"):
        parse_fab(_zip({"pyproject.toml": PYPROJECT.encode()}, symlink="link"))


def test_zip_bomb_is_refused() -> None:
    with pytest.raises(FabError, match="compression ratio|more than"):
        parse_fab(_zip({"pyproject.toml": PYPROJECT.encode(), "zeros.bin": b"\0" * (20 << 20)}))


def test_missing_app_path_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(FabError, match="expected an app folder or a .fab file"):
        load_app(tmp_path / "nope")
