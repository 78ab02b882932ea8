"""No secret is committed: every tracked file is scanned for keys, tokens and secret files.

Secrets reach Fedota only from the environment or `<NAME>_FILE` files at run time
(tests/unit/test_settings.py, tests/web/test_settings.py). This test reads what git
tracks (or every file under the repo outside ignored folders when there is no git) and
fails, naming file and line, on a PEM private key, a credential-shaped value (a
participant credential, an API token of Fedota's format), a tracked `.env` or database
file, or a secret-named setting given a value in `.env.example`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "var", "build", "test-artifacts", "node_modules", "__pycache__", "demo-data"}
SECRET_FILES = re.compile(r"(^|/)(\.env|.*\.(pem|key|p12|pfx|sqlite3?|db))$")
PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----")
# A participant credential as join bundles carry it: fdp_<id>_<43 url-safe characters>.
CREDENTIAL = re.compile(r"\bfdp_\d+_[A-Za-z0-9_-]{40,}")
SECRET_NAME = re.compile(r"^([A-Z0-9_]*(SECRET|PASSWORD|TOKEN)[A-Z0-9_]*|[A-Z0-9_]*_KEY)$")
# Tests that write a fake key on purpose (it is a placeholder line, not a key).
ALLOWED_KEY_FILES = {"tests/unit/test_credentials_tls.py", "tests/unit/test_settings_secret_files.py"}


def _tracked() -> list[str]:
    if shutil.which("git") and (REPO / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        return [p for p in out.decode().split("\0") if p]
    files = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if path.is_file() and not (set(rel.parts) & SKIP_DIRS) and not rel.parts[0].endswith(".egg-info"):
            files.append(rel.as_posix())
    return files


def test_no_secret_file_is_tracked() -> None:
    found = [p for p in _tracked() if SECRET_FILES.search(p)]
    assert not found, f"secret-looking files are committed: {found}"


def test_no_private_key_or_credential_is_in_any_file() -> None:
    problems = []
    for rel in _tracked():
        path = REPO / rel
        try:
            text = path.read_text(errors="ignore")
        except (OSError, UnicodeError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if PRIVATE_KEY.search(line) and rel not in ALLOWED_KEY_FILES:
                problems.append(f"{rel}:{number}: a PEM private key")
            if CREDENTIAL.search(line):
                problems.append(f"{rel}:{number}: a participant credential")
    assert not problems, "\n".join(problems)


def test_env_example_gives_no_secret_a_value() -> None:
    filled = []
    for number, line in enumerate((REPO / ".env.example").read_text().splitlines(), 1):
        if line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        if SECRET_NAME.match(name.strip()) and value.strip():
            filled.append(f".env.example:{number}: {name} has a value")
    assert not filled, "\n".join(filled)


def test_the_scanner_sees_what_it_looks_for() -> None:
    """The patterns match real shapes (a scanner that matches nothing would always pass)."""
    pem_header = "-----BEGIN " + "EC PRIVATE KEY-----"
    assert PRIVATE_KEY.search(pem_header)
    assert CREDENTIAL.search("credential: fdp_12_" + "a" * 43)
    assert SECRET_FILES.search("deploy/.env") and SECRET_FILES.search("var/db.sqlite3")
    assert not SECRET_FILES.search(".env.example")
    assert SECRET_NAME.match("POSTGRES_PASSWORD") and SECRET_NAME.match("DJANGO_SECRET_KEY")
    assert not SECRET_NAME.match("FEDOTA_PUBLIC_URL")
