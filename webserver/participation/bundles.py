"""What a data holder needs to run the client: the join bundle and the commands to start it.

These are pure builders (no writes); `services.participant_issue_bundle` owns
the credential rotation and calls them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings

from webserver.participation.models import Participant
from webserver.problems.models import Problem, ServiceRole

BUNDLE_FORMAT = "fedota-join-bundle/1"


def bundle_filename(problem: Problem) -> str:
    """The file name the bundle downloads as; the commands on the page refer to it."""
    return f"fedota-join-{problem.pk}.json"


def docker_run_command(problem: Problem) -> str:
    """The one line a data holder runs: data and bundle mounted read-only."""
    return (
        "docker run --rm -v /path/to/your/data:/data:ro "
        f"-v /path/to/{bundle_filename(problem)}:/join.json:ro {settings.FEDOTA_CLIENT_IMAGE}"
    )


# Where the client keeps its privacy ledger on the data holder's machine (mounted at /state).
PRIVACY_STATE = "/path/on/your/machine/fedota-privacy"
# An example budget for the commands the page shows; the data holder picks their own.
EXAMPLE_EPSILON = "8"
EXAMPLE_DELTA = "1e-5"


def docker_run_command_with_budget(problem: Problem) -> str:
    """`docker_run_command` with a privacy budget: a cap on ε and the ledger's folder mounted at /state.

    Run as the folder's owner: the image's own user could not write a folder made on the host
    (the client's own refusal says the same).
    """
    return (
        'docker run --rm --user "$(id -u):$(id -g)" -v /path/to/your/data:/data:ro '
        f"-v /path/to/{bundle_filename(problem)}:/join.json:ro -v {PRIVACY_STATE}:/state "
        f"{settings.FEDOTA_CLIENT_IMAGE} --dp-epsilon {EXAMPLE_EPSILON} --dp-delta {EXAMPLE_DELTA}"
    )


def client_command(problem: Problem) -> str:
    """The same without Docker, with the `fedota-client` package installed."""
    return f"fedota-client --join-bundle {bundle_filename(problem)} --data-path /path/to/your/data"


def _endpoints_from_latest_run(problem: Problem) -> list[str]:
    """The selector addresses the problem's most recent run recorded, in selector order."""
    run = problem.runs.order_by("-number").first()
    if run is None:
        return []
    services = run.services.filter(role=ServiceRole.SELECTOR).exclude(address="").order_by("index")
    return [service.address for service in services]


def problem_selector_endpoints(problem: Problem) -> list[str]:
    """The host:port list clients dial.

    The run lifecycle owns the answer (stable across runs); until its
    `selector_endpoints` exists, the latest run's selector rows stand in.
    """
    try:
        from webserver.problems.lifecycle import selector_endpoints
    except ImportError:
        return _endpoints_from_latest_run(problem)
    return [str(endpoint) for endpoint in selector_endpoints(problem)]


def selectors_local_only() -> bool:
    """Are the selectors announced at an address only the server's own machine reaches?"""
    from webserver.spawner.addresses import selector_host, selector_host_is_local

    return selector_host_is_local(selector_host())


def bundle_build(
    *,
    participant: Participant,
    credential: str,
    selectors: list[str],
    issued_at: datetime,
    ca_certificate: str,
    node_config: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The join bundle document (`fedota-join-bundle/1`), as the client reads it.

    `node_config` (`partition-id`, `num-partitions`) is what the client passes to the
    ClientApp in `context.node_config`, as a Flower SuperNode's `--node-config` does;
    a bundle without it (issued before) still works, with the client's defaults.
    """
    problem = participant.problem
    extra: dict[str, Any] = {"node_config": dict(node_config)} if node_config else {}
    if problem.privacy:
        # What every site must apply at least (problems.privacy); absent: no requirement.
        extra["privacy"] = dict(problem.privacy)
    return {
        "format": BUNDLE_FORMAT,
        "problem_id": problem.pk,
        "problem_title": problem.title,
        "webserver_url": settings.FEDOTA_PUBLIC_URL,
        "selectors": list(selectors),
        # Announced for the server's own machine only (no public address configured): the
        # client says so when it cannot reach them from elsewhere.
        "selectors_local_only": selectors_local_only(),
        "credential": credential,
        # The problem's own CA: the client trusts a selector only with a certificate it signed.
        "ca_certificate": ca_certificate,
        "participant_id": participant.pk,
        "site_name": participant.site_name,
        "fab_sha256": problem.fab_sha256,
        "app_version": problem.app_version,
        "data_contract": problem.contract,
        **extra,
        "issued_at": issued_at.isoformat(),
        # For the person reading the file: how to start the client with it.
        "docker_run": docker_run_command(problem),
    }
