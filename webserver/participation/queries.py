"""Reads: who joined what, and which rounds each site contributed to."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet

from webserver import permissions
from webserver.participation import bundles
from webserver.participation.models import Contribution, Participant, ParticipantStatus
from webserver.problems.models import Problem, ProblemState
from webserver.problems.privacy import privacy_sentence
from webserver.problems.queries import problem_reply_policy

# Train before evaluate; any other kind after, alphabetically.
_KIND_ORDER = {"train": 0, "evaluate": 1}


def round_ranges(rounds: Iterable[int]) -> str:
    """`[1, 2, 3, 5]` → `"1–3, 5"`."""
    ordered = sorted(set(rounds))
    parts: list[str] = []
    start = prev = None
    for value in ordered:
        if start is None:
            start = prev = value
        elif value == prev + 1:  # type: ignore[operator]
            prev = value
        else:
            parts.append(f"{start}–{prev}" if start != prev else f"{start}")
            start = prev = value
    if start is not None:
        parts.append(f"{start}–{prev}" if start != prev else f"{start}")
    return ", ".join(parts)


@dataclass
class RunContribution:
    """The rounds one site took part in during one run, per kind."""

    run_number: int
    rounds_by_kind: dict[str, list[int]] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """`run 2: rounds 1–5 (train), 1–5 (evaluate)`."""
        kinds = sorted(self.rounds_by_kind, key=lambda k: (_KIND_ORDER.get(k, 9), k))
        total = {r for rounds in self.rounds_by_kind.values() for r in rounds}
        label = "round" if len(total) == 1 else "rounds"
        pieces = [f"{round_ranges(self.rounds_by_kind[kind])} ({kind})" for kind in kinds]
        return f"run {self.run_number}: {label} " + ", ".join(pieces)


def contributions_by_run(participant: Participant) -> list[RunContribution]:
    """What a participant's site contributed, newest run first."""
    by_run: dict[int, RunContribution] = {}
    rows = Contribution.objects.filter(participant=participant).values_list("run__number", "kind", "round")
    for run_number, kind, round_number in rows:
        entry = by_run.setdefault(run_number, RunContribution(run_number=run_number))
        entry.rounds_by_kind.setdefault(kind, []).append(round_number)
    return [by_run[number] for number in sorted(by_run, reverse=True)]


def rounds_contributed(participant_ids: Iterable[int]) -> dict[int, int]:
    """Per participant: how many (run, round) pairs its site sent a reply in."""
    seen: dict[int, set[tuple[int, int]]] = defaultdict(set)
    rows = Contribution.objects.filter(participant_id__in=list(participant_ids)).values_list(
        "participant_id", "run_id", "round"
    )
    for participant_id, run_id, round_number in rows:
        seen[participant_id].add((run_id, round_number))
    return {participant_id: len(pairs) for participant_id, pairs in seen.items()}


def participant_of(*, problem: Problem, user: Any) -> Participant | None:
    """The user's own participation in a problem, if they asked to join."""
    if not getattr(user, "is_authenticated", False):
        return None
    return Participant.objects.filter(problem=problem, user=user).first()


def participants_of_problem(*, problem: Problem) -> QuerySet[Participant]:
    """Every request to join a problem, in the order they were made."""
    return Participant.objects.filter(problem=problem).select_related("user", "problem").order_by("created_at", "pk")


def participants_visible_to(*, problem: Problem, user: Any) -> QuerySet[Participant]:
    """The problem's setter and site admins see every request; anyone else only their own."""
    if permissions.can_see_participants(user, problem):
        return participants_of_problem(problem=problem)
    if not getattr(user, "is_authenticated", False):
        return Participant.objects.none()
    return participants_of_problem(problem=problem).filter(user=user)


def participations_of_user(*, user: Any) -> QuerySet[Participant]:
    """Every problem a data holder asked to join, newest first."""
    return Participant.objects.filter(user=user).select_related("problem").order_by("-created_at", "-pk")


def participant_in_visible_problem(*, pk: int, user: Any) -> Participant | None:
    """A participant row whose problem the user can see; None (a 404) otherwise.

    Whether the user may act on it is the service's question, so a setter of
    another problem gets a clear refusal rather than a confusing "not found".
    """
    participant = Participant.objects.select_related("problem", "user").filter(pk=pk).first()
    if participant is None or not permissions.can_view_problem(user, participant.problem):
        return None
    return participant


