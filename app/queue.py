"""The durable job queue: procrastinate on the same Postgres as the vectors.

Why procrastinate: it keeps jobs in Postgres (a 202 means the job is committed), and its two locks are exactly
our page semantics. `queueing_lock=page:<id>` lets at most one *waiting* job exist per page, so a burst of
events for a page collapses into one job; `lock=page:<id>` lets at most one job per page *run* at a time, on
any worker process or machine.

Retries are NOT procrastinate's. Its retry puts the failed row back to `todo`, which violates the unique
`queueing_lock` index (procrastinate `sql/schema.sql`, `procrastinate_jobs_queueing_lock_idx_v1`) whenever a
newer job for the page already waits: the failed job then stays `doing` for ever, holding the page's `lock`,
and the page never updates again. Instead a failed page job records the failure and defers a *follow-up* job
through `defer_pages`, the deferral every other event uses, which joins a waiting job instead of colliding
with it (`plan_retry`: exponential backoff with full jitter, `Retry-After` honoured, permanent errors never
retried); then the failed job simply ends. Jobs of a worker that died mid-job (no heartbeat) are handed back
the same way, one job at a time (`recover_stalled`).

Tasks are declared here (`task`), by the modules `app.tasks` lists; `app.tasks` builds the procrastinate App
that registers them and runs the worker, which hands each task the process's `Runtime`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import procrastinate
import psycopg
from procrastinate import exceptions as pexc
from procrastinate.jobs import Job, Status
from procrastinate.manager import QUEUEING_LOCK_CONSTRAINT
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from app.config import Settings
from app.errors import DatabaseUnavailable, PermanentError, RetryableError, ServiceFault
from app.retry import Backoff

log = logging.getLogger(__name__)

PAGES_QUEUE = "pages"
MAINTENANCE_QUEUE = "maintenance"
INDEX_PAGE = "cv:index_page"
RECONCILE = "cv:reconcile"

#: Our tasks' names carry this prefix in the jobs table (`cv:index_page`).
TASK_NAMESPACE = "cv"
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task of ours as declared with `task`: the function, procrastinate's options, cron options."""

    func: Callable[..., Awaitable[Any]]
    options: dict[str, Any]
    periodic: dict[str, Any] | None
    #: The function takes the job's `JobContext` after the runtime: `func(rt, context, **job_args)`.
    pass_context: bool


_TASK_SPECS: list[TaskSpec] = []


def task(
    *, name: str, periodic: dict[str, Any] | None = None, pass_context: bool = False, **options: Any
) -> Callable[[F], F]:
    """Declare a task of ours: `name` (registered as `cv:<name>`), procrastinate's `task` options (queue,
    lock...), and `periodic` ones for a cron task. The function is an `async def f(rt, **job_args)` (or
    `f(rt, context, **job_args)` with `pass_context`): `app.tasks.build_queue` registers a wrapper that takes
    the process's `Runtime` from the job's context. The decorated function is returned unchanged, so it can
    be called directly with a runtime.

    Why not a module-level procrastinate `Blueprint`: `App.add_tasks_from` renames the blueprint's Task objects
    in place, so the second App built in one process (tests, a CLI command beside a worker) registered
    `cv:cv:index_page`, and its jobs could never run.
    """

    def declare(func: F) -> F:
        options["name"] = f"{TASK_NAMESPACE}:{name}"
        _TASK_SPECS.append(TaskSpec(func, options, periodic, pass_context))
        return func

    return declare


def declared_tasks() -> tuple[TaskSpec, ...]:
    """Every task declared so far (by the modules imported so far: `app.tasks.TASK_MODULES` lists them)."""
    return tuple(_TASK_SPECS)


EnqueueOutcome = Literal["queued", "coalesced"]
#: Tries of a batch deferral that lost a race for a page lock (or a deadlock) to another transaction.
_DEFER_ATTEMPTS = 5
T = TypeVar("T")


