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


# Stand-ins for YunoHost's helpers and commands, recording each call: enough to run the
# package's scripts under `set -eu` here (an unset variable, a typo in one, fails them).
# They are not YunoHost: what the helpers do is not simulated.
STUB_HELPERS = """
record() { printf '%s\\n' "$*" >>"$CALLS"; }
for helper in HELPERS; do
    eval "$helper() { record $helper \\"\\$@\\"; }"
done
ynh_user_get_info() { record ynh_user_get_info "$@"; echo "$admin@$domain"; }
yunohost() { record yunohost "$@"; }
systemctl() { record systemctl "$@"; }
chown() { record chown "$@"; }
"""
# What YunoHost sets before a script runs: the app's settings and the install questions' answers.
SETTINGS = {
    "app": "fedota",
    "domain": "fedota.example.org",
    "path": "/",
    "port": "8095",
    "admin": "organiser",
    "password": "a-password",
    "old_domain": "fedota.example.org",
    "new_domain": "fl.example.org",
    "old_path": "/",
    "new_path": "/",
}


def _run_script(name: str, tmp_path: Path) -> list[str]:
    """Run scripts/<name> with the stand-ins; the installer's command lines and the helpers' calls."""
    install_dir, data_dir, work = tmp_path / "install", tmp_path / "data", tmp_path / "work"
    installer = install_dir / "source" / "scripts" / "install-debian.sh"
    installer.parent.mkdir(parents=True, exist_ok=True)
    installer.write_text(
        'printf \'installer %s FEDOTA_ADMIN_PASSWORD=%s\\n\' "$*" "${FEDOTA_ADMIN_PASSWORD:-}" >>"$CALLS"\n'
    )
    # backup and restore run from YunoHost's archive folder and read _common.sh from ../settings.
    (tmp_path / "settings" / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(PACKAGE / "scripts" / "_common.sh", tmp_path / "settings" / "scripts" / "_common.sh")
    work.mkdir(exist_ok=True)
    shutil.copy(PACKAGE / "scripts" / "_common.sh", work / "_common.sh")
    helpers = tmp_path / "helpers"
    helpers.write_text(STUB_HELPERS.replace("HELPERS", " ".join(sorted(HELPERS_2_1))))
    script = (PACKAGE / "scripts" / name).read_text()
    assert "source /usr/share/yunohost/helpers\n" in script
    script = script.replace("source /usr/share/yunohost/helpers\n", f"source {helpers}\n")
    calls = tmp_path / f"{name}.calls"
    env = {
        "PATH": "/usr/bin:/bin",
        "CALLS": str(calls),
        "install_dir": str(install_dir),
        "data_dir": str(data_dir),
        **SETTINGS,
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, f"{name}: {result.stderr}"
    return calls.read_text().splitlines()


def test_scripts_run_with_every_variable_set(tmp_path: Path) -> None:
    for name in SCRIPTS:
        calls = _run_script(name, tmp_path / name)
        installer = [line for line in calls if line.startswith("installer ")]
        for line in installer:
            # The package's own units run the services; the installer only prepares them.
            assert "--services none" in line and f"--data-dir {tmp_path / name / 'data'}" in line, line
            assert "--public-url https://fedota.example.org --selector-host fedota.example.org" in line, line
        if name == "install":
            assert installer and installer[0].startswith("installer install "), calls
            assert "--admin organiser --admin-email organiser@fedota.example.org" in installer[0]
            assert installer[0].endswith("FEDOTA_ADMIN_PASSWORD=a-password")
            for role in ROLES:
                assert f"ynh_config_add_systemd --service=fedota-{role} --template={role}.service" in calls
        if name == "upgrade":
            assert [line.split()[1] for line in installer] == ["upgrade"], calls
        if name == "remove":
            assert [line.split()[1] for line in installer] == ["remove"], calls
            assert "ynh_config_remove_systemd fedota-worker" in calls
        if name == "restore":
            assert [line.split()[1] for line in installer] == ["install"], calls
        if name == "change_url":
            assert "ynh_config_change_url_nginx" in calls
            assert any("--key=FEDOTA_PUBLIC_URL --value=https://fl.example.org" in line for line in calls), calls