def bundle_is_stale(participant: Participant) -> bool:
    """A bundle was issued for an earlier app version: the data holder needs a new one."""
    return bool(participant.bundle_issued_at and participant.bundle_app_version < participant.problem.app_version)


def partitioned_sites(problem: Problem) -> QuerySet[Participant]:
    """The approved sites that hold a partition id, in partition order."""
    return Participant.objects.filter(
        problem=problem, status=ParticipantStatus.APPROVED, partition_id__isnull=False
    ).order_by("partition_id")


def problem_num_partitions(problem: Problem) -> int:
    """`num-partitions` for every site: the setter's number, else one per approved site.

    Never below a partition id in use (a site revoked from the middle leaves its id
    unused, as a Flower SuperNode that is down does, rather than shifting the others').
    """
    if problem.num_partitions:
        return int(problem.num_partitions)
    ids = list(partitioned_sites(problem).values_list("partition_id", flat=True))
    return max([len(ids), *(i + 1 for i in ids if i is not None), 1])


def participant_node_config(participant: Participant) -> dict[str, int] | None:
    """What the site's ClientApp finds in `context.node_config`, as a SuperNode's `--node-config` would set it."""
    if participant.status != ParticipantStatus.APPROVED or participant.partition_id is None:
        return None
    return {"partition-id": participant.partition_id, "num-partitions": problem_num_partitions(participant.problem)}


def bundle_partition_outdated(participant: Participant, num_partitions: int | None = None) -> bool:
    """The last bundle carries another partition id or number of partitions than the site has now."""
    if not participant.bundle_issued_at or participant.partition_id is None:
        return False
    if participant.status != ParticipantStatus.APPROVED:
        return False
    if num_partitions is None:
        num_partitions = problem_num_partitions(participant.problem)
    return (participant.bundle_partition_id, participant.bundle_num_partitions) != (
        participant.partition_id,
        num_partitions,
    )


def problem_panel(*, problem: Problem, user: Any) -> dict[str, Any]:
    """What the participation panel of a problem page shows to this viewer."""
    published = problem.state == ProblemState.PUBLISHED
    context: dict[str, Any] = {
        "problem": problem,
        "published": published,
        "anonymous": not getattr(user, "is_authenticated", False),
        "is_holder": permissions.is_holder(user),
        "manages": permissions.can_see_participants(user, problem),
        "approved_count": Participant.objects.filter(problem=problem, status=ParticipantStatus.APPROVED).count(),
    }
    if context["is_holder"]:
        mine = participant_of(problem=problem, user=user)
        context["mine"] = mine
        if mine is not None and mine.status == ParticipantStatus.APPROVED:
            context["bundle_stale"] = bundle_is_stale(mine)
            context["node_config"] = participant_node_config(mine)
            context["reply_policy"] = problem_reply_policy(problem)
            context["partition_outdated"] = bundle_partition_outdated(mine)
            context["bundle_filename"] = bundles.bundle_filename(problem)
            context["docker_run"] = bundles.docker_run_command(problem)
            context["docker_run_budget"] = bundles.docker_run_command_with_budget(problem)
            context["privacy_sentence"] = privacy_sentence(problem.privacy)
            context["client_command"] = bundles.client_command(problem)
            context["selector_addresses"] = bundles.problem_selector_endpoints(problem)
            context["selectors_local_only"] = bundles.selectors_local_only()
    if context["manages"] or context.get("node_config"):
        context["num_partitions"] = problem_num_partitions(problem)
    if context["manages"]:
        rows = list(participants_of_problem(problem=problem))
        counts = rounds_contributed(p.pk for p in rows)
        for row in rows:
            row.rounds_contributed = counts.get(row.pk, 0)  # type: ignore[attr-defined]
            row.partition_outdated = bundle_partition_outdated(row, context["num_partitions"])  # type: ignore[attr-defined]
        context["participants"] = rows
    return context


def admitted_credentials(*, problem_id: int) -> list[dict[str, str]]:
    """Who the problem's selectors admit: approved participants holding a credential.

    Only credential hashes leave the website; a revoked, rejected or pending
    participant, or one who never downloaded a bundle, is simply not listed.
    """
    rows = (
        Participant.objects.filter(problem_id=problem_id, status=ParticipantStatus.APPROVED)
        .exclude(credential_hash="")
        .order_by("pk")
        .values_list("pk", "credential_hash")
    )
    return [{"participant": str(pk), "credential_sha256": digest} for pk, digest in rows]
