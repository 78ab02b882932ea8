"""Reads for monitoring: the dashboard's data, rounds, logs, metrics and checkpoints."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from django.db.models import Count, Max, Min, QuerySet, Sum
from django.http import Http404
from django.urls import get_script_prefix, reverse
from django.utils.text import slugify

from webserver import permissions
from webserver.errors import NotAllowed
from webserver.monitoring.models import Checkpoint, LogLine, PrivacyReport, PrivacyState, RoundRecord, RunReport
from webserver.participation.models import Contribution, Participant, ParticipantStatus
from webserver.problems.models import Problem, Run, RunStatus, ServiceHealth, ServiceRole
from webserver.problems.privacy import privacy_sentence
from webserver.problems.queries import problem_get_visible

RECENT_LOGS = 50
MAX_COMPARED_RUNS = 10
RECENT_RESTARTS = 20
# Sites listed on the dashboard (most recently active first): with 1,000 sites, every poll
# carried and redrew all of them. The others are counted in `participants_summary` and
# listed whole in the participants CSV.
PARTICIPANTS_SHOWN = 50
# Sites' privacy reports listed on the dashboard, those stopped for budget first; the rest are counted.
PRIVACY_SHOWN = 200


def problem_for_monitoring(*, user: Any, pk: Any) -> Problem:
    """The problem if `user` may watch its runs (owner or site admin).

    Http404 when the user may not even see the problem (a draft), NotAllowed when
    they may see it but its training data is not theirs.
    """
    problem = problem_get_visible(user=user, pk=pk)
    if not permissions.owns_problem(user, problem):
        raise NotAllowed("only the problem's setter and site admins can see its training dashboard")
    return problem


def run_for_monitoring(*, user: Any, run_id: Any) -> Run:
    """The run `run_id` if `user` may watch its problem; Http404 or NotAllowed otherwise."""
    run = Run.objects.select_related("problem").filter(pk=run_id).first()
    if run is None:
        raise Http404("no such run")
    problem_for_monitoring(user=user, pk=run.problem_id)
    return run


def run_selected(*, problem: Problem, number: Any = None) -> Run | None:
    """The run numbered `number`, or the problem's latest run when none is asked for."""
    runs = problem.runs.all()
    if number in (None, ""):
        return runs.order_by("-number").first()
    try:
        return runs.get(number=int(number))
    except (ValueError, TypeError, Run.DoesNotExist):
        raise Http404(f"this problem has no run {number}") from None


# Download links of the run's stored models: (attempt, round) -> {"npz": url | None, "pt": url | None,
# "npz_manifest": url | None, "pt_manifest": url | None}.
Downloads = dict[tuple[int, int], dict[str, str | None]]
NO_LINKS: dict[str, str | None] = {"npz": None, "pt": None, "npz_manifest": None, "pt_manifest": None}


@functools.lru_cache(maxsize=1024)
def _download_prefix(script_prefix: str, run_pk: int) -> str:
    """What every checkpoint URL of a run starts with (`script_prefix` is part of what reverse() gives).

    A long run's dashboard links two files a round: a reverse() each took half of its
    time at 600 rounds (0.14 of 0.28 s).
    """
    url = reverse("checkpoint-download", kwargs={"run_id": run_pk, "round": 0, "kind": "npz"})
    return url.removesuffix("0.npz")


# What a model's URL takes after it to name the model's signed provenance manifest (monitoring/provenance.py).
MANIFEST_SUFFIX = ".manifest.json"


def _download(
    run: Run, round: int, kind: str, present: bool, attempt: int | None = None, suffix: str = ""
) -> str | None:
    if not present:
        return None
    url = f"{_download_prefix(get_script_prefix(), run.pk)}{round}.{kind}{suffix}"
    return url if attempt is None else f"{url}?attempt={attempt}"


def _links(run: Run, attempt: int, round: int, npz: Any, pt: Any, *, named: bool) -> dict[str, str | None]:
    """The links of one checkpoint's stored files (`npz`, `pt`: their names, empty if not stored).

    `npz_manifest` and `pt_manifest` link each file's provenance manifest.
    """
    which = attempt if named else None
    return {
        "npz": _download(run, round, "npz", bool(npz), which),
        "pt": _download(run, round, "pt", bool(pt), which),
        "npz_manifest": _download(run, round, "npz", bool(npz), which, MANIFEST_SUFFIX),
        "pt_manifest": _download(run, round, "pt", bool(pt), which, MANIFEST_SUFFIX),
    }


