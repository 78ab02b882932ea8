"""Flower app bundles are checked before a line of them runs."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

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
