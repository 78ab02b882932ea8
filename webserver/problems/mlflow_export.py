"""MLflow export: a problem's runs logged as MLflow runs on the tracking server it links (docs/mlflow.md).

Writes only: the problem's MLflow settings (`problem_mlflow_update`) and the export of one
run (`run_mlflow_export`, called by the `problems.mlflow_export` task whenever a linked
run's coordinator reports a round, the run's end or its final model). The export is
idempotent and incremental: `MlflowExport` remembers the MLflow run (so a retried or
redelivered task never makes a second one), which rounds were logged (each once, as
`step=round`), which model files were uploaded and whether the run was ended. A failure to
reach MLflow never touches the federation: it is stored on the export, said once in the
run's events, and the task tries again.
"""

from __future__ import annotations

import base64
import math
import os
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from webserver.errors import ApplicationError, NotAllowed
from webserver.permissions import owns_problem
from webserver.problems.mlflow_client import MlflowClient, MlflowError, mlflow_key
from webserver.problems.models import MlflowExport, Problem, Run, RunStatus

MAX_URL = 500
MAX_EXPERIMENT = 250
MAX_TOKEN = 4000
# Longer than the task's hard time limit: a lease outlives its holder only when the worker died.
LEASE = timedelta(seconds=400)
# Rounds logged per log-batch call (each is at most a few dozen metrics; MLflow takes 1,000).
ROUNDS_PER_BATCH = 50
EXPORT_TAG = "fedota.export"
# How a Fedota run ends in MLflow's words.
END_STATUS = {RunStatus.FINISHED: "FINISHED", RunStatus.FAILED: "FAILED", RunStatus.STOPPED: "KILLED"}
_SEALED = "sealed-v1:"


class ExportBusy(Exception):
    """Another task is exporting this run right now; try again shortly."""


# ---- the token at rest -------------------------------------------------------------------------


def _token_key(secret: str) -> bytes:
    info = b"fedota: MLflow tokens at rest"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())


def seal_token(token: str) -> str:
    """`token` encrypted with a key derived from SECRET_KEY (AES-GCM), as stored on the problem."""
    nonce = os.urandom(12)
    sealed = AESGCM(_token_key(settings.SECRET_KEY)).encrypt(nonce, token.encode(), b"mlflow-token")
    return _SEALED + base64.urlsafe_b64encode(nonce + sealed).decode()


def open_token(stored: str) -> str:
    """The token `seal_token` stored ("" for none); tries SECRET_KEY, then SECRET_KEY_FALLBACKS."""
    if not stored:
        return ""
    if not stored.startswith(_SEALED):
        raise MlflowError("the stored MLflow token is damaged; set it again on the problem's edit page")
    raw = base64.urlsafe_b64decode(stored[len(_SEALED) :])
    for secret in [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]:
        try:
            return AESGCM(_token_key(secret)).decrypt(raw[:12], raw[12:], b"mlflow-token").decode()
        except InvalidTag:
            continue
    raise MlflowError(
        "the MLflow token was sealed with another SECRET_KEY and cannot be opened; set it again on the problem's "
        "edit page"
    )


# ---- the problem's settings --------------------------------------------------------------------


def mlflow_url_check(url: str) -> str:
    """The tracking URL as stored ("" unlinks); ApplicationError on `mlflow_tracking_url` otherwise."""
    url = (url or "").strip()
    if not url:
        return ""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ApplicationError(
            "the MLflow tracking URL must be an http:// or https:// address with a host, such as "
            "https://mlflow.example.org or http://127.0.0.1:5000",
            field="mlflow_tracking_url",
        )
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise ApplicationError(
            "give the MLflow tracking URL without a query, a fragment or a user name and password "
            "(put a token in the token box instead)",
            field="mlflow_tracking_url",
        )
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise ApplicationError(
            f"the MLflow tracking URL must be at most {MAX_URL} characters, without spaces", field="mlflow_tracking_url"
        )
    return url.rstrip("/")


def _experiment_check(name: str) -> str:
    name = (name or "").strip()
    if len(name) > MAX_EXPERIMENT or "\x00" in name:
        raise ApplicationError(
            f"the MLflow experiment name must be at most {MAX_EXPERIMENT} characters", field="mlflow_experiment"
        )
    return name


def _token_check(token: str) -> str:
    token = (token or "").strip()
    if len(token) > MAX_TOKEN or any(c.isspace() or ord(c) < 32 for c in token):
        raise ApplicationError(
            f"the MLflow token must be at most {MAX_TOKEN} characters, without spaces or line breaks",
            field="mlflow_token",
        )
    return token


@dataclass(frozen=True)
class MlflowSettings:
    """Checked MLflow settings to store; None: leave that one as it is. token "" removes the token."""

    tracking_url: str | None = None
    token: str | None = None
    experiment: str | None = None