def model_file_name(*, run: Run, served: int, attempt: int | None, kind: str) -> str:
    """The name a model downloads under: problem, run, attempt (after the first) and round, or `final`."""
    # A run that failed (or was stopped) before its final model: its last completed round's, named as such.
    stem = "final" if served == 0 else f"round{served:04d}"
    if attempt is not None and attempt > 1:
        stem = f"attempt{attempt}-{stem}"
    return f"{slugify(run.problem.title) or 'problem'}-run{run.number}-{stem}.{kind}"


def run_checkpoints(*, run: Run, since: int | None = None, final_only: bool = False) -> Downloads:
    """Download links per (attempt, round) (round 0 = that attempt's final model), only for files stored.

    A round number that one attempt alone has is linked by the number, as before attempts
    (a resumed run's rounds all are); one that several attempts have (an attempt that could
    not resume counts from round 1 again) is linked with `?attempt=K` for each of them, so
    every attempt's file stays reachable and the bare number means the latest attempt's.
    With `since`, only final models and the rounds after `since` (the dashboard's poll);
    with `final_only`, only final models.
    """
    # No ordering: the model's default (by run) joins the run and the problem for nothing.
    checkpoints = Checkpoint.objects.filter(run=run).order_by()
    if final_only:
        checkpoints = checkpoints.filter(round=0)
    elif since is not None:
        # Two index range reads in one statement; `round = 0 OR round > n` reads every row of the run.
        checkpoints = checkpoints.filter(round=0).union(checkpoints.filter(round__gt=since), all=True)
    # Both filters keep every attempt of a round they keep, so the count per round is whole.
    # Four columns, not model instances: their file fields cost more to build than the links.
    stored = list(checkpoints.values_list("attempt", "round", "npz", "pt"))
    attempts = Counter(r for _, r, _, _ in stored)
    return {(a, r): _links(run, a, r, npz, pt, named=attempts[r] > 1) for a, r, npz, pt in stored}


def run_rounds(*, run: Run, since: int | None = None) -> QuerySet[RoundRecord]:
    """The run's rounds in order; with `since`, only those numbered after it."""
    rounds = RoundRecord.objects.filter(run=run)
    if since is not None:
        rounds = rounds.filter(number__gt=since)
    return rounds.order_by("attempt", "number")


def run_attempts(*, run: Run) -> list[dict[str, int]]:
    """Each attempt of the run's coordinator with the first round it reported, in order."""
    first = RoundRecord.objects.filter(run=run).order_by().values("attempt").annotate(first_round=Min("number"))
    return [{"attempt": row["attempt"], "first_round": row["first_round"]} for row in first.order_by("attempt")]


def run_rejected(*, run: Run) -> dict[str, int]:
    """How many client replies the coordinator refused as malformed or hostile, and in how many rounds.

    Reads only the rounds that had any (a partial index), so a long clean run costs nothing.
    """
    totals = (
        RoundRecord.objects.filter(run=run, rejected__gt=0)
        .order_by()
        .aggregate(replies=Sum("rejected"), rounds=Count("pk"))
    )
    return {"replies": totals["replies"] or 0, "rounds": totals["rounds"] or 0}


def run_logs(*, run: Run, limit: int = RECENT_LOGS) -> list[LogLine]:
    """The run's last `limit` log lines, oldest first."""
    rows = list(LogLine.objects.filter(run=run).order_by("-ts", "-id")[:limit])
    rows.reverse()
    return rows


# What `round_json` reads of a round: rows of these columns cost a third of model instances.
ROUND_FIELDS = (
    "number",
    "attempt",
    "phase",
    "clients",
    "train_loss",
    "eval_loss",
    "eval_acc",
    "seconds",
    "finished_at",
    "rejected",
    "rejected_reasons",
    "results",
    "no_results",
    "metrics",
)


def round_rows(*, run: Run, since: int | None = None) -> QuerySet[RoundRecord, dict[str, Any]]:
    """`run_rounds` as rows of `ROUND_FIELDS`, for `round_json`."""
    return run_rounds(run=run, since=since).values(*ROUND_FIELDS)


