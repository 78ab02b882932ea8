"""Celery tasks of the run lifecycle: thin wrappers over `problems.lifecycle`.

Each task takes ids only, calls one lifecycle service and owns its time
limits. All of them may run twice (late acks redeliver a task whose worker
died) and are idempotent. The periodic schedule lives in settings
(CELERY_BEAT_SCHEDULE).
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from webserver.problems import lifecycle

log = logging.getLogger(__name__)

# Starting waits for every service to listen (the process backend allows 120 s
# in all); the soft limit leaves time to mark the run failed and clean up.
PUBLISH_SOFT_LIMIT = 170
PUBLISH_HARD_LIMIT = 200


@shared_task(name="problems.publish", soft_time_limit=PUBLISH_SOFT_LIMIT, time_limit=PUBLISH_HARD_LIMIT)
def publish(run_id: int, trace: dict[str, str] | None = None) -> None:
    """Launch run `run_id`'s coordinator and selectors (the service tokens are made here, never queued).

    `trace`: the W3C trace context of the request that started the run (only when tracing is on).
    """
    try:
        lifecycle.run_launch(run_id=run_id, trace=trace)
    except SoftTimeLimitExceeded:
        lifecycle.run_fail(run_id=run_id, reason=f"the infrastructure did not start within {PUBLISH_SOFT_LIMIT} s")
    except Exception as exc:
        # Never leave a run "starting" forever: whatever went wrong is its reason.
        log.exception("launching run %s failed", run_id)
        lifecycle.run_fail(run_id=run_id, reason=f"launching the run failed unexpectedly: {exc}")


@shared_task(name="problems.stop", soft_time_limit=90, time_limit=120)
def stop(problem_id: int) -> None:
    """Tear down problem `problem_id`'s services; its stopping run becomes stopped."""
    lifecycle.run_teardown(problem_id=problem_id)


# Beat sends this every 15 s; a copy that waited longer than a minute is stale
# and the next one does the same work, so it expires instead of piling up.
@shared_task(name="problems.reconcile", soft_time_limit=120, time_limit=150, expires=60)
def reconcile() -> str:
    """Restart what crashed, remove what is orphaned (see `lifecycle.infrastructure_reconcile`)."""
    return lifecycle.infrastructure_reconcile().summary()