def mlflow_settings_check(
    *, tracking_url: str | None = None, token: str | None = None, experiment: str | None = None
) -> MlflowSettings:
    """Check MLflow settings before anything is saved; ApplicationError naming the field at fault."""
    return MlflowSettings(
        tracking_url=None if tracking_url is None else mlflow_url_check(tracking_url),
        token=None if token is None else _token_check(token),
        experiment=None if experiment is None else _experiment_check(experiment),
    )


def problem_mlflow_update(*, problem: Problem, user: Any, changes: MlflowSettings) -> Problem:
    """Store the problem's MLflow settings (owner only); a newly linked problem's latest run is exported.

    The token is sealed before it is stored and never returned by anything.
    """
    if not owns_problem(user, problem):
        raise NotAllowed("only the problem's owner can link it to MLflow")
    with transaction.atomic():
        stored = Problem.objects.select_for_update().get(pk=problem.pk)
        fields: list[str] = []
        if changes.tracking_url is not None and changes.tracking_url != stored.mlflow_tracking_url:
            stored.mlflow_tracking_url = changes.tracking_url
            fields.append("mlflow_tracking_url")
        if changes.token is not None:
            stored.mlflow_token = seal_token(changes.token) if changes.token else ""
            fields.append("mlflow_token")
        if changes.experiment is not None and changes.experiment != stored.mlflow_experiment:
            stored.mlflow_experiment = changes.experiment
            fields.append("mlflow_experiment")
        if fields:
            stored.save(update_fields=[*fields, "updated_at"])
        if stored.mlflow_tracking_url and fields:
            latest = stored.runs.order_by("-number").first()
            if latest is not None:
                mlflow_export_enqueue(run=latest)
    return stored


def mlflow_export_enqueue(*, run: Run) -> None:
    """Export `run` after the current transaction commits, if its problem is linked to MLflow."""
    if not run.problem.mlflow_tracking_url:
        return
    from webserver.monitoring import tasks

    tasks.mlflow_export.delay_on_commit(run.pk)


# ---- the export --------------------------------------------------------------------------------


def _ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif prefix:
        out[mlflow_key(prefix)] = "" if value is None else str(value)


def run_params(run: Run) -> dict[str, str]:
    """What the MLflow run's params are: the run's config (nested keys joined with dots) and its app."""
    params: dict[str, str] = {}
    _flatten("", run.config or {}, params)
    params["fab_sha256"] = run.fab_sha256
    params["app_version"] = str(run.app_version)
    return params


def round_metrics(record: Any) -> dict[str, float]:
    """A round's numbers as MLflow metrics: the losses and accuracy, then every metric the coordinator sent."""
    values: dict[str, Any] = {
        "train_loss": record.train_loss,
        "eval_loss": record.eval_loss,
        "eval_acc": record.eval_acc,
        "clients": record.clients,
        "rejected": record.rejected,
        "round_seconds": record.seconds,
    }
    stored = record.metrics or {}
    for group in ("train", "evaluate"):
        for key, value in (stored.get(group) or {}).items():
            values[f"{group}.{key}"] = value
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[mlflow_key(key)] = float(value)
    return out


def _claim(export: MlflowExport) -> bool:
    now = timezone.now()
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    return MlflowExport.objects.filter(Q(pk=export.pk) & free).update(lease_until=now + LEASE) == 1


def run_mlflow_export(*, run_id: int) -> str:
    """Log what run `run_id` has that its MLflow run lacks; returns what was done, for the task's log.

    Raises MlflowError (recorded on the export and in the run's events) when MLflow cannot be
    reached or refuses, and ExportBusy when another task holds the run's export.
    """
    run = Run.objects.select_related("problem").filter(pk=run_id).first()
    if run is None:
        return "no such run"
    problem = run.problem
    if not problem.mlflow_tracking_url:
        return "the problem is not linked to MLflow"
    export, _ = MlflowExport.objects.get_or_create(
        run=run, defaults={"key": uuid.uuid4().hex, "tracking_url": problem.mlflow_tracking_url}
    )
    if not _claim(export):
        raise ExportBusy(f"run {run_id} is being exported by another task")
    export.refresh_from_db()
    try:
        client = MlflowClient(
            export.tracking_url,
            open_token(problem.mlflow_token),
            local_network=settings.FEDOTA_MLFLOW_ALLOW_LOCAL_NETWORK,
        )
        done = _export(client, export, run)
    except MlflowError as exc:
        _failed(export, run, exc.message)
        raise
    finally:
        MlflowExport.objects.filter(pk=export.pk).update(lease_until=None)
    _succeeded(export, run)
    return done