def round_json(row: dict[str, Any], downloads: Downloads) -> dict[str, Any]:
    """One round for the dashboard and the API, from a row of `round_rows`."""
    links = downloads.get((row["attempt"], row["number"])) or dict(NO_LINKS)
    return {
        "round": row["number"],
        # Which (re)start of the coordinator ran it; see `resumed_rounds` for where each began.
        "attempt": row["attempt"],
        "phase": row["phase"],
        "clients": row["clients"],
        "train_loss": row["train_loss"],
        "eval_loss": row["eval_loss"],
        "eval_acc": row["eval_acc"],
        "seconds": row["seconds"],
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        "rejected": row["rejected"],
        # Reason -> count, most common first; the coordinator sends at most 10 reasons.
        "rejected_reasons": dict(sorted((row["rejected_reasons"] or {}).items(), key=lambda kv: (-kv[1], kv[0]))),
        "results": row["results"],
        "no_results": row["no_results"],
        "metrics": row["metrics"],
        "downloads": links,
    }


def log_json(line: LogLine) -> dict[str, Any]:
    return {"ts": line.ts.isoformat(), "level": line.level, "source": line.source, "message": line.message}


def run_participants(*, run: Run) -> list[dict[str, Any]]:
    """Each approved participant and each site that contributed, with its last contribution.

    Two grouped queries over the run's contributions (one row per site, and per site and
    kind), both served by the (run, site_name, round, kind) unique index, so the work in
    Python grows with the number of sites, not with the number of rounds.
    """
    sites: dict[str, dict[str, Any]] = {}
    for p in Participant.objects.filter(problem_id=run.problem_id, status=ParticipantStatus.APPROVED):
        sites[p.site_name] = {
            "site": p.site_name,
            "participant_id": p.pk,
            "status": p.status,
            "last_round": None,
            "last_kind": "",
            "rounds": 0,
        }
    contributions = Contribution.objects.filter(run=run).order_by()
    per_site = contributions.values("site_name").annotate(
        last_round=Max("round"),
        rounds=Count("round", distinct=True),
        # A site's rows all name the same participant, or none once it was deleted.
        participant_pk=Max("participant_id"),
    )
    unlisted: dict[int, dict[str, Any]] = {}
    for c in per_site:
        row = sites.setdefault(
            c["site_name"],
            {
                "site": c["site_name"],
                "participant_id": c["participant_pk"],
                "status": "",
                "last_round": None,
                "last_kind": "",
                "rounds": 0,
            },
        )
        row["last_round"], row["rounds"] = c["last_round"], c["rounds"]
        if row["status"] == "" and row["participant_id"] is not None:
            unlisted[row["participant_id"]] = row
    if unlisted:
        # Participants no longer approved (revoked, say): few, so looked up by id rather than joined per row.
        for pk, status in Participant.objects.filter(pk__in=unlisted).values_list("pk", "status"):
            unlisted[pk]["status"] = status
    last_kinds: dict[str, list[str]] = {}
    for c in contributions.values("site_name", "kind").annotate(last=Max("round")):
        if c["last"] == sites[c["site_name"]]["last_round"]:
            last_kinds.setdefault(c["site_name"], []).append(c["kind"])
    for site, kinds in last_kinds.items():
        # Reverse order puts train before evaluate, so a site that did both reads "train + evaluate".
        sites[site]["last_kind"] = " + ".join(sorted(kinds, reverse=True))
    # Most recently active first; sites that never contributed last.
    return sorted(sites.values(), key=lambda r: (-(r["last_round"] or 0), r["site"].lower()))


def participants_summary(rows: list[dict[str, Any]], *, shown: int) -> dict[str, Any]:
    """What the dashboard says of all the sites when it lists only the first `shown` of `rows`."""
    latest = max((r["last_round"] or 0 for r in rows), default=0)
    return {
        "total": len(rows),
        "shown": min(shown, len(rows)),
        "latest_round": latest or None,
        "in_latest_round": sum(1 for r in rows if latest and r["last_round"] == latest),
        "never": sum(1 for r in rows if r["last_round"] is None),
    }


def run_reply_policy(*, run: Run) -> dict[str, Any]:
    """The reply policy in force: as the coordinator reported it, else as the run was configured.

    `reported` is False for a run whose coordinator has not said (not started yet, or older
    than the reply policy); the policy shown is then the one the website asked for, if any.
    """
    reported = RunReport.objects.filter(run=run).values_list("reply_policy", flat=True).first()
    if reported:
        return {"name": reported, "reported": True}
    configured = (run.config or {}).get("reply_policy")
    return {"name": configured if isinstance(configured, str) else "", "reported": False}


