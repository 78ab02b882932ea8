"""Each problem's certificate authority, made once and kept (see fedota_common/pki.py).

The CA's private key stays in the database; only its certificate leaves (in
join bundles, and to the selectors, which check their coordinator against it).
Every launch issues fresh server certificates it signed: the selectors' for the
host clients dial (`FEDOTA_SELECTOR_HOST`), the coordinator's for the names the
backend's selectors dial it at.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from django.db import transaction

from fedota_common.pki import issue_server_cert, make_ca
from webserver.problems.models import Problem


def problem_ca(problem_id: int) -> tuple[str, str]:
    """The problem's (CA certificate PEM, CA key PEM), made on first use; safe under concurrency."""
    with transaction.atomic():
        problem = Problem.objects.select_for_update().only("pk", "ca_certificate", "ca_private_key").get(pk=problem_id)
        if not problem.ca_certificate:
            problem.ca_certificate, problem.ca_private_key = make_ca(f"Fedota problem {problem_id}")
            problem.save(update_fields=["ca_certificate", "ca_private_key"])
        return problem.ca_certificate, problem.ca_private_key


def selector_certificate(problem: Problem) -> tuple[str, str]:
    """A new server certificate (PEM, key PEM) for the problem's selectors at FEDOTA_SELECTOR_HOST."""
    ca_cert, ca_key = problem_ca(problem.pk)
    return issue_server_cert(ca_cert, ca_key, [settings.FEDOTA_SELECTOR_HOST])


def coordinator_certificate(problem: Problem, hosts: Sequence[str]) -> tuple[str, str]:
    """A new server certificate (PEM, key PEM) for the problem's coordinator at `hosts` (what its selectors dial)."""
    ca_cert, ca_key = problem_ca(problem.pk)
    return issue_server_cert(ca_cert, ca_key, list(hosts))
