"""`manage.py fedota_demo`: the one-command start's demo federation.

Creates (or refreshes) a demo problem setter and three demo hospitals with
fresh passwords, a breast-cancer problem on the built-in tabular app with the
demo data's contract, the hospitals' approved join requests; publishes the
problem, waits until its selectors are up, then writes each hospital's join
bundle. `--teardown` stops every active run's coordinator and selectors
directly (no Celery), for Ctrl-C in scripts/start.sh.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from webserver.accounts.models import Profile, Role
from webserver.problems.models import ACTIVE_RUN_STATUSES, JoinPolicy, Problem, ProblemState, Run, RunStatus

SETTER = "demo-setter"
HOSPITALS = ["hospital-1", "hospital-2", "hospital-3"]
TITLE = "Breast cancer diagnosis (demo)"
DESCRIPTION = """\
Three hospitals train a small neural network that tells **malignant** from **benign**
tumours from 30 measurements of a biopsy (scikit-learn's bundled breast-cancer set,
split unevenly between the hospitals). No record leaves a hospital: only model
updates do.

Data holders: review the app source below, then run the client with your CSV
folder mounted read-only.
"""
# Long enough that a newcomer opening the dashboard sees it train (a few minutes).
RUN_CONFIG = {
    "rounds": 600,
    "clients_per_round": 3,
    "min_clients": 3,
    "round_timeout": 120,
    "strategy": "FedAvg",
    "num_selectors": 2,
    "app_config": {"local-epochs": 20},
}


def _account(username: str, role: str, organisation: str = "") -> tuple[Any, str]:
    password = secrets.token_urlsafe(9)
    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"email": f"{username}@example.org"})
    user.is_active = True
    user.set_password(password)
    user.save()
    Profile.objects.update_or_create(
        user=user, defaults={"role": role, "organisation": organisation, "email_verified": True}
    )
    return user, password


class Command(BaseCommand):
    help = "Create the demo setter, hospitals and problem, publish it and write the hospitals' join bundles."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", type=Path, default=Path("demo-data/breast_cancer"))
        parser.add_argument("--bundles", type=Path, default=Path("var/demo/bundles"))
        parser.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the selectors")
        parser.add_argument("--teardown", action="store_true", help="stop every active run's services and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["teardown"]:
            self._teardown()
            return
        contract_path = options["data"] / "contract.json"
        if not contract_path.exists():
            raise CommandError(f"{contract_path} not found: run `python -m scripts.make_demo_data` first")
        contract = json.loads(contract_path.read_text())

        from webserver.participation.models import Participant
        from webserver.participation.services import participant_approve, participant_request
        from webserver.problems.services import problem_create, problem_publish

        with transaction.atomic():
            setter, setter_password = _account(SETTER, Role.SETTER, "Fedota demo lab")
            holders = [_account(name, Role.HOLDER, name.replace("-", " ").title()) for name in HOSPITALS]
            problem = Problem.objects.filter(owner=setter, title=TITLE).first()
            if problem is None:
                problem = problem_create(
                    owner=setter,
                    title=TITLE,
                    description=DESCRIPTION,
                    contract=contract,
                    app_template="tabular",
                    run_config=RUN_CONFIG,
                    join_policy=JoinPolicy.APPROVAL,
                )
            for user, _ in holders:
                participant = Participant.objects.filter(problem=problem, user=user).first()
                if participant is None and problem.state == ProblemState.DRAFT:
                    continue  # asked once the problem is published, below
                if participant is None:
                    participant = participant_request(
                        problem=problem, user=user, site_name=user.profile.organisation, contact_email=user.email
                    )
                if participant.status == "pending":
                    participant_approve(participant=participant, by=setter)

        self.stdout.write("\nDemo logins (passwords are new on every start):")
        self.stdout.write(f"  problem setter  {SETTER:<12} {setter_password}")
        for user, password in holders:
            self.stdout.write(f"  data holder     {user.username:<12} {password}")
        self.stdout.write("")

        run = Run.objects.filter(problem=problem, status__in=ACTIVE_RUN_STATUSES).first()
        if run is None:
            if problem.state == ProblemState.PUBLISHED:
                from webserver.problems.lifecycle import run_start

                run = run_start(problem=problem, user=setter)
            else:
                run = problem_publish(problem=problem, user=setter)
        self.stdout.write(f"published problem {problem.pk}: run {run.number} queued for the Celery worker")
        run = self._wait_running(run, options["wait"])
        problem.refresh_from_db()

        with transaction.atomic():
            for user, _ in holders:
                participant = Participant.objects.filter(problem=problem, user=user).first()
                if participant is None:
                    participant = participant_request(
                        problem=problem, user=user, site_name=user.profile.organisation, contact_email=user.email
                    )
                if participant.status == "pending":
                    participant_approve(participant=participant, by=setter)
        self._write_bundles(problem, holders, options["bundles"])

    def _wait_running(self, run: Run, timeout: float) -> Run:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            run.refresh_from_db()
            if run.status != last:
                self.stdout.write(f"  run {run.number}: {run.status}")
                last = run.status
            if run.status == RunStatus.RUNNING:
                return run
            if run.status in (RunStatus.FAILED, RunStatus.STOPPED, RunStatus.FINISHED):
                raise CommandError(f"run {run.number} {run.status}: {run.status_detail or 'no detail'}")
            time.sleep(0.5)
        raise CommandError(
            f"run {run.number} is still {run.status} after {timeout:.0f} s: is the Celery worker running? (see its log)"
        )

    def _write_bundles(self, problem: Problem, holders: list[tuple[Any, str]], folder: Path) -> None:
        from webserver.participation.models import Participant
        from webserver.participation.services import participant_issue_bundle

        folder.mkdir(parents=True, exist_ok=True)
        for user, _ in holders:
            participant = Participant.objects.get(problem=problem, user=user)
            bundle = participant_issue_bundle(participant=participant, by=user)
            path = folder / f"{user.username}.json"
            path.write_text(json.dumps(bundle, indent=2) + "\n")
            path.chmod(0o600)  # holds the hospital's credential
            self.stdout.write(f"  join bundle for {user.username}: {path}")

    def _teardown(self) -> None:
        from webserver.problems.lifecycle import run_teardown

        active = Run.objects.filter(status__in=ACTIVE_RUN_STATUSES)
        problem_ids = sorted(set(active.values_list("problem_id", flat=True)))
        # Celery is going away with this script, so stop here rather than through the stop task.
        active.update(status=RunStatus.STOPPING)
        for problem_id in problem_ids:
            run_teardown(problem_id=problem_id)
            self.stdout.write(f"stopped problem {problem_id}")