# ---- privacy (issue 18): what each site says it spent -------------------------------------------


def _latest_privacy(reports: QuerySet[PrivacyReport], by: str) -> QuerySet[PrivacyReport]:
    """The latest of `reports` per value of `by` (reports are append-only: the highest id is the latest)."""
    latest = reports.order_by().values(by).annotate(last=Max("pk")).values("last")
    return PrivacyReport.objects.filter(pk__in=latest)


def privacy_json(report: PrivacyReport) -> dict[str, Any]:
    """One site's latest report, for the dashboard, the API and the data holder's page."""
    return {
        "site": report.site_name,
        "participant_id": report.participant_id,
        # The site adds its noise before the update leaves it: nothing here can be checked by the platform.
        "self_reported": True,
        "state": report.state,
        "state_label": PrivacyState(report.state).label,
        "epsilon": report.epsilon,
        "delta": report.delta,
        "epsilon_cap": report.epsilon_cap,
        "noise_multiplier": report.noise_multiplier,
        "clipping_norm": report.clipping_norm,
        "releases": report.releases,
        "run_releases": report.run_releases,
        "round": report.round,
        "reason": report.reason,
        "reported_at": report.reported_at.isoformat(),
    }


def run_privacy(*, run: Run) -> list[dict[str, Any]]:
    """Each site's latest privacy report in the run: those stopped for budget first, then by site name."""
    rows = _latest_privacy(PrivacyReport.objects.filter(run=run), "site_name")
    ordered = sorted(rows, key=lambda r: (r.state != PrivacyState.EXHAUSTED, r.site_name.lower()))
    return [privacy_json(r) for r in ordered]


def privacy_summary(problem: Problem, rows: list[dict[str, Any]], *, shown: int) -> dict[str, Any]:
    """What the dashboard says around the sites' privacy reports of a run."""
    return {
        "requirement": dict(problem.privacy or {}),
        "requirement_text": privacy_sentence(problem.privacy),
        "total": len(rows),
        "shown": min(shown, len(rows)),
        "exhausted": sum(1 for r in rows if r["state"] == PrivacyState.EXHAUSTED),
    }


def participant_privacy(*, participant: Participant) -> list[dict[str, Any]]:
    """The participant's own site's latest privacy report in each run of its problem, newest run first.

    Only reports the coordinator attributed to this participant: a report filed under a
    site name alone could be another site's of the same name.
    """
    rows = _latest_privacy(PrivacyReport.objects.filter(participant=participant), "run").select_related("run")
    return [{"run": r.run.number, **privacy_json(r)} for r in sorted(rows, key=lambda r: r.run.number, reverse=True)]


def run_mlflow(*, run: Run) -> dict[str, Any] | None:
    """The run's MLflow export as the dashboard shows it; None when its problem is not linked and it never exported.

    `url` is the MLflow run's page ("" until it exists); `error` the last failure to reach MLflow
    ("" once an export succeeded again), with `error_at`.
    """
    from webserver.problems.mlflow_export import mlflow_run_url
    from webserver.problems.models import MlflowExport

    export = MlflowExport.objects.filter(run=run).first()
    if export is None:
        if not run.problem.mlflow_tracking_url:
            return None
        return {
            "tracking_url": run.problem.mlflow_tracking_url,
            "url": "",
            "run_id": "",
            "status": "pending",
            "rounds_logged": 0,
            "error": "",
            "error_at": None,
            "exported_at": None,
        }
    return {
        "tracking_url": export.tracking_url,
        "url": mlflow_run_url(export),
        "run_id": export.mlflow_run_id,
        "status": export.status_logged or ("exporting" if export.mlflow_run_id else "pending"),
        "rounds_logged": len(export.rounds_logged or []),
        "error": export.last_error,
        "error_at": export.last_error_at.isoformat() if export.last_error_at else None,
        "exported_at": export.last_success_at.isoformat() if export.last_success_at else None,
    }


