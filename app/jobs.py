"""The queue's task functions: thin wrappers that find the runtime and call the pipeline.

Failures are recorded on the page's state row before the queue decides to retry, so `status` always shows the
last error and the attempt count, whatever happens next.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from procrastinate import JobContext

from app.errors import PermanentError
from app.pipeline import process_page
from app.queue import MAINTENANCE_QUEUE, PAGES_QUEUE, RECONCILE, recover_stalled, tasks
from app.runtime import current
from app.security import prune_deliveries

log = logging.getLogger(__name__)


@tasks.task(name="index_page", queue=PAGES_QUEUE, pass_context=True)
async def index_page_job(
    context: JobContext, page_id: str, content_type: str | None = None, event: str | None = None
) -> dict[str, Any]:
    rt = current()
    job_id = context.job.id
    try:
        outcome = await process_page(rt, page_id, content_type)  # type: ignore[arg-type]
    except Exception as exc:
        attempt = context.job.attempts + 1
        permanent = isinstance(exc, PermanentError) or attempt >= rt.settings.job_max_attempts
        await rt.store.record_failure(page_id, f"{type(exc).__name__}: {exc}", permanent=permanent)
        rt.metrics.jobs.labels("failed" if permanent else "retry").inc()
        log.warning(
            "page job failed",
            extra={
                "page_id": page_id,
                "job_id": job_id,
                "event": event,
                "attempt": attempt,
                "permanent": permanent,
                "error": f"{type(exc).__name__}: {exc}",
            },
        )
        raise
    return dataclasses.asdict(outcome)


@tasks.periodic(cron="* * * * *", periodic_id="tick")
@tasks.task(name="tick", queue=MAINTENANCE_QUEUE, pass_context=True)
async def tick(context: JobContext, timestamp: int) -> None:
    """Every minute, on one worker: recover stalled jobs, prune old deliveries, start reconciliation when due."""
    rt = current()
    await recover_stalled(rt.queue, stalled_after=rt.settings.worker_heartbeat_seconds * 3)
    await prune_deliveries(rt.pool, window_seconds=rt.settings.dedupe_window_seconds)
    if rt.settings.reconcile_interval > 0:
        from app.sync import reconcile_due

        if await reconcile_due(rt):
            await defer_reconcile(rt)


async def defer_reconcile(rt: Any) -> bool:
    """Queue one reconciliation (a second one while one waits is coalesced)."""
    from procrastinate import exceptions as pexc

    try:
        await rt.queue.configure_task(
            RECONCILE, queue=MAINTENANCE_QUEUE, queueing_lock="reconcile", lock="reconcile"
        ).defer_async()
    except pexc.AlreadyEnqueued:
        return False
    return True


@tasks.task(name="reconcile", queue=MAINTENANCE_QUEUE)
async def reconcile_job() -> dict[str, int]:
    from app.sync import reconcile

    report = await reconcile(current())
    return dataclasses.asdict(report)
