"""The durable job queue: procrastinate on the same Postgres as the vectors.

Why procrastinate: it keeps jobs in Postgres (a 202 means the job is committed), and its two locks are exactly
our page semantics. `queueing_lock=page:<id>` lets at most one *waiting* job exist per page, so a burst of
events for a page collapses into one job; `lock=page:<id>` lets at most one job per page *run* at a time, on
any worker process or machine. Retries are ours (`PageRetry`): exponential backoff with full jitter,
`Retry-After` honoured, permanent errors not retried. Workers that die mid-job are detected by heartbeat and
their jobs retried (`recover_stalled`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import procrastinate
import psycopg
from procrastinate import exceptions as pexc
from procrastinate.jobs import Job
from procrastinate.manager import QUEUEING_LOCK_CONSTRAINT
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.config import Settings
from app.errors import DatabaseUnavailable, PermanentError, RetryableError
from app.retry import Backoff

log = logging.getLogger(__name__)

PAGES_QUEUE = "pages"
MAINTENANCE_QUEUE = "maintenance"
INDEX_PAGE = "cv:index_page"
RECONCILE = "cv:reconcile"

tasks = procrastinate.Blueprint()

EnqueueOutcome = Literal["queued", "coalesced"]
#: Tries of a batch deferral that lost a race for a page lock (or a deadlock) to another transaction.
_DEFER_ATTEMPTS = 5
T = TypeVar("T")


@dataclass(frozen=True)
class PageRetry(BaseRetryStrategy):
    """Job-level retry decision: backoff with full jitter, `Retry-After` first, permanent errors never."""

    max_attempts: int = 12
    base: float = 2.0
    cap: float = 900.0

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, PermanentError):
            return None
        attempts = job.attempts + 1  # attempts made so far, this one included
        if attempts >= self.max_attempts:
            return None
        retry_after = exception.retry_after if isinstance(exception, RetryableError) else None
        seconds = Backoff(base=self.base, cap=self.cap).delay(attempts, retry_after)
        return RetryDecision(retry_at=now() + dt.timedelta(seconds=max(seconds, 0.05)))

    @classmethod
    def from_settings(cls, settings: Settings) -> PageRetry:
        return cls(
            max_attempts=settings.job_max_attempts,
            base=settings.retry_base_seconds,
            cap=settings.retry_max_seconds,
        )


def page_lock(page_id: str) -> str:
    return f"page:{page_id}"


def build_queue(database_url: str, settings: Settings) -> procrastinate.App:
    """A procrastinate App on our database with our tasks registered (import side effects included)."""
    from app import jobs  # noqa: F401  (registers the task functions on `tasks`)

    connector = procrastinate.PsycopgConnector(
        conninfo=database_url,
        min_size=1,
        max_size=max(4, settings.worker_concurrency + 2),
        timeout=10.0,  # like our own pool: with Postgres down a webhook gets its 503 fast, not after 30 s
        kwargs={"application_name": "confluence-vectors-queue"},
    )
    app = procrastinate.App(connector=connector)
    app.add_tasks_from(tasks, namespace="cv")
    retry = PageRetry.from_settings(settings)
    for task in app.tasks.values():
        if task.name == INDEX_PAGE:
            task.retry_strategy = retry
    return app


@dataclass(frozen=True, slots=True)
class PageJobRequest:
    """One page to (re)index, as the webhook, backfill or reconciliation asks for it."""

    page_id: str
    content_type: str | None = None
    event: str | None = None


#: Procrastinate's own batch-defer entry point (the one `batch_defer_async` calls), fed with plain arrays: the
#: job rows are built by Postgres, in lock order, so concurrent batches over overlapping pages wait for each
#: other instead of deadlocking. Why not `JobManager.batch_defer_jobs_async`: it sends each job as a composite
#: value, which psycopg escapes character by character in Python: measured ~60-90 us of CPU per job, more than
#: the rest of a webhook's handling.
_DEFER_PAGE_JOBS = """
    SELECT unnest(procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW(%(queue)s, %(task)s, 0, j.lock, j.lock,
                   jsonb_build_object('page_id', j.page_id, 'content_type', j.content_type, 'event', j.event),
                   NULL)::procrastinate_job_to_defer_v1
        FROM unnest(%(locks)s::text[], %(page_ids)s::text[], %(types)s::text[], %(events)s::text[])
             AS j(lock, page_id, content_type, event)
        ORDER BY j.lock
    )))