def run_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "number": run.number,
        "status": run.status,
        "status_label": run.get_status_display(),
        "status_detail": run.status_detail,
        "phase": run.phase,
        "current_round": run.current_round,
        "total_rounds": run.total_rounds,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "reply_policy": run_reply_policy(run=run),
        "metrics_csv": reverse("metrics-csv", kwargs={"run_id": run.pk}),
        "participants_csv": reverse("participants-csv", kwargs={"run_id": run.pk}),
        # What the reconciler restarted: how often, and the latest (the events say each one too).
        # Where each later attempt of the coordinator took over: its first round (resumed or from 1).
        "attempts": run_attempts(run=run),
        "restart_count": len(run.restarts or []),
        "restarts": list(run.restarts or [])[-RECENT_RESTARTS:],
        # The run's export to MLflow (docs/mlflow.md); null when its problem is not linked.
        "mlflow": run_mlflow(run=run),
    }


def dashboard(
    *, problem: Problem, run: Run | None, since: int | None = None, with_rounds: bool = True
) -> dict[str, Any]:
    """Everything the dashboard page shows, as JSON-ready data.

    `since` keeps only the rounds numbered after it (a poll that has the earlier ones);
    `with_rounds=False` leaves the rounds out altogether (the page, which fetches them itself).
    Everything else is small and always whole, so the cost does not grow with the run.
    """
    runs = [
        {"number": r.number, "status": r.status, "current_round": r.current_round, "total_rounds": r.total_rounds}
        for r in problem.runs.order_by("-number")
    ]
    doc: dict[str, Any] = {
        "problem": {"id": problem.pk, "title": problem.title, "state": problem.state},
        "runs": runs,
        "run": None,
        "since": since,
        "services": [],
        "clients_connected": 0,
        "rejected": {"replies": 0, "rounds": 0},
        "rounds": [],
        "final_model": {**NO_LINKS, "round": 0},
        "participants": [],
        "participants_summary": participants_summary([], shown=PARTICIPANTS_SHOWN),
        "privacy": [],
        "privacy_summary": privacy_summary(problem, [], shown=PRIVACY_SHOWN),
        "logs": [],
    }
    if run is None:
        return doc
    services: list[dict[str, Any]] = [
        {
            "role": s.role,
            "index": s.index,
            "address": s.address,
            "health": s.health,
            "detail": s.detail,
            "clients_connected": s.clients_connected,
        }
        for s in run.services.exclude(health=ServiceHealth.REMOVED).order_by("role", "index")
    ]
    participants = run_participants(run=run)
    privacy = run_privacy(run=run)
    # A site stopped for budget is marked in the participants list too, never silently absent.
    stopped = {r["site"] for r in privacy if r["state"] == PrivacyState.EXHAUSTED}
    for row in participants:
        row["stopped_for_budget"] = row["site"] in stopped
    rounds: list[dict[str, Any]] = []
    if with_rounds:
        downloads = run_checkpoints(run=run, since=since)
        rounds = [round_json(r, downloads) for r in round_rows(run=run, since=since)]
    doc.update(
        run=run_json(run),
        services=services,
        # The coordinator's count is the pool total; selectors' counts need their ids to match (-s<i>).
        clients_connected=max(
            [sum(s["clients_connected"] for s in services if s["role"] == ServiceRole.SELECTOR)]
            + [s["clients_connected"] for s in services if s["role"] == ServiceRole.COORDINATOR]
        ),
        rejected=run_rejected(run=run),
        rounds=rounds,
        final_model=run_final_model(run=run),
        participants=participants[:PARTICIPANTS_SHOWN],
        participants_summary=participants_summary(participants, shown=PARTICIPANTS_SHOWN),
        privacy=privacy[:PRIVACY_SHOWN],
        privacy_summary=privacy_summary(problem, privacy, shown=PRIVACY_SHOWN),
        logs=[log_json(line) for line in run_logs(run=run)],
    )
    return doc


def runs_metrics(*, problem: Problem, numbers: list[int]) -> list[dict[str, Any]]:
    """Per-round loss and accuracy of several runs of one problem, to overlay them."""
    runs = problem.runs.filter(number__in=numbers[:MAX_COMPARED_RUNS]).order_by("number")
    out = []
    for run in runs:
        out.append(
            {
                "number": run.number,
                "status": run.status,
                "rounds": [
                    {
                        "round": r.number,
                        "attempt": r.attempt,
                        "train_loss": r.train_loss,
                        "eval_loss": r.eval_loss,
                        "eval_acc": r.eval_acc,
                    }
                    for r in run_rounds(run=run)
                ],
            }
        )
    return out