def plan_retry(exc: BaseException, *, attempts: int, settings: Settings, rng: Backoff | None = None) -> float | None:
    """Seconds until a failed page job's follow-up runs, or None when the failure is final.

    `attempts` counts the page's failed attempts so far, this one included (`cv_pages.attempts`). Final when the
    error is a page-level permanent one (`PermanentError`: a 403 for the page, malformed content) or
    `JOB_MAX_ATTEMPTS` is reached. Never final for a `ServiceFault` (401, a missing model, a misconfiguration):
    nothing is wrong with the page, and once an operator fixes the service the page must update by itself, so
    it is retried for as long as the fault lasts, at most RETRY_MAX_SECONDS apart (a final failure would delete
    the page's rows and leave nothing to retry it). Otherwise the delay is full-jitter exponential backoff,
    uniform(0, min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2**(attempts-1))) (AWS Architecture Blog,
    "Exponential Backoff and Jitter"), or the server's `Retry-After` when it gave one (RFC 9110 section
    10.2.3), capped at RETRY_MAX_SECONDS.
    """
    service_fault = isinstance(exc, ServiceFault)
    if not service_fault and (isinstance(exc, PermanentError) or attempts >= settings.job_max_attempts):
        return None
    backoff = rng or Backoff(base=settings.retry_base_seconds, cap=settings.retry_max_seconds)
    retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
    return max(backoff.delay(attempts, retry_after), 0.05)


def page_lock(page_id: str) -> str:
    return f"page:{page_id}"


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
                   %(not_before)s::timestamptz)::procrastinate_job_to_defer_v1
        FROM unnest(%(locks)s::text[], %(page_ids)s::text[], %(types)s::text[], %(events)s::text[])
             AS j(lock, page_id, content_type, event)
        ORDER BY j.lock
    )))
"""


#: Joining a waiting job when the caller wants it to run no earlier than some time (a retry's backoff): the
#: waiting job is pushed back to that time, never brought forward. `status = 'todo'` is re-checked under the row
#: lock, so a job a worker fetched meanwhile is left alone (and the page gets a job of its own).
_JOIN_NOT_BEFORE = """
    UPDATE procrastinate_jobs SET scheduled_at = GREATEST(COALESCE(scheduled_at, now()), %(not_before)s)
    WHERE status = 'todo' AND queueing_lock = ANY(%(locks)s)
    RETURNING queueing_lock