def _export(client: MlflowClient, export: MlflowExport, run: Run) -> str:
    done: list[str] = []
    if not export.mlflow_run_id:
        problem = run.problem
        name = problem.mlflow_experiment or f"{problem.title} (Fedota problem {problem.pk})"
        export.experiment_id = client.experiment_id(name)
        # A worker that died after creating the run, before saving its id, left it tagged with our key.
        found = client.run_find(experiment_id=export.experiment_id, tag=EXPORT_TAG, value=export.key)
        if found is None:
            found = client.run_create(
                experiment_id=export.experiment_id,
                run_name=f"{problem.title} · run {run.number}",
                start_time_ms=_ms(run.started_at or run.created_at),
                tags={
                    EXPORT_TAG: export.key,
                    "fedota.problem": problem.title,
                    "fedota.problem_id": str(problem.pk),
                    "fedota.run_number": str(run.number),
                    "fedota.fab_sha256": run.fab_sha256,
                },
            )
            done.append("created the MLflow run")
        export.mlflow_run_id = str(found["run_id"])
        export.save(update_fields=["experiment_id", "mlflow_run_id"])
    if not export.params_logged:
        client.log_batch(export.mlflow_run_id, params=run_params(run))
        export.params_logged = True
        export.save(update_fields=["params_logged"])
        done.append("logged the params")
    logged = set(export.rounds_logged or [])
    pending = [r for r in run.rounds.order_by("attempt", "number") if f"{r.attempt}.{r.number}" not in logged]
    for start in range(0, len(pending), ROUNDS_PER_BATCH):
        chunk = pending[start : start + ROUNDS_PER_BATCH]
        metrics = []
        for record in chunk:
            # A stored moment, so a batch sent again (its answer lost) is the same points, which MLflow keeps once.
            moment = record.finished_at or record.started_at or run.started_at or run.created_at
            metrics += [
                {"key": key, "value": value, "timestamp": _ms(moment), "step": record.number}
                for key, value in round_metrics(record).items()
            ]
        client.log_batch(export.mlflow_run_id, metrics=metrics)
        export.rounds_logged = [*(export.rounds_logged or []), *(f"{r.attempt}.{r.number}" for r in chunk)]
        export.save(update_fields=["rounds_logged"])
    if pending:
        done.append(f"logged {len(pending)} round{'s' if len(pending) != 1 else ''}")
    if not run.is_active:
        done += _export_models(client, export, run)
        status = END_STATUS.get(RunStatus(run.status), "FAILED")
        if export.status_logged != status:
            client.run_end(export.mlflow_run_id, status=status, end_time_ms=_ms(run.finished_at or timezone.now()))
            export.status_logged = status
            export.save(update_fields=["status_logged"])
            done.append(f"ended the MLflow run as {status}")
    return "; ".join(done) or "nothing new"


def _export_models(client: MlflowClient, export: MlflowExport, run: Run) -> list[str]:
    """Upload the run's result model (its final model, else its last completed round's) once per file."""
    import hashlib

    from webserver.monitoring.models import Checkpoint
    from webserver.monitoring.queries import model_file

    done: list[str] = []
    artifact_uri = ""
    for kind in ("npz", "pt"):
        stored, served, attempt = model_file(run=run, round=0, kind=kind)
        if stored is None:
            continue
        checkpoint = (
            None if attempt is None else Checkpoint.objects.filter(run=run, round=served, attempt=attempt).first()
        )
        digest = str(getattr(checkpoint, f"{kind}_sha256", "")) if checkpoint is not None else ""
        # As the coordinator names its files: the final model, or (a run that ended early) its last round's.
        path = f"model/final_model.{kind}" if served == 0 else f"model/round_{served:04d}.{kind}"
        if not digest:
            with stored.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if (export.models_logged or {}).get(path) == digest:
            continue
        if not artifact_uri:
            artifact_uri = str(client.run_get(export.mlflow_run_id).get("artifact_uri", ""))
        with stored.open("rb") as handle:
            client.artifact_put(artifact_uri=artifact_uri, path=path, stream=handle, size=stored.size)
        export.models_logged = {**(export.models_logged or {}), path: digest}
        export.save(update_fields=["models_logged"])
        done.append(f"uploaded {path}")
    return done


def _failed(export: MlflowExport, run: Run, message: str) -> None:
    from webserver.monitoring.services import run_platform_event

    said_before = export.last_error == message
    MlflowExport.objects.filter(pk=export.pk).update(last_error=message, last_error_at=timezone.now())
    if not said_before:
        # Said once per distinct error: a server that stays away does not fill the events with retries.
        run_platform_event(
            run=run,
            message=f"MLflow export to {export.tracking_url} failed; it is retried, the run is not affected: {message}",
        )


def _succeeded(export: MlflowExport, run: Run) -> None:
    from webserver.monitoring.services import run_platform_event

    MlflowExport.objects.filter(pk=export.pk).update(last_error="", last_success_at=timezone.now())
    if export.last_error:
        run_platform_event(run=run, message=f"MLflow export to {export.tracking_url} works again.", level="INFO")


def mlflow_run_url(export: MlflowExport) -> str:
    """The MLflow UI's page of the exported run ("" before it exists)."""
    if not export.mlflow_run_id:
        return ""
    return f"{export.tracking_url}/#/experiments/{export.experiment_id}/runs/{export.mlflow_run_id}"
