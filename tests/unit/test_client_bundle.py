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


def _config(tmp_path: Path, argv: list[str], **fields: object) -> dict[str, object]:
    from client_image.main import _node_config

    bundle = json.loads(_bundle(tmp_path, **fields).read_text())
    return _node_config(Settings.from_env({}, argv), bundle)


def test_the_bundle_gives_partition_id_and_num_partitions(tmp_path: Path) -> None:
    node_config = {"partition-id": 2, "num-partitions": 3}
    assert _config(tmp_path, [], node_config=node_config) == node_config


def test_a_bundle_without_them_keeps_the_old_defaults(tmp_path: Path) -> None:
    assert _config(tmp_path, []) == {"partition-id": 0, "num-partitions": 1}


def test_the_data_holders_flags_override_the_bundle(tmp_path: Path) -> None:
    given = {"node_config": {"partition-id": 2, "num-partitions": 3}}
    assert _config(tmp_path, ["--partition-id", "0"], **given) == {"partition-id": 0, "num-partitions": 3}
    assert _config(tmp_path, ["--node-config", 'partition-id=1 num-partitions=4 site="north"'], **given) == {
        "partition-id": 1,
        "num-partitions": 4,
        "site": "north",
    }
    env = Settings.from_env({"FEDOTA_NODE_CONFIG": "partition-id=5 num-partitions=6"}, [])
    assert env.node_config == "partition-id=5 num-partitions=6"


@pytest.mark.parametrize(
    "bad",
    [{"partition-id": 3, "num-partitions": 3}, {"partition-id": -1, "num-partitions": 3}, {"partition-id": 0}, [0, 1]],
)
def test_a_bundle_with_nonsense_partitions_is_refused(tmp_path: Path, bad: object) -> None:
    from client_image.runner import ClientError

    with pytest.raises(ClientError, match="download your current join bundle"):
        _config(tmp_path, [], node_config=bad)
