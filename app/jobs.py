"""The queue's page and maintenance tasks: thin functions that take the runtime (`app.tasks` hands the
worker's over) and call the pipeline.

A page job never ends in a state that freezes its page. On success it clears the page's failure count. On a
failure it records the error on the page's state row (so `status` shows the last error and the attempt count)
and, unless the failure is final, defers a follow-up job through `defer_pages`, in the same transaction; the
failed job itself then ends normally. procrastinate's own retry is not used: it re-queues the failed row and
collides with a newer waiting job of the page (see `app.queue`). A final failure (page-level permanent error,
or `JOB_MAX_ATTEMPTS` reached) removes the page's rows and ends the job `failed`. A `ServiceFault` (401, the
embedding model missing...) is never final: the rows stay, and the follow-ups keep coming, at most
RETRY_MAX_SECONDS apart, until the operator's fix lets the page index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from procrastinate import JobContext
from procrastinate import exceptions as pexc
from procrastinate.jobs import Job
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from app.deliveries import prune_deliveries
from app.errors import DatabaseUnavailable, PermanentError, ServiceFault
from app.pipeline import process_page
from app.queue import (
    MAINTENANCE_QUEUE,
    PAGES_QUEUE,
    RECONCILE,
    PageJobRequest,
    defer_pages,
    in_deferral_transaction,
    now,
    plan_retry,
    recover_stalled,
    task,
)
from app.retry import Backoff
from app.startup import confluence_configured
from app.sync import reconcile, reconcile_due
from app.term_counts import count_untracked, fold_term_deltas
from app.vector_store import WORKER_LOST_ERROR, FailureRecord

if TYPE_CHECKING:
    from app.runtime import Runtime

log = logging.getLogger(__name__)

#: Event name of follow-up jobs (logs only: the pipeline never trusts an event).
RETRY_EVENT = "retry"
#: Tries to store a failure and its follow-up while Postgres is unreachable, before giving up on this job.
_STORE_ATTEMPTS = 5
T = TypeVar("T")


class PageJobFailed(Exception):
    """A page job failed for good; the page is recorded `failed` (the job ends `failed` in procrastinate)."""


@task(name="index_page", queue=PAGES_QUEUE, pass_context=True)
async def index_page_job(
    rt: Runtime, context: JobContext, page_id: str, content_type: str | None = None, event: str | None = None
) -> dict[str, Any]:
    job_id = context.job.id
    try:
        outcome = await process_page(rt, page_id, content_type, event)  # type: ignore[arg-type]
    except asyncio.CancelledError:
        # The worker is stopping and its drain time ran out (or the job was aborted): nothing is wrong with
        # the page, so no attempt is counted, but its event must not be lost.
        log.warning("page job cancelled; handing the page to a follow-up", extra={"page_id": page_id, "job_id": job_id})
        await asyncio.shield(_defer_follow_up(rt, PageJobRequest(page_id, content_type, RETRY_EVENT)))
        raise
    except Exception as exc:
        return await _handle_failure(rt, context.job, page_id, content_type, event, exc)
    await rt.store.clear_failure(page_id)
    return dataclasses.asdict(outcome)


async def _handle_failure(
    rt: Runtime, job: Job, page_id: str, content_type: str | None, event: str | None, exc: Exception
) -> dict[str, Any]:
    """Record the failure and, unless final, defer the follow-up; returns the job's result, or raises
    `PageJobFailed` (final)."""
    error = f"{type(exc).__name__}: {exc}"
    record, delay = await _store_failure(rt, PageJobRequest(page_id, content_type, RETRY_EVENT), exc, error)
    rt.metrics.jobs.labels("failed" if record.failed else "retry").inc()
    log.warning(
        "page job failed",
        extra={
            "page_id": page_id,
            "job_id": job.id,
            "event": event,
            "attempt": record.attempts,
            "permanent": record.failed,
            "retry_in": delay,
            "rows_removed": record.removed,
            "error": error[:2000],
        },
    )
    if record.failed:
        raise PageJobFailed(f"page {page_id} failed after {record.attempts} attempts: {error}") from exc
    return {"page_id": page_id, "action": "retry", "attempts": record.attempts, "retry_in": delay}


async def _store_failure(
    rt: Runtime, request: PageJobRequest, exc: Exception, error: str
) -> tuple[FailureRecord, float | None]:
    """The failure and its follow-up in ONE transaction, so a failure is never recorded without a job that
    will retry the page. Retried (briefly) while Postgres is unreachable: if it stays so, the exception
    propagates, and the job stays `doing` on a worker whose restart (`run_worker_forever`) makes it stalled,
    so `recover_stalled` still hands the page back."""

    async def work(conn: psycopg.AsyncConnection[Any]) -> tuple[FailureRecord, float | None]:
        record = await rt.store.record_failure(
            request.page_id,
            error,
            permanent=isinstance(exc, PermanentError),
            max_attempts=rt.settings.job_max_attempts,
            conn=conn,
            service_fault=isinstance(exc, ServiceFault),
        )
        delay = None if record.failed else plan_retry(exc, attempts=record.attempts, settings=rt.settings)
        if delay is not None:
            await defer_pages(conn, [request], not_before=now() + dt.timedelta(seconds=delay))
        return record, delay

    result: tuple[FailureRecord, float | None] = await _store_with_retries(rt, work)
    return result


async def _defer_follow_up(rt: Runtime, request: PageJobRequest) -> None:
    await _store_with_retries(rt, lambda conn: defer_pages(conn, [request]))


async def _store_with_retries(rt: Runtime, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    """`in_deferral_transaction(rt.pool, work)`, retried (tenacity) while Postgres is unreachable
    (`DatabaseUnavailable`): at most `_STORE_ATTEMPTS` tries, full-jitter backoff from 1 s capped at 10 s, at
    least 0.2 s apart; then that DatabaseUnavailable itself goes up."""
    policy = AsyncRetrying(
        retry=retry_if_exception_type(DatabaseUnavailable),
        stop=stop_after_attempt(_STORE_ATTEMPTS),
        wait=Backoff(base=1.0, cap=10.0, floor=0.2),
        reraise=True,
    )
    result: T = await policy(in_deferral_transaction, rt.pool, work)
    return result


async def hand_back_stalled_page(rt: Runtime, conn: psycopg.AsyncConnection[Any], job: Job) -> None:
    """A page job whose worker died mid-job (`app.queue.recover_stalled`, in its transaction): the lost attempt
    counts as a failure (a page that kills its worker every time must end `failed`, not loop for ever), and a
    follow-up is deferred at once, joining a waiting job of the page if there is one."""
    page_id = str(job.task_kwargs["page_id"])
    kind = job.task_kwargs.get("content_type")
    content_type = kind if isinstance(kind, str) else None
    record = await rt.store.record_failure(
        page_id,
        WORKER_LOST_ERROR,
        permanent=False,
        max_attempts=rt.settings.job_max_attempts,
        conn=conn,
        worker_lost=True,
    )
    if not record.failed:
        await defer_pages(conn, [PageJobRequest(page_id, content_type, RETRY_EVENT)])


async def recover_stalled_jobs(rt: Runtime) -> int:
    return await recover_stalled(
        rt.queue,
        stalled_after=rt.settings.worker_heartbeat_seconds * 3,
        hand_back_page=lambda conn, job: hand_back_stalled_page(rt, conn, job),
    )


@task(name="tick", queue=MAINTENANCE_QUEUE, periodic={"cron": "* * * * *", "periodic_id": "tick"})
async def tick(rt: Runtime, timestamp: int) -> None:
    """Every minute, on one worker: recover stalled jobs, prune old deliveries, fold the word counts'
    deltas (`app.term_counts`), start reconciliation when due.

    Each step is isolated: a failure is logged and the next step still runs (a bad stalled job must not stop
    pruning or reconciliation scheduling); the next tick tries again.
    """
    await recover_stalled_jobs(rt)  # never raises
    try:
        await prune_deliveries(rt.pool, window_seconds=rt.settings.dedupe_window_seconds)
    except Exception as exc:
        log.error("tick: pruning deliveries failed", extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
    try:
        async with rt.pool.connection() as conn:
            await fold_term_deltas(conn)
            # A count a start gave up on (its table was held: `count_untracked`) is tried again here.
            await count_untracked(conn, rt.settings.vector_table)
    except Exception as exc:
        log.error("tick: folding word counts failed", extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
    # Unconfigured Confluence: start-up said so once; failing a reconciliation every minute would only repeat it.
    if rt.settings.reconcile_interval > 0 and confluence_configured(rt.settings):
        try:
            if await reconcile_due(rt):
                await defer_reconcile(rt)
        except Exception as exc:
            log.error("tick: scheduling reconciliation failed", extra={"error": f"{type(exc).__name__}: {exc}"[:500]})


async def defer_reconcile(rt: Runtime) -> bool:
    """Queue one reconciliation (a second one while one waits is coalesced)."""
    try:
        await rt.queue.configure_task(
            RECONCILE, queue=MAINTENANCE_QUEUE, queueing_lock="reconcile", lock="reconcile"
        ).defer_async()
    except pexc.AlreadyEnqueued:
        return False
    return True


@task(name="reconcile", queue=MAINTENANCE_QUEUE)
async def reconcile_job(rt: Runtime) -> dict[str, int]:
    report = await reconcile(rt)
    return dataclasses.asdict(report)
