"""Writes for monitoring: what a run's coordinator reports.

The coordinator retries until the webserver answers, so every write here is
idempotent: log lines and sites' privacy reports dedupe by `event_id`, rounds by
(run, attempt, round number), contributions by (run, site, round, kind), and a checkpoint re-upload
replaces the file of the same (run, attempt, round, kind), never another
attempt's. An event is validated whole before anything is written, so a
malformed one changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone
from rest_framework import status

from webserver.errors import ApplicationError
from webserver.monitoring.models import Checkpoint, LogLine, PrivacyReport, PrivacyState, RoundRecord, RunReport
from webserver.monitoring.provenance import contract_sha256
from webserver.participation.models import Contribution, Participant
from webserver.problems.mlflow_export import mlflow_export_enqueue
from webserver.problems.models import ACTIVE_RUN_STATUSES, Run, RunStatus, Service, ServiceRole

EVENT_KINDS = ("run_started", "round_finished", "pool", "log", "run_finished", "site_privacy")
# Events after which a run linked to MLflow is exported (problems.mlflow_export); its final model too.
EXPORTED_KINDS = ("round_finished", "run_finished")
CHECKPOINT_KINDS = ("npz", "pt")
COPY_CHUNK = 1 << 20
# The largest value a PositiveIntegerField holds on every database Django supports.
MAX_COUNT = 2_147_483_647
MAX_NODE_ID = (1 << 63) - 1
# 9999-12-31 23:59:59 UTC, the last moment a datetime holds.
LAST_TIMESTAMP = 253_402_300_799.0
_SELECTOR_INDEX = re.compile(r"-s(\d+)$")
REPLY_POLICIES = ("flower", "strict")
# The source of log lines the website itself adds to a run's events (restarts, ...).
PLATFORM_SOURCE = "platform"
# What the coordinator sends (coordinator/rounds.py): its 10 most common reasons, each cut to 300 characters.
MAX_REASONS = 10
MAX_REASON_LENGTH = 300
# What the coordinator passes on of a site's reason for stopping (coordinator/report.py cuts it there).
MAX_PRIVACY_REASON = 2000


class TooLarge(ApplicationError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class BadToken(ApplicationError):
    """No usable credential was presented (401)."""

    status_code = status.HTTP_401_UNAUTHORIZED


class WrongToken(ApplicationError):
    """A credential was presented but is not this run's (403)."""

    status_code = status.HTTP_403_FORBIDDEN


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


# ---- authentication --------------------------------------------------------------------------


def run_authenticate(*, run_id: int, authorization: str) -> Run:
    """The run whose service token is the bearer token in `authorization`.

    Compared as SHA-256 in constant time against that run's stored hash only, so
    one run's coordinator cannot report into another run.
    """
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise BadToken("send the run's service token as 'Authorization: Bearer <token>'")
    run = Run.objects.select_related("problem").filter(pk=run_id).first()
    presented = hashlib.sha256(token.encode()).hexdigest()
    # Compare even for a missing run so timing does not reveal which run ids exist.
    expected = run.service_token_hash if run is not None and run.service_token_hash else "0" * 64
    if not hmac.compare_digest(presented, expected) or run is None or not run.service_token_hash:
        raise WrongToken("this token is not valid for this run")
    return run


