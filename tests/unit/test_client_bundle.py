"""What the client takes from its join bundle before it dials anything (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client_image.main import Settings, run


def _bundle(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "join.json"
    path.write_text(json.dumps({"format": "fedota-join-bundle/1", "selectors": ["127.0.0.1:1"], **fields}))
    return path


def test_a_none_contract_says_nothing_was_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle(tmp_path, data_contract={"kind": "none"})
    settings = Settings.from_env(
        {}, ["--join-bundle", str(bundle), "--data-path", str(tmp_path / "absent"), "--check-only"]
    )
    assert run(settings) == 0
    err = capsys.readouterr().err
    assert "loads its own data" in err and "nothing in" in err and "was checked" in err
    assert "passed" not in err
