"""Celery tasks of monitoring: the export of runs to MLflow (thin wrapper over `problems.mlflow_export`).

Takes a run id only and may run twice (late acks redeliver a task whose worker died): the
export remembers what it logged, so a second copy logs nothing again.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task

from webserver.problems.mlflow_client import MlflowError
from webserver.problems.mlflow_export import ExportBusy, run_mlflow_export

log = logging.getLogger(__name__)

# Backoff between tries when MLflow cannot be reached: 30 s, 1, 2, 4, 8 min, then every 10 min, for about
# an hour in all; after that the next round or the run's end tries again.
MAX_RETRIES = 10
MAX_BACKOFF = 600
# Another copy of the task holds the run's export: look again shortly.
BUSY_COUNTDOWN = 5
MAX_BUSY_RETRIES = 120


@shared_task(name="monitoring.mlflow_export", bind=True, soft_time_limit=330, time_limit=360, max_retries=None)
def mlflow_export(self: Task, run_id: int) -> str:
    """Log what run `run_id` has that its MLflow run lacks (params, rounds, final model, end status)."""
    try:
        return run_mlflow_export(run_id=run_id)
    except ExportBusy as exc:
        if self.request.retries >= MAX_BUSY_RETRIES:
            log.warning("run %s: %s; giving up this copy", run_id, exc)
            return str(exc)
        raise self.retry(countdown=BUSY_COUNTDOWN) from None
    except MlflowError as exc:
        # Recorded on the export and in the run's events already; the federation goes on regardless.
        if self.request.retries >= MAX_RETRIES:
            log.warning("run %s: MLflow export gave up for now: %s", run_id, exc.message)
            return f"gave up for now: {exc.message}"
        raise self.retry(countdown=min(MAX_BACKOFF, 30 * 2**self.request.retries)) from None