"""


async def defer_pages(conn: psycopg.AsyncConnection[Any], requests: Sequence[PageJobRequest]) -> list[EnqueueOutcome]:
    """Store jobs for many pages inside the caller's transaction, in one insert; outcomes in request order.

    A page whose job is already waiting (procrastinate's `queueing_lock`, held only while the job is `todo`)
    joins that job, and a page asked for twice in the batch gets one job. A job seen waiting here is fetched
    after this check, so after the event: joining it loses no change. If another transaction defers the same
    page between the check and the insert, Postgres refuses ours (`AlreadyEnqueued` here) and the caller's
    transaction must be retried (`in_deferral_transaction` does). The jobs are the ones procrastinate's own
    `defer_async` makes for this task with these locks.
    """
    locks = [page_lock(r.page_id) for r in requests]
    cur = await conn.execute(
        "SELECT queueing_lock FROM procrastinate_jobs WHERE status = 'todo' AND queueing_lock = ANY(%s)",
        (sorted(set(locks)),),
    )
    taken = {row[0] for row in await cur.fetchall()}
    outcomes: list[EnqueueOutcome] = []
    new: list[tuple[str, PageJobRequest]] = []
    for request, lock in zip(requests, locks, strict=True):
        if lock in taken:
            outcomes.append("coalesced")
            continue
        taken.add(lock)
        new.append((lock, request))
        outcomes.append("queued")
    if new:
        try:
            await conn.execute(
                _DEFER_PAGE_JOBS,
                {
                    "queue": PAGES_QUEUE,
                    "task": INDEX_PAGE,
                    "locks": [lock for lock, _ in new],
                    "page_ids": [r.page_id for _, r in new],
                    "types": [r.content_type for _, r in new],
                    "events": [r.event for _, r in new],
                },
            )
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == QUEUEING_LOCK_CONSTRAINT:
                raise pexc.AlreadyEnqueued("a page's job was deferred by another transaction meanwhile") from exc
            raise
    return outcomes


async def in_deferral_transaction(
    pool: AsyncConnectionPool, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]
) -> T:
    """Run `work` (which calls `defer_pages`) in one transaction; retried if another transaction deferred one
    of its pages between the check and the insert (the retry sees that job and joins it), or if Postgres chose
    it as a deadlock or serialization victim.

    Raises DatabaseUnavailable when Postgres cannot be reached.
    """
    for attempt in range(1, _DEFER_ATTEMPTS + 1):
        try:
            async with pool.connection() as conn, conn.transaction():
                return await work(conn)
        except (pexc.AlreadyEnqueued, psycopg.errors.TransactionRollback) as exc:
            if attempt == _DEFER_ATTEMPTS:
                raise
            log.info("deferral lost a race; retrying", extra={"error": type(exc).__name__, "attempt": attempt})
        except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
            raise DatabaseUnavailable(f"cannot store the jobs: {exc}") from exc
    raise AssertionError("unreachable")


async def enqueue_pages(pool: AsyncConnectionPool, requests: Sequence[PageJobRequest]) -> list[EnqueueOutcome]:
    """`defer_pages` in a transaction of its own. Raises DatabaseUnavailable."""
    return await in_deferral_transaction(pool, lambda conn: defer_pages(conn, requests))


async def recover_stalled(queue: procrastinate.App, *, stalled_after: float) -> int:
    """Retry jobs whose worker stopped sending heartbeats (killed, machine lost): nothing stays 'doing'."""
    manager = queue.job_manager
    stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after)
    recovered = 0
    for job in stalled:
        await manager.retry_job(job)
        recovered += 1
        log.warning("retrying stalled job", extra={"job_id": job.id, "task": job.task_name})
    await manager.prune_stalled_workers(seconds_since_heartbeat=stalled_after)
    return recovered


async def queue_counts(queue: procrastinate.App) -> dict[str, int]:
    """Jobs by status for `status` and `/metrics` (todo, doing, failed, succeeded...)."""
    counts: dict[str, int] = {}
    async with queue.connector.pool.connection() as conn:  # type: ignore[attr-defined]
        cur = await conn.execute("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY status")
        for status, n in await cur.fetchall():
            counts[str(status)] = int(n)
    return counts


async def refresh_queue_statistics(pool: AsyncConnectionPool) -> None:
    """ANALYZE the jobs table, so the planner knows how many jobs wait.

    Why: procrastinate's job fetch skips jobs whose page lock is held. Planned without statistics (a fresh
    database, or a table that grew from empty faster than autovacuum looks), it checks every waiting job's
    lock on each fetch: measured with 5,000 waiting jobs, 546 ms per fetch before ANALYZE, 0.14 ms after, and a
    first backfill indexing at a third of its speed. Backfill calls this as its queue grows; failures (e.g. a
    role without the privilege) only cost that speed, so they are logged, not raised.
    """
    try:
        async with pool.connection() as conn:
            await conn.execute("ANALYZE procrastinate_jobs")
    except psycopg.Error as exc:
        log.warning("could not ANALYZE procrastinate_jobs", extra={"error": str(exc)[:300]})


async def run_worker(queue: procrastinate.App, settings: Settings, *, name: str = "worker") -> None:
    """Run a worker until cancelled or signalled; `serve` runs one inside the API process."""
    options: dict[str, Any] = {
        "queues": [PAGES_QUEUE, MAINTENANCE_QUEUE],
        "concurrency": settings.worker_concurrency,
        "name": name,
        "install_signal_handlers": False,
        "update_heartbeat_interval": settings.worker_heartbeat_seconds,
        "stalled_worker_timeout": settings.worker_heartbeat_seconds * 3,
        "fetch_job_polling_interval": 2.0,
        "delete_jobs": "successful",
    }
    await recover_stalled(queue, stalled_after=settings.worker_heartbeat_seconds * 3)
    await queue.run_worker_async(**options)


async def run_worker_forever(queue: procrastinate.App, settings: Settings, *, name: str = "worker") -> None:
    """Run a worker until cancelled, restarting it (with jittered backoff) whenever it stops by itself.

    Procrastinate stops its worker when Postgres goes away (its listener fails, then unregistering fails too).
    Without a restart, `serve` would keep acknowledging jobs that nobody runs once Postgres is back, and a
    `worker` process would exit on a database failover. A worker that ran for a minute before failing starts
    its backoff afresh.
    """
    backoff = Backoff(base=1.0, cap=30.0)
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await run_worker(queue, settings, name=name)
            error = "stopped"
        except Exception as exc:  # CancelledError is a BaseException: shutdown goes through
            error = f"{type(exc).__name__}: {exc}"
        failures = 1 if time.monotonic() - started > 60 else failures + 1
        delay = max(0.5, backoff.delay(failures))
        log.error("worker stopped; restarting", extra={"worker": name, "error": error[:500], "retry_in": delay})
        await asyncio.sleep(delay)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
