"""Bad inputs get clear errors and never take the coordinator or a selector down."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fedota_common.grpcutil import check_health
from tests.e2e.conftest import ENV, REPO, Services, run_local

pytestmark = pytest.mark.e2e


def _client(services: Services, data: Path, contract: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "client_image",
            "--selector",
            services.selector_address,
            "--data-path",
            str(data),
            "--contract",
            str(contract),
            "--cache-dir",
            str(data.parent / "cache"),
            "--max-join-wait",
            "20",
            "--insecure",
            *extra,
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_hospital(demo: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "site"
    shutil.copytree(demo / "breast_cancer" / "clients" / "hospital_0", dst)
    return dst


def _assert_untouched(services: Services) -> None:
    assert services.alive()
    assert check_health(services.selector_address)
    assert "client joined" not in (services.state / "logs" / "selector.log").read_text()


def test_missing_column_is_named_and_nothing_is_sent(demo: Path, tmp_path: Path, services: Services) -> None:
    site = _copy_hospital(demo, tmp_path)
    rows = list(csv.reader((site / "records.csv").open()))
    drop = rows[0].index("mean_texture")
    with (site / "records.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([r[:drop] + r[drop + 1 :] for r in rows])
    res = _client(services, site, demo / "breast_cancer" / "contract.json")
    assert res.returncode == 3, res.stderr
    assert "mean_texture" in res.stderr and "records.csv" in res.stderr
    assert "nothing was sent" in res.stderr
    _assert_untouched(services)


def test_wrong_type_in_row_17_is_pinpointed(demo: Path, tmp_path: Path, services: Services) -> None:
    site = _copy_hospital(demo, tmp_path)
    rows = list(csv.reader((site / "records.csv").open()))
    col = rows[0].index("mean_radius")
    rows[16][col] = "twelve"  # spreadsheet row 17: the header is row 1
    with (site / "records.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    res = _client(services, site, demo / "breast_cancer" / "contract.json")
    assert res.returncode == 3, res.stderr
    assert "records.csv, row 17, column 'mean_radius'" in res.stderr
    assert "twelve" in res.stderr
    _assert_untouched(services)


def test_empty_folder_is_refused(demo: Path, tmp_path: Path, services: Services) -> None:
    site = tmp_path / "empty"
    site.mkdir()
    res = _client(services, site, demo / "breast_cancer" / "contract.json")
    assert res.returncode == 3, res.stderr
    assert "no CSV files" in res.stderr or "no files" in res.stderr
    _assert_untouched(services)


def test_client_refuses_an_app_other_than_the_pinned_one(demo: Path, tmp_path: Path, services: Services) -> None:
    site = _copy_hospital(demo, tmp_path)
    res = _client(services, site, demo / "breast_cancer" / "contract.json", "--fab-sha256", "0" * 64)
    assert res.returncode == 4, res.stderr
    assert "download a new join bundle" in res.stderr
    assert services.alive() and check_health(services.selector_address)


def test_corrupted_fab_is_refused_with_a_clear_error(demo: Path, tmp_path: Path) -> None:
    fab = tmp_path / "broken.fab"
    fab.write_bytes(b"PK\x03\x04 this is not really a zip")
    res = run_local(
        tmp_path / "run",
        "--app",
        str(fab),
        "--data-dir",
        str(demo / "breast_cancer" / "clients"),
        "--selectors",
        "1",
        "--rounds",
        "1",
    )
    assert res.code != 0
    assert "not a valid zip file" in res.stderr and "not a valid zip file" in res.log("coordinator")
    assert "Traceback" not in res.log("coordinator")


def test_fab_without_components_is_refused(demo: Path, tmp_path: Path) -> None:
    src = REPO / "apps" / "tabular"
    fab = tmp_path / "nocomp.fab"
    text = (src / "pyproject.toml").read_text().replace("[tool.flwr.app.components]", "[tool.flwr.app.parts]")
    with zipfile.ZipFile(fab, "w") as zf:
        zf.writestr("pyproject.toml", text)
        for path in (src / "fedota_tabular").glob("*.py"):
            zf.write(path, f"fedota_tabular/{path.name}")
    res = run_local(
        tmp_path / "run",
        "--app",
        str(fab),
        "--data-dir",
        str(demo / "breast_cancer" / "clients"),
        "--selectors",
        "1",
        "--rounds",
        "1",
    )
    assert res.code != 0
    assert "[tool.flwr.app.components]" in res.stderr
    assert "Traceback" not in res.log("coordinator")


def test_unknown_run_config_key_is_refused(demo: Path, tmp_path: Path) -> None:
    res = run_local(
        tmp_path / "run",
        "--app",
        "apps/tabular",
        "--data-dir",
        str(demo / "breast_cancer" / "clients"),
        "--selectors",
        "1",
        "--run-config",
        json.dumps({"learning-rat": 0.1}),
    )
    assert res.code != 0
    assert "learning-rat" in res.stderr and "the app accepts" in res.stderr