def metrics_table(*, run: Run) -> tuple[list[str], list[list[Any]]]:
    """The CSV export: fixed columns, then every train and evaluate metric key the run reported."""
    records = list(run_rounds(run=run))
    train_keys = sorted({k for r in records for k in (r.metrics or {}).get("train", {})})
    eval_keys = sorted({k for r in records for k in (r.metrics or {}).get("evaluate", {})})
    # `attempt` tells apart the rounds of an attempt that counted from round 1 again.
    header = ["round", "clients", "train_loss", "eval_loss", "eval_acc", "seconds", "rejected", "attempt"]
    header += [f"train.{k}" for k in train_keys] + [f"evaluate.{k}" for k in eval_keys]
    rows = []
    for r in records:
        metrics = r.metrics or {}
        row: list[Any] = [r.number, r.clients, r.train_loss, r.eval_loss, r.eval_acc, r.seconds, r.rejected, r.attempt]
        row += [metrics.get("train", {}).get(k) for k in train_keys]
        row += [metrics.get("evaluate", {}).get(k) for k in eval_keys]
        rows.append(["" if v is None else v for v in row])
    return header, rows


# Runs that ended without their final model: what they completed is still theirs to download.
ENDED_EARLY = (RunStatus.FAILED, RunStatus.STOPPED)


def _last_completed(run: Run, kind: str = "npz", attempt: int | None = None) -> Checkpoint | None:
    """The last round with a stored `kind` file, if the run ended without a final model.

    Of the latest attempt that stored one (or of `attempt`): what the run had reached when
    it ended, even where an earlier attempt that could not be resumed had got further.
    """
    if run.status not in ENDED_EARLY:
        return None
    stored = Checkpoint.objects.filter(run=run, round__gt=0).exclude(**{kind: ""})
    if attempt is not None:
        stored = stored.filter(attempt=attempt)
    return stored.order_by("-attempt", "-round").only("pk", "attempt", "round", "npz", "pt").first()


def run_final_model(*, run: Run) -> dict[str, Any]:
    """The model to download as the run's result: its final model, else (a failed or stopped run) its last round's.

    The final model is the latest attempt's that uploaded one. `round` is 0 for the final
    model, the round's number otherwise; links are None for files not stored, and carry
    `?attempt=K` where another attempt has a file of the same round.
    """
    finals = run_checkpoints(run=run, final_only=True)
    stored = [key for key, links in finals.items() if links["npz"] or links["pt"]]
    if stored:
        return {**finals[max(stored)], "round": 0}
    last = _last_completed(run)
    if last is None:
        return {**NO_LINKS, "round": 0}
    named = Checkpoint.objects.filter(run=run, round=last.round).exclude(attempt=last.attempt).exists()
    return {**_links(run, last.attempt, last.round, last.npz, last.pt, named=named), "round": last.round}


def model_file(*, run: Run, round: int, kind: str, attempt: int | None = None) -> tuple[Any, int, int | None]:
    """The stored file of a round's model, with the round and the attempt it is from.

    Without `attempt`, the latest attempt that has the round. Round 0 of a run that ended
    without a final model gives its last completed round's (of `attempt`, when given).
    (None, round, attempt) when there is none.
    """
    checkpoint = _checkpoint(run, round, attempt)
    field = None if checkpoint is None else (checkpoint.npz if kind == "npz" else checkpoint.pt)
    if checkpoint is not None and field:
        return field, round, checkpoint.attempt
    if round == 0:
        last = _last_completed(run, kind, attempt)
        if last is not None:
            return (last.npz if kind == "npz" else last.pt), last.round, last.attempt
    return None, round, attempt


def _checkpoint(run: Run, round: int, attempt: int | None) -> Checkpoint | None:
    """The round's checkpoint of `attempt`, or of the latest attempt that has the round."""
    checkpoints = Checkpoint.objects.filter(run=run, round=round)
    if attempt is not None:
        return checkpoints.filter(attempt=attempt).first()
    return checkpoints.order_by("-attempt").first()


def problem_panel(*, problem: Problem, user: Any) -> dict[str, Any]:
    """What the problem page's monitoring panel shows this user."""
    run = problem.runs.order_by("-number").first()
    can_watch = permissions.owns_problem(user, problem)
    last = None
    if run is not None and can_watch:
        # The latest attempt's: one that restarted at round 1 has fewer rounds than the one before it.
        evaluated = RoundRecord.objects.filter(run=run, eval_acc__isnull=False)
        last = evaluated.order_by("-attempt", "-number").first()
    return {"run": run, "can_watch": can_watch, "last_round": last}