# ---- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """Reads typed fields out of one event, naming the field in every error."""

    event: dict[str, Any]
    prefix: str

    def fail(self, name: str, why: str) -> ApplicationError:
        path = f"{self.prefix}{name}"
        return ApplicationError(f"{path}: {why}", field=path)

    def text(self, name: str, *, required: bool = False, max_length: int = 10_000) -> str:
        value = self.event.get(name)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value):
            raise self.fail(name, "must be a non-empty string" if required else "must be a string")
        return value[:max_length]

    def number(self, name: str, *, required: bool = False) -> float | None:
        value = self.event.get(name)
        if value is None and not required:
            return None
        try:
            number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        except OverflowError:  # a JSON integer too large for a float
            number = math.nan
        if not math.isfinite(number):
            raise self.fail(name, "must be a number")
        return number

    def moment(self, name: str, *, required: bool = False) -> datetime | None:
        """A Unix timestamp, as an aware datetime."""
        value = self.number(name, required=required)
        if value is not None and not 0 <= value <= LAST_TIMESTAMP:
            raise self.fail(name, f"must be a Unix time in seconds from 0 to {LAST_TIMESTAMP:g}")
        return None if value is None else datetime.fromtimestamp(value, tz=UTC)

    def whole(self, name: str, *, required: bool = False, minimum: int = 0, maximum: int = MAX_COUNT) -> int | None:
        value = self.event.get(name)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(name, f"must be a whole number ≥ {minimum}")
        if value > maximum:
            raise self.fail(name, f"must be a whole number ≤ {maximum}")
        return value

    def flag(self, name: str) -> bool | None:
        value = self.event.get(name)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise self.fail(name, "must be true or false")
        return value

    def amount(self, name: str, *, required: bool = False, below: float | None = None) -> float | None:
        """A finite number ≥ 0 (and < `below`, when given)."""
        value = self.number(name, required=required)
        if value is not None and (value < 0 or (below is not None and value >= below)):
            raise self.fail(name, "must be a number ≥ 0" + (f" and < {below:g}" if below is not None else ""))
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, max_length=100)
        if value and value not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}")
        return value

    def reasons(self, name: str) -> dict[str, int]:
        """Reason text -> how many replies it refused, bounded like the coordinator bounds it."""
        value = self.mapping(name)
        if len(value) > MAX_REASONS:
            raise self.fail(name, f"must hold at most {MAX_REASONS} reasons")
        out: dict[str, int] = {}
        for reason, count in value.items():
            # PostgreSQL's jsonb cannot hold NUL, so it is refused here rather than by the database.
            if not reason or len(reason) > MAX_REASON_LENGTH or "\x00" in reason:
                raise self.fail(name, f"a reason must be 1 to {MAX_REASON_LENGTH} characters, without NUL")
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
                raise self.fail(f"{name}.{reason}", f"must be a whole number from 1 to {MAX_COUNT}")
            out[reason] = count
        return out

    def mapping(self, name: str) -> dict[str, Any]:
        value = self.event.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(name, "must be an object")
        return value

    def metrics(self, name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in self.mapping(name).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise self.fail(f"{name}.{key}", "must be a finite number")
            out[str(key)[:100]] = float(value)
        return out

    def sites(self, name: str) -> list[tuple[str, str]]:
        """(participant identity, site name) of each reported node."""
        value = self.event.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(name, "must be a list")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{name}[{i}]", "must be an object with node_id, participant and site")
            sub = _Field(item, f"{self.prefix}{name}[{i}].")
            node = sub.whole("node_id", maximum=MAX_NODE_ID)  # selectors draw 63-bit ids; not stored
            participant = sub.text("participant", max_length=64)
            site = sub.text("site", max_length=120) or (f"site {node}" if node is not None else "")
            if not site and not participant:
                raise sub.fail("site", "a participant or a site name is required")
            out.append((participant, site))
        return out


def _parse(event: Any, prefix: str = "") -> tuple[str, _Field]:
    if not isinstance(event, dict):
        raise ApplicationError(f"{prefix.rstrip('.') or 'body'}: an event must be a JSON object", field="body")
    f = _Field(event, prefix)
    kind = f.text("kind", required=True, max_length=32)
    if kind not in EVENT_KINDS:
        raise f.fail("kind", f"unknown event kind {kind!r}; expected one of {', '.join(EVENT_KINDS)}")
    f.text("event_id", required=True, max_length=64)
    if len(event["event_id"]) > 64:
        raise f.fail("event_id", "must be at most 64 characters")
    f.moment("ts", required=True)
    return kind, f


def run_event_apply(*, run: Run, event: Any, prefix: str = "") -> None:
    """Apply one coordinator event to `run`; raises ApplicationError naming the bad field."""
    kind, f = _parse(event, prefix)
    with transaction.atomic():
        if kind == "run_started":
            _run_started(run, f)
        elif kind == "round_finished":
            _round_finished(run, f)
        elif kind == "pool":
            _pool(run, f)
        elif kind == "log":
            _log(run, f)
        elif kind == "site_privacy":
            _site_privacy(run, f)
        else:
            _run_finished(run, f)


def run_events_apply(*, run: Run, events: list[Any]) -> int:
    """Apply a batch of events all or nothing; returns how many were applied."""
    with transaction.atomic():
        for i, event in enumerate(events):
            run_event_apply(run=run, event=event, prefix=f"events[{i}].")
        if any(isinstance(e, dict) and e.get("kind") in EXPORTED_KINDS for e in events):
            # Once per batch, after it commits: a batch of 100 rounds is one export.
            mlflow_export_enqueue(run=run)
    return len(events)


def _locked(run: Run) -> Run:
    return Run.objects.select_for_update().get(pk=run.pk)


def _run_started(run: Run, f: _Field) -> None:
    total = f.whole("total_rounds")
    f.text("app", max_length=200)
    f.text("fab_sha256", max_length=64)
    # Absent from coordinators older than the reply policy: the last policy reported stands.
    policy = f.choice("reply_policy", REPLY_POLICIES)
    if policy:
        RunReport.objects.update_or_create(run=run, defaults={"reply_policy": policy})
    locked = _locked(run)
    fields = []
    if total is not None and total != locked.total_rounds:
        locked.total_rounds = total
        fields.append("total_rounds")
    if locked.status in ACTIVE_RUN_STATUSES:
        # A coordinator that restarts resumes from its checkpoint: the phase restarts too.
        locked.phase = "waiting for clients" if not locked.current_round else "training"
        fields.append("phase")
    if fields:
        locked.save(update_fields=fields)


def _round_finished(run: Run, f: _Field) -> None:
    number = f.whole("round", required=True, minimum=1)
    assert number is not None
    # Absent from coordinators older than attempts: the first.
    attempt = f.whole("attempt", minimum=1) or 1
    train = f.metrics("train_metrics")
    evaluate = f.metrics("eval_metrics")
    trainers = f.sites("participants")
    evaluators = f.sites("eval_participants")
    started, finished = f.moment("started"), f.moment("finished")
    seconds = f.number("seconds")
    failures = f.whole("failures")
    # Absent from coordinators older than the count: none known, so 0.
    rejected = f.whole("rejected")
    # Absent from coordinators older than the reply policy: no reasons, results unknown.
    reasons = f.reasons("rejected_reasons")
    results = f.whole("results")
    no_results = f.flag("no_results")
    if sum(reasons.values()) > (rejected or 0):
        raise f.fail(
            "rejected_reasons", f"counts {sum(reasons.values())} rejections, more than rejected ({rejected or 0})"
        )
    if no_results and results:
        raise f.fail("no_results", f"cannot be true when results is {results}")
    metrics: dict[str, Any] = {"train": train, "evaluate": evaluate, "failures": failures or 0}
    if "secure_aggregation" in f.event:
        # "completed", why Flower's SecAgg+ halted, or "" (not used); absent from older coordinators.
        metrics["secure_aggregation"] = f.text("secure_aggregation", max_length=MAX_REASON_LENGTH)
    values = {
        "phase": "done",
        "clients": len(trainers),
        "train_loss": f.number("train_loss"),
        "eval_loss": f.number("eval_loss"),
        "eval_acc": f.number("eval_acc"),
        "metrics": metrics,
        "rejected": rejected or 0,
        "rejected_reasons": reasons,
        "results": results,
        "no_results": bool(no_results),
        "seconds": seconds,
        "started_at": started,
        "finished_at": finished,
    }
    RoundRecord.objects.update_or_create(run=run, attempt=attempt, number=number, defaults=values)
    known = {
        str(p.pk): p
        for p in Participant.objects.filter(
            problem_id=run.problem_id,
            # Longer digit strings cannot be a row id (and overflow a bigint column).
            pk__in=[int(ident) for ident, _ in trainers + evaluators if ident.isdigit() and len(ident) <= 18],
        )
    }
    # One INSERT for the round: a get_or_create per site took two queries each, 2,000 for a
    # round of 1,000 clients. A row already there (the round reported again) is kept as it was.
    rows: dict[tuple[str, str], Contribution] = {}
    for kind, sites in (("train", trainers), ("evaluate", evaluators)):
        for ident, site in sites:
            participant = known.get(ident)
            name = (participant.site_name if participant is not None else site)[:120]
            rows.setdefault(
                (name, kind), Contribution(run=run, site_name=name, round=number, kind=kind, participant=participant)
            )
    Contribution.objects.bulk_create(rows.values(), ignore_conflicts=True, batch_size=500)
    locked = _locked(run)
    if number > locked.current_round:
        locked.current_round = number
        if locked.status in ACTIVE_RUN_STATUSES:
            locked.phase = "training"
        locked.save(update_fields=["current_round", "phase"])


def _pool(run: Run, f: _Field) -> None:
    counts = f.mapping("selectors")
    parsed: dict[int, int] = {}
    for selector_id, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise f.fail(f"selectors.{selector_id}", f"must be a whole number from 0 to {MAX_COUNT}")
        match = _SELECTOR_INDEX.search(str(selector_id))
        if match:
            parsed[int(match.group(1))] = count
    total = f.whole("clients")
    # A round waiting for its minimum of clients (0: no longer waiting); absent from older coordinators.
    waiting_for = f.whole("waiting_for")
    if waiting_for is not None:
        locked = _locked(run)
        if locked.status in ACTIVE_RUN_STATUSES:
            connected = total if total is not None else sum(parsed.values())
            if waiting_for:
                phase = f"waiting: {connected} of {waiting_for} clients"[:32]
            else:
                phase = "training" if locked.phase.startswith("waiting: ") else locked.phase
            if phase != locked.phase:
                locked.phase = phase
                locked.save(update_fields=["phase"])
    for index, count in parsed.items():
        Service.objects.filter(run=run, role=ServiceRole.SELECTOR, index=index).update(clients_connected=count)
    Service.objects.filter(run=run, role=ServiceRole.COORDINATOR).update(
        clients_connected=total if total is not None else sum(parsed.values())
    )


def _log(run: Run, f: _Field) -> None:
    message = f.text("message", required=True)
    level = f.text("level", max_length=16).upper() or "INFO"
    source = f.text("source", max_length=64)
    ts = f.moment("ts", required=True)
    LogLine.objects.get_or_create(
        run=run,
        event_id=f.event["event_id"],
        defaults={"ts": ts, "level": level, "source": source, "message": message},
    )


def _participant_of(run: Run, ident: str) -> Participant | None:
    """The problem's participant a coordinator names by id (as in `participants[].participant`), if any."""
    # Longer digit strings cannot be a row id (and overflow a bigint column).
    if not (ident.isascii() and ident.isdigit() and len(ident) <= 18):
        return None
    return Participant.objects.filter(problem_id=run.problem_id, pk=int(ident)).first()


def _site_privacy(run: Run, f: _Field) -> None:
    """A site's self-reported privacy spending, stored as a new row (history is never overwritten)."""
    node = f.whole("node_id", required=True, maximum=MAX_NODE_ID)
    ident = f.text("participant", max_length=64)
    site = f.text("site", max_length=120)
    if "\x00" in site:
        raise f.fail("site", "must not hold a NUL character")
    state = f.choice("state", tuple(PrivacyState.values))
    if not state:
        raise f.fail("state", f"must be one of {', '.join(PrivacyState.values)}")
    epsilon = f.amount("epsilon", required=True)
    delta = f.amount("delta", required=True, below=1)
    cap = f.amount("epsilon_cap")
    noise = f.amount("noise_multiplier", required=True)
    clipping = f.amount("clipping_norm", required=True)
    releases = f.whole("releases", required=True)
    run_releases = f.whole("run_releases", required=True)
    number = f.whole("round")
    reason = f.text("reason", max_length=MAX_PRIVACY_REASON)
    if "\x00" in reason:
        raise f.fail("reason", "must not hold a NUL character")
    assert releases is not None and run_releases is not None and node is not None
    if run_releases > releases:
        raise f.fail("run_releases", f"cannot exceed releases ({releases}): this run's are among them")
    participant = _participant_of(run, ident)
    name = (participant.site_name if participant is not None else site or f"site {node}")[:120]
    PrivacyReport.objects.get_or_create(
        run=run,
        event_id=f.event["event_id"],
        defaults={
            "participant": participant,
            "site_name": name,
            "node_id": node,
            "state": state,
            "epsilon": epsilon,
            "delta": delta,
            "epsilon_cap": cap,
            "noise_multiplier": noise,
            "clipping_norm": clipping,
            "releases": releases,
            "run_releases": run_releases,
            "round": number,
            "reason": reason,
            "reported_at": f.moment("ts", required=True),
        },
    )


def _run_finished(run: Run, f: _Field) -> None:
    ok = f.event.get("ok")
    if not isinstance(ok, bool):
        raise f.fail("ok", "must be true or false")
    detail = f.text("detail", max_length=2000)
    dropped = f.whole("dropped_events")
    locked = _locked(run)
    if locked.status not in ACTIVE_RUN_STATUSES:
        return  # already stopped, failed or finished: the first word stands
    locked.status = RunStatus.FINISHED if ok else RunStatus.FAILED
    locked.phase = "done" if ok else "failed"
    if dropped:
        detail = f"{detail} ({dropped} log lines were lost while the webserver was unreachable)".strip()
    locked.status_detail = detail
    locked.finished_at = f.moment("ts") or timezone.now()
    locked.save(update_fields=["status", "phase", "status_detail", "finished_at"])
    # Selectors send their clients home when the run ends.
    Service.objects.filter(run=run).update(clients_connected=0)


def run_platform_event(*, run: Run, message: str, level: str = "WARNING") -> LogLine:
    """Record something the platform (not the coordinator) did to a run, e.g. a restart, among its events.

    It shows in the dashboard's log with the source `platform`.
    """
    return LogLine.objects.create(
        run=run,
        event_id=f"platform-{uuid.uuid4().hex}",
        ts=timezone.now(),
        level=level,
        source=PLATFORM_SOURCE,
        message=message,
    )


# ---- checkpoints -------------------------------------------------------------------------------


def checkpoint_store(
    *, run: Run, round: int, kind: str, stream: Readable, size: int | None, attempt: int = 1
) -> Checkpoint:
    """Store one model file of a round (0 = the final model) of one attempt of the run's coordinator.

    A re-upload of the same attempt, round and kind (a retry) replaces the file; another
    attempt's file of the same round is never touched. The body is copied in chunks to a
    temporary file first, so memory stays bounded and a broken or oversize upload never
    replaces a good file.
    """
    limit: int = settings.FEDOTA_MAX_CHECKPOINT_BYTES
    if kind not in CHECKPOINT_KINDS:
        raise ApplicationError(f"kind: must be one of {', '.join(CHECKPOINT_KINDS)}", field="kind")
    if not 0 <= round <= MAX_COUNT:
        raise ApplicationError(f"round: must be a whole number from 0 to {MAX_COUNT}", field="round")
    if not 1 <= attempt <= MAX_COUNT:
        raise ApplicationError(f"attempt: must be a whole number from 1 to {MAX_COUNT}", field="attempt")
    if size is not None and size > limit:
        raise TooLarge(f"the checkpoint is {size} bytes; this server accepts at most {limit}")
    digest = hashlib.sha256()
    with tempfile.TemporaryFile() as tmp:
        written = _copy(stream, tmp, limit=limit, size=size, digest=digest)
        if size is not None and written != size:
            raise ApplicationError(f"body: received {written} of {size} bytes", field="body")
        tmp.seek(0)
        with transaction.atomic():
            checkpoint, _ = Checkpoint.objects.select_for_update().get_or_create(run=run, attempt=attempt, round=round)
            field = checkpoint.npz if kind == "npz" else checkpoint.pt
            if field.name:
                # A retry replaces the file under the same name; the upload is complete
                # in `tmp` already, so only a storage error can lose it.
                field.storage.delete(field.name)
            stem = f"round_{round:04d}" if round else "final_model"
            # Attempt 1 keeps the names it always had; a later attempt's files sit apart from them.
            folder = f"p{run.problem_id}/run{run.number}" + (f"/attempt-{attempt}" if attempt > 1 else "")
            field.save(f"{folder}/{stem}.{kind}", File(tmp), save=False)
            # What the manifest of this file will say it is, and under which data contract it was made.
            setattr(checkpoint, f"{kind}_sha256", digest.hexdigest())
            # Never a reason to refuse a model: a contract that cannot be hashed leaves the field blank.
            checkpoint.contract_sha256 = contract_sha256(run.problem.contract) or ""
            checkpoint.save()
            if round == 0:
                mlflow_export_enqueue(run=run)
    return checkpoint


def _copy(stream: Readable, out: BinaryIO, *, limit: int, size: int | None, digest: hashlib._Hash) -> int:
    written = 0
    remaining = size
    while remaining is None or remaining > 0:
        block = stream.read(COPY_CHUNK if remaining is None else min(COPY_CHUNK, remaining))
        if not block:
            break
        written += len(block)
        if written > limit:
            raise TooLarge(f"the checkpoint is larger than this server accepts ({limit} bytes)")
        out.write(block)
        digest.update(block)
        if remaining is not None:
            remaining -= len(block)
    return written