"""


async def defer_pages(
    conn: psycopg.AsyncConnection[Any],
    requests: Sequence[PageJobRequest],
    *,
    not_before: dt.datetime | None = None,
) -> list[EnqueueOutcome]:
    """Store jobs for many pages inside the caller's transaction, in one insert; outcomes in request order.

    A page whose job is already waiting (procrastinate's `queueing_lock`, held only while the job is `todo`)
    joins that job, and a page asked for twice in the batch gets one job. A job seen waiting here is fetched
    after this check, so after the event: joining it loses no change. If another transaction defers the same
    page between the check and the insert, Postgres refuses ours (`AlreadyEnqueued` here) and the caller's
    transaction must be retried (`in_deferral_transaction` does). The jobs are the ones procrastinate's own
    `defer_async` makes for this task with these locks (`schedule_at` included).

    `not_before` (a retry's backoff): new jobs are scheduled then, and a waiting job that is joined runs no
    earlier than then, so a failing page is not hammered even when newer events keep arriving for it.
    """
    locks = [page_lock(r.page_id) for r in requests]
    if not_before is None:
        cur = await conn.execute(
            "SELECT queueing_lock FROM procrastinate_jobs WHERE status = 'todo' AND queueing_lock = ANY(%s)",
            (sorted(set(locks)),),
        )
    else:
        cur = await conn.execute(_JOIN_NOT_BEFORE, {"locks": sorted(set(locks)), "not_before": not_before})
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
                    "not_before": not_before,
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
    """Run `work` (which calls `defer_pages`) in one transaction; retried at once (tenacity, up to
    `_DEFER_ATTEMPTS` tries) if another transaction deferred one of its pages between the check and the
    insert (the retry sees that job and joins it), or if Postgres chose it as a deadlock or serialization
    victim; after the last try that error itself goes up.

    Raises DatabaseUnavailable when Postgres cannot be reached.
    """
    policy = AsyncRetrying(
        retry=retry_if_exception_type((pexc.AlreadyEnqueued, *ROLLBACK_VICTIMS)),
        stop=stop_after_attempt(_DEFER_ATTEMPTS),
        before_sleep=_log_lost_race,
        reraise=True,  # the last AlreadyEnqueued / TransactionRollback itself, not tenacity's RetryError
    )
    result: T = await policy(_in_transaction, pool, work)
    return result


#: SQLSTATE class 40 (transaction rollback) as psycopg 3 raises it: `DeadlockDetected` (40P01) and
#: `SerializationFailure` (40001) are their own classes, subclasses of OperationalError but NOT of
#: `TransactionRollback` (checked on psycopg 3.3), so both are named: a victim is retried, never reported as
#: "Postgres unavailable" (found by a reviewer: a deadlock failed a page job as an outage).
ROLLBACK_VICTIMS: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.TransactionRollback,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
)


async def _in_transaction(pool: AsyncConnectionPool, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
    try:
        async with pool.connection() as conn, conn.transaction():
            return await work(conn)
    except ROLLBACK_VICTIMS:
        raise  # a deadlock or serialization victim (an OperationalError too): retried, not "unavailable"
    except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
        raise DatabaseUnavailable(f"cannot store the jobs: {exc}") from exc


def _log_lost_race(state: RetryCallState) -> None:
    failure = state.outcome.exception() if state.outcome is not None else None
    log.info("deferral lost a race; retrying", extra={"error": type(failure).__name__, "attempt": state.attempt_number})


async def enqueue_pages(pool: AsyncConnectionPool, requests: Sequence[PageJobRequest]) -> list[EnqueueOutcome]:
    """`defer_pages` in a transaction of its own. Raises DatabaseUnavailable."""
    return await in_deferral_transaction(pool, lambda conn: defer_pages(conn, requests))


#: Hands a stalled page job's page to a follow-up, on the recovery's connection and transaction (`app.jobs`).
StalledPageHandler = Callable[[psycopg.AsyncConnection[Any], Job], Awaitable[None]]

_LOCK_STALLED_JOB = "SELECT id FROM procrastinate_jobs WHERE id = %s AND status = 'doing' FOR UPDATE"
#: procrastinate's own end-of-job function (`sql/schema.sql`): `aborted`, and the row deleted. Why deleted: an
#: `aborted` page job left in the table means "ended without handing its page on", which `sweep_ended_page_jobs`
#: repairs; this one has handed its page on (or, when the page reached JOB_MAX_ATTEMPTS, must not be retried).
_ABORT_JOB = "SELECT procrastinate_finish_job_v1(%s, 'aborted'::procrastinate_job_status, true)"
#: Page jobs swept per run; the next run (a minute later, the tick) takes the rest.
SWEEP_BATCH = 500
#: Page jobs that ended without handing their page on: `aborted` (cancelled mid-job, e.g. by the drain after
#: Postgres went away, before a follow-up could be stored), or `failed` while the page is not recorded `failed`
#: (a genuine final failure records the page `failed` first, in the transaction that decides it; see
#: `app.jobs`). `superseded`: a job of the page waits or runs, and re-reads the page after this one ended.
#: The two lookups use procrastinate's partial unique indexes on `queueing_lock` (todo) and `lock` (doing).
_ENDED_PAGE_JOBS = """
    SELECT j.id, j.lock, j.args->>'page_id', j.args->>'content_type',
           EXISTS (SELECT 1 FROM procrastinate_jobs w WHERE w.status = 'todo' AND w.queueing_lock = j.lock)
           OR EXISTS (SELECT 1 FROM procrastinate_jobs w WHERE w.status = 'doing' AND w.lock = j.lock)
    FROM procrastinate_jobs j LEFT JOIN cv_pages p ON p.page_id = j.args->>'page_id'
    WHERE j.task_name = %(task)s
      AND (j.status = 'aborted' OR (j.status = 'failed' AND p.status IS DISTINCT FROM 'failed'))
    ORDER BY j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
"""
#: Event name of the follow-ups the sweep defers (logs only).
SWEEP_EVENT = "retry_ended"


async def recover_stalled(queue: procrastinate.App, *, stalled_after: float, hand_back_page: StalledPageHandler) -> int:
    """Hand back the jobs of workers that stopped sending heartbeats (killed, machine lost); returns how many.

    Never raises: it runs before a worker starts and in the periodic tick, and one bad job (or Postgres
    hiccup) must not keep a worker from starting or the tick from its other work; failures are logged and the
    next run tries again. Each job is handled in a transaction of its own:

    * a page job is NOT retried in place (procrastinate's `retry_job` would collide with a waiting job of the
      same page on the `queueing_lock` index): `hand_back_page` records the lost attempt and defers a
      follow-up through `defer_pages`, which joins a waiting job if there is one, and the stalled job ends as
      `aborted` and is deleted (its page is handed on), all in one transaction;
    * any other job (the tick, a reconciliation) is retried by procrastinate, or ended as `aborted` when a
      newer job with its queueing lock already waits (that one does the same work);
    * then page jobs that ended without handing their page on are swept (`sweep_ended_page_jobs`).

    "Stalled" is procrastinate's rule (`JobManager.get_stalled_jobs`): `doing` on a worker whose heartbeat is
    older than `stalled_after` seconds, or on no worker at all.
    """
    manager = queue.job_manager
    pool: AsyncConnectionPool = queue.connector.pool  # type: ignore[attr-defined]
    try:
        stalled = list(await manager.get_stalled_jobs(seconds_since_heartbeat=stalled_after))
    except Exception as exc:
        log.error("could not list stalled jobs", extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
        return 0
    recovered = 0
    for job in stalled:
        try:
            if job.task_name == INDEX_PAGE:
                done = await in_deferral_transaction(pool, _hand_back_work(job, hand_back_page))
            else:
                done = await _retry_or_abort(manager, job)
        except Exception as exc:
            log.error(
                "could not recover a stalled job",
                extra={"job_id": job.id, "task": job.task_name, "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
            continue
        if done:
            recovered += 1
            log.warning("recovered stalled job", extra={"job_id": job.id, "task": job.task_name})
    try:
        recovered += await in_deferral_transaction(pool, sweep_ended_page_jobs)
    except Exception as exc:
        log.error("could not sweep ended page jobs", extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
    try:
        await manager.prune_stalled_workers(seconds_since_heartbeat=stalled_after)
    except Exception as exc:
        log.error("could not prune stalled workers", extra={"error": f"{type(exc).__name__}: {exc}"[:500]})
    return recovered


async def sweep_ended_page_jobs(conn: psycopg.AsyncConnection[Any]) -> int:
    """Hand on the pages of page jobs that ended `aborted`, or `failed` while their page is not recorded
    `failed`, and delete those job rows, in the caller's transaction; returns how many follow-ups it deferred.

    Why: a job cancelled while it could not store its follow-up (Postgres away for longer than the worker's
    20 s drain: the drain cancels it inside `app.jobs._store_failure`'s database retries) ends `aborted` with
    nothing queued, and the page would stay at its old version with no job ever re-running it. A page job of
    ours never ends that way on purpose: a failure that is not final defers its follow-up and ends normally; a
    final one records the page `failed` (left alone here: reconciliation re-checks such pages); a stalled one
    is handed back and deleted (`recover_stalled`). So whatever else ends `aborted` or `failed` lost its page.

    Per page lock, only the newest such job counts: if a job of the page waits or runs (`superseded`), it
    re-reads the page after the ended one, so the rows are only deleted; otherwise one follow-up is deferred
    through `defer_pages` (joining a waiting job: procrastinate `queueing_lock`). The rows are deleted in the
    same transaction, so a job is never swept twice, and `FOR UPDATE ... SKIP LOCKED` keeps two concurrent
    sweeps (two workers starting) off the same rows. A page whose newer job already succeeded (and was deleted)
    is indexed once more, finding it unchanged: harmless. At most `SWEEP_BATCH` rows per call.
    """
    cur = await conn.execute(_ENDED_PAGE_JOBS, {"task": INDEX_PAGE, "limit": SWEEP_BATCH})
    rows = await cur.fetchall()
    if not rows:
        return 0
    newest: dict[str, tuple[int, PageJobRequest, bool]] = {}
    for job_id, lock, page_id, content_type, superseded in rows:
        if page_id is None:
            continue
        if lock not in newest or job_id > newest[lock][0]:
            newest[lock] = (job_id, PageJobRequest(page_id, content_type, SWEEP_EVENT), bool(superseded))
    requests = [request for _, request, superseded in newest.values() if not superseded]
    if requests:
        await defer_pages(conn, requests)
    await conn.execute("DELETE FROM procrastinate_jobs WHERE id = ANY(%s)", ([row[0] for row in rows],))
    if requests:
        log.warning(
            "page jobs ended without handing their page on; follow-ups deferred",
            extra={"pages": [r.page_id for r in requests][:50], "count": len(requests), "swept": len(rows)},
        )
    return len(requests)


def _hand_back_work(
    job: Job, hand_back_page: StalledPageHandler
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[bool]]:
    async def work(conn: psycopg.AsyncConnection[Any]) -> bool:
        """One stalled page job, in the caller's transaction: False when it is no longer `doing` (another
        recovery got it, or its worker was only slow and finished it)."""
        row = await (await conn.execute(_LOCK_STALLED_JOB, (job.id,))).fetchone()
        if row is None:
            return False
        await hand_back_page(conn, job)
        await conn.execute(_ABORT_JOB, (job.id,))
        return True

    return work


async def _retry_or_abort(manager: Any, job: Job) -> bool:
    try:
        await manager.retry_job(job)
    except pexc.UniqueViolation as exc:
        if exc.constraint_name != QUEUEING_LOCK_CONSTRAINT:
            raise
        assert job.id is not None
        await manager.finish_job_by_id_async(job.id, Status.ABORTED, delete_job=False)
    return True


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


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
