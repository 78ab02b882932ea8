"""Fixtures for the Django site's tests: one user per role and ready-made problems.

Tests here run against SQLite by default and against PostgreSQL when
DATABASE_URL names one (CI runs them both ways). Media files go to a
per-test folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile

from fedota_common.fab import load_app

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple 42"


@pytest.fixture(autouse=True)
def _isolated_site(settings: Any, tmp_path: Path) -> None:
    """Per-test media, state and cache; mails kept in memory; a fast password hasher."""
    from django.core.cache import cache

    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FEDOTA_STATE_DIR = tmp_path / "problems"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # Hashing every fixture user's password with PBKDF2 costs seconds per test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Log-in rate-limit counts live in the cache, which outlives a test's transaction.
    cache.clear()


@pytest.fixture(scope="session")
def tabular_fab() -> bytes:
    """The built-in tabular app as FAB bytes (built like `flwr build`)."""
    return load_app(REPO / "apps" / "tabular").content


@pytest.fixture(scope="session")
def breast_cancer_contract() -> dict[str, Any]:
    from scripts.make_demo_data import breast_cancer_contract as contract

    features = [f"f{i}" for i in range(30)]
    return contract(features)


def _user(username: str, role: str | None, *, organisation: str = "", staff: bool = False) -> Any:
    from django.contrib.auth import get_user_model

    from webserver.accounts.models import Profile

    user = get_user_model().objects.create_user(
        username=username, email=f"{username}@example.org", password=PASSWORD, is_staff=staff, is_superuser=staff
    )
    if role is not None:
        Profile.objects.create(user=user, role=role, organisation=organisation, email_verified=True)
    return user


@pytest.fixture
def users(db: Any) -> dict[str, Any]:
    """owner and other_setter (problem setters), holder and participant (data holders), admin (site admin)."""
    return {
        "owner": _user("owner", "setter"),
        "other_setter": _user("other_setter", "setter"),
        "holder": _user("holder", "holder", organisation="St Elsewhere"),
        "participant": _user("participant", "holder", organisation="General Hospital"),
        "admin": _user("admin", None, staff=True),
    }


@pytest.fixture
def make_problem(db: Any, tabular_fab: bytes, breast_cancer_contract: dict[str, Any]) -> Callable[..., Any]:
    """Create a problem row directly (no services), published unless `state` says otherwise."""
    from webserver.problems.models import ProblemState

    def make(owner: Any, *, state: str = ProblemState.PUBLISHED, title: str = "Breast cancer", **extra: Any) -> Any:
        return problem_row(owner, tabular_fab, breast_cancer_contract, state=state, title=title, **extra)

    return make


def problem_row(owner: Any, fab: bytes, contract: dict[str, Any], *, state: str, title: str, **extra: Any) -> Any:
    """A problem row on the built-in tabular app, saved with its FAB (no services started)."""
    import hashlib

    from webserver.problems.models import JoinPolicy, Problem

    problem = Problem(
        owner=owner,
        title=title,
        description="Predict **malignant** tumours.",
        contract=contract,
        app_template="tabular",
        fab_sha256=hashlib.sha256(fab).hexdigest(),
        fab_name="tabular.fab",
        run_config={"rounds": 3, "num_selectors": 1},
        join_policy=extra.pop("join_policy", JoinPolicy.APPROVAL),
        state=state,
        **extra,
    )
    problem.fab.save("tabular.fab", ContentFile(fab), save=False)
    problem.save()
    return problem
