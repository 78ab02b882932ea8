"""The YunoHost package (deploy/yunohost/) and the plain installer it calls, checked statically.

YunoHost cannot run here: tests/docker/test_debian_install.py runs scripts/install-debian.sh
for real, and this file checks what can be checked without YunoHost: shellcheck on every
script, the manifest against the packaging v2 keys, every file and helper the scripts name.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "deploy" / "yunohost"
INSTALLER = REPO / "scripts" / "install-debian.sh"
SCRIPTS = ("install", "remove", "upgrade", "backup", "restore", "change_url")
ROLES = ("web", "worker", "beat")
# The helpers (version 2.1) the scripts may call, from YunoHost's helper documentation.
HELPERS_2_1 = {
    "ynh_script_progression",
    "ynh_print_info",
    "ynh_print_warn",
    "ynh_die",
    "ynh_setup_source",
    "ynh_user_get_info",
    "ynh_config_add",
    "ynh_config_add_nginx",
    "ynh_config_remove_nginx",
    "ynh_config_change_url_nginx",
    "ynh_config_add_systemd",
    "ynh_config_remove_systemd",
    "ynh_config_add_logrotate",
    "ynh_config_remove_logrotate",
    "ynh_systemctl",
    "ynh_backup",
    "ynh_restore",
    "ynh_write_var_in_file",
    "ynh_app_setting_set",
    "ynh_safe_rm",
}


def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck is not installed: scripts/system-deps.sh installs it (Debian's shellcheck)")
    return found


def _manifest() -> dict[str, Any]:
    return tomllib.loads((PACKAGE / "manifest.toml").read_text())


def test_every_script_passes_shellcheck() -> None:
    scripts = [PACKAGE / "scripts" / "_common.sh", *(PACKAGE / "scripts" / name for name in SCRIPTS), INSTALLER]
    result = subprocess.run(
        [_shellcheck(), "--external-sources", "--source-path", str(PACKAGE / "scripts"), *map(str, scripts)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable_bash() -> None:
    for path in [*(PACKAGE / "scripts" / name for name in SCRIPTS), INSTALLER]:
        assert path.stat().st_mode & 0o111, f"{path} is not executable"
        assert path.read_text().startswith(("#!/bin/bash\n", "#!/usr/bin/env bash\n")), path
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)


def test_manifest_has_the_packaging_v2_keys() -> None:
    manifest = _manifest()
    assert manifest["packaging_format"] == 2
    assert manifest["id"] == "fedota"
    assert re.fullmatch(r"[0-9a-z]*([.+-][0-9a-z]*)*~ynh[0-9]+", manifest["version"]), manifest["version"]
    assert "en" in manifest["description"]
    assert manifest["upstream"]["license"]
    integration = manifest["integration"]
    assert integration["helpers_version"] == "2.1"
    for key in ("yunohost", "architectures", "multi_instance", "ldap", "sso", "disk", "ram"):
        assert key in integration, key
    assert {"build", "runtime"} <= set(integration["ram"])
    install = manifest["install"]
    assert install["domain"]["type"] == "domain"
    assert install["init_main_permission"]["type"] == "group"
    assert install["admin"]["type"] == "user"
    assert install["password"]["type"] == "password"
    resources = manifest["resources"]
    for key in ("sources", "system_user", "install_dir", "data_dir", "permissions", "ports", "apt"):
        assert key in resources, key
    source = resources["sources"]["main"]
    assert source["url"].startswith("https://") and re.fullmatch(r"[0-9a-f]{64}", source["sha256"])
    assert resources["permissions"]["main"]["url"] == "/"
    assert {"python3", "python3-venv"} <= {p.strip() for p in resources["apt"]["packages"].split(",")}


def test_what_the_scripts_name_exists() -> None:
    common = (PACKAGE / "scripts" / "_common.sh").read_text()
    assert "/source/scripts/install-debian.sh" in common
    assert INSTALLER.exists()
    for role in ROLES:
        unit = (PACKAGE / "conf" / f"{role}.service").read_text()
        # The command install-debian.sh writes for the role, the same for every way of running it.
        assert f"ExecStart=__INSTALL_DIR__/bin/fedota-{role}\n" in unit
        assert f"{role})" in INSTALLER.read_text()
    assert "proxy_pass http://127.0.0.1:__PORT__;" in (PACKAGE / "conf" / "nginx.conf").read_text()
    for name in SCRIPTS:
        text = (PACKAGE / "scripts" / name).read_text()
        for template in re.findall(r'--template="([^"$]+)"', text):
            assert (PACKAGE / "conf" / template).exists(), f"{name} names conf/{template}"


def test_scripts_call_only_yunohost_2_1_helpers() -> None:
    for path in [PACKAGE / "scripts" / "_common.sh", *(PACKAGE / "scripts" / name for name in SCRIPTS)]:
        called = set(re.findall(r"\b(ynh_[a-z_0-9]+)", path.read_text()))
        assert called <= HELPERS_2_1, f"{path.name} calls {sorted(called - HELPERS_2_1)}"


def test_template_placeholders_are_set_by_yunohost() -> None:
    known = {"__APP__", "__INSTALL_DIR__", "__DATA_DIR__", "__PORT__"}
    for path in (PACKAGE / "conf").iterdir():
        found = set(re.findall(r"__[A-Z0-9_]+__", path.read_text()))
        assert found <= known, f"{path.name}: {sorted(found - known)}"


def test_installer_refuses_unknown_commands_and_options() -> None:
    for argv, message in (
        (["frobnicate"], "unknown command"),
        (["install", "--colour", "blue"], "unknown option"),
        (["install", "--port"], "--port needs a value"),
    ):
        result = subprocess.run(["bash", str(INSTALLER), *argv], capture_output=True, text=True, timeout=30)
        assert result.returncode != 0 and message in result.stderr, (argv, result.stderr)
    shown = subprocess.run(["bash", str(INSTALLER), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "--wheelhouse DIR" in shown.stdout
