"""The webhook intake and batch deferral against real Postgres and procrastinate's real schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import procrastinate
import psycopg
import pytest

from app import intake as intake_module
from app.errors import DatabaseUnavailable
from app.intake import Delivery, WebhookIntake
from app.queue import INDEX_PAGE, PAGES_QUEUE, PageJobRequest, defer_pages, enqueue_pages, page_lock
from app.tasks import build_queue
from tests.conftest import make_settings


@pytest.fixture()
async def queue(db_url: str) -> AsyncIterator[procrastinate.App]:
    app = build_queue(db_url, make_settings())
    async with app.open_async():
        yield app


async def _jobs(pool: Any) -> list[tuple[str, str, dict[str, Any]]]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status::text, queueing_lock, args FROM procrastinate_jobs ORDER BY id",
        )
        return [(row[0], row[1], row[2]) for row in await cur.fetchall()]


async def _defer_with_procrastinate(
    queue: procrastinate.App, page_id: str, *, content_type: str | None = None, event: str | None = None
) -> None:
    """A job deferred through procrastinate's own Python API, as another process using it would."""
    lock = page_lock(page_id)
    deferrer = queue.configure_task(INDEX_PAGE, queue=PAGES_QUEUE, lock=lock, queueing_lock=lock)
    await deferrer.defer_async(page_id=page_id, content_type=content_type, event=event)


def _delivery(page: str, digest: str | None = None, event: str = "page_updated") -> Delivery:
    return Delivery(PageJobRequest(page, "page", event), digest or f"body:{page}:{event}")


async def test_concurrent_deliveries_share_transactions_and_get_their_own_outcome(pool: Any, queue: Any) -> None:
    intake = WebhookIntake(pool, dedupe_window_seconds=300)
    deliveries = [_delivery(str(page)) for page in range(1, 101)]
    deliveries += [_delivery("1", "body:other-event-for-1")]  # same page, new delivery: joins page 1's job
    deliveries += [_delivery("2")]  # the very same delivery as page 2's: a duplicate
    outcomes = await asyncio.gather(*(intake.submit(d) for d in deliveries))
    await intake.aclose()

    assert outcomes[:100] == ["queued"] * 100
    assert outcomes[100:] == ["coalesced", "duplicate"]
    assert intake.batches < 10  # 102 requests, a handful of commits
    jobs = await _jobs(pool)
    assert sorted(lock for _, lock, _ in jobs) == sorted(f"page:{p}" for p in range(1, 101))
    assert all(status == "todo" for status, _, _ in jobs)
    assert {args["page_id"] for _, _, args in jobs} == {str(p) for p in range(1, 101)}


async def test_redelivery_within_window_is_duplicate_but_new_event_for_waiting_page_coalesces(
    pool: Any, queue: Any
) -> None:
    intake = WebhookIntake(pool, dedupe_window_seconds=300)
    assert await intake.submit(_delivery("7")) == "queued"
    assert await intake.submit(_delivery("7")) == "duplicate"
    assert await intake.submit(_delivery("7", "body:edit-2")) == "coalesced"
    await intake.aclose()
    assert len(await _jobs(pool)) == 1


async def test_without_dedupe_window_redeliveries_coalesce_and_nothing_is_recorded(pool: Any, queue: Any) -> None:
    intake = WebhookIntake(pool, dedupe_window_seconds=0)
    assert await asyncio.gather(intake.submit(_delivery("7")), intake.submit(_delivery("7"))) == [
        "queued",
        "coalesced",
    ]
    await intake.aclose()
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM cv_deliveries")).fetchone()
    assert row is not None and row[0] == 0


async def test_a_page_whose_job_runs_gets_a_new_job(pool: Any, queue: Any) -> None:
    """Only a *waiting* job is joined: one already running may have fetched the page before this event."""
    intake = WebhookIntake(pool, dedupe_window_seconds=300)
    assert await intake.submit(_delivery("9")) == "queued"
    async with pool.connection() as conn:
        await conn.execute("UPDATE procrastinate_jobs SET status = 'doing'")
    assert await intake.submit(_delivery("9", "body:edit-while-running")) == "queued"
    await intake.aclose()
    assert [status for status, _, _ in await _jobs(pool)] == ["doing", "todo"]


async def test_a_page_deferred_by_another_transaction_in_between_is_joined_after_a_retry(pool: Any, queue: Any) -> None:
    """The lock race, for real: another transaction defers page 5 but has not committed when our batch checks,
    so ours inserts too and waits on procrastinate's unique index. When the other commits, ours is refused,
    rolls back and retries; the retry sees the other job and joins it. Nothing is lost or doubled."""
    intake = WebhookIntake(pool, dedupe_window_seconds=300)
    async with pool.connection() as other, other.transaction():
        assert await defer_pages(other, [PageJobRequest("5", "page", "from-another-process")]) == ["queued"]
        ours = asyncio.gather(intake.submit(_delivery("5")), intake.submit(_delivery("6")))
        await _until_a_backend_waits_on_a_lock(pool)  # ours: blocked on the other's uncommitted job for page 5
        assert not ours.done()
    outcomes = await ours
    await intake.aclose()
    assert outcomes == ["coalesced", "queued"]
    jobs = await _jobs(pool)
    assert sorted(lock for _, lock, _ in jobs) == ["page:5", "page:6"]
    assert [args["event"] for _, lock, args in jobs if lock == "page:5"] == ["from-another-process"]
    async with pool.connection() as conn:  # both deliveries remembered, by the retried transaction
        row = await (await conn.execute("SELECT count(*) FROM cv_deliveries")).fetchone()
    assert row is not None and row[0] == 2


async def test_a_failed_commit_fails_every_waiter_and_stores_nothing(
    pool: Any, queue: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(conn: Any, requests: Any) -> Any:
        await conn.execute("INSERT INTO cv_deliveries (digest) VALUES ('written-then-rolled-back')")
        raise psycopg.OperationalError("connection lost")

    monkeypatch.setattr(intake_module, "defer_pages", broken)
    intake = WebhookIntake(pool, dedupe_window_seconds=300)
    results = await asyncio.gather(*(intake.submit(_delivery(str(p))) for p in range(5)), return_exceptions=True)
    await intake.aclose()
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    assert await _jobs(pool) == []
    async with pool.connection() as conn:  # nothing remembered: a retry of these deliveries is not a duplicate
        row = await (await conn.execute("SELECT count(*) FROM cv_deliveries")).fetchone()
    assert row is not None and row[0] == 0


async def test_jobs_match_what_procrastinate_makes(pool: Any, queue: Any) -> None:
    """The batch path builds procrastinate's job rows in SQL; they must equal the ones its Python API makes."""
    await _defer_with_procrastinate(queue, "1", content_type="blogpost", event="page_created")
    await enqueue_pages(pool, [PageJobRequest("2", "blogpost", "page_created"), PageJobRequest("3")])
    async with pool.connection() as conn:
        cur = await conn.execute(
            """SELECT queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at, status::text
               FROM procrastinate_jobs ORDER BY id"""
        )
        rows = await cur.fetchall()
    by_python, by_batch, without_type = rows
    assert by_batch[:3] == by_python[:3] and by_batch[6:] == by_python[6:]
    assert by_batch[3] == by_batch[4] == "page:2" and by_python[3] == by_python[4] == "page:1"
    assert by_python[5] == {"page_id": "1", "content_type": "blogpost", "event": "page_created"}
    assert by_batch[5] == {"page_id": "2", "content_type": "blogpost", "event": "page_created"}
    assert without_type[5] == {"page_id": "3", "content_type": None, "event": None}


async def test_batches_are_capped(pool: Any, queue: Any) -> None:
    intake = WebhookIntake(pool, dedupe_window_seconds=300, max_batch=10)
    outcomes = await asyncio.gather(*(intake.submit(_delivery(str(p))) for p in range(1, 36)))
    await intake.aclose()
    assert outcomes == ["queued"] * 35
    assert intake.batches >= 4


async def test_enqueue_pages_keeps_request_order(pool: Any, queue: Any) -> None:
    await _defer_with_procrastinate(queue, "2", event="earlier")
    requests = [PageJobRequest("1", "page", "sync"), PageJobRequest("2"), PageJobRequest("1")]
    outcomes = await enqueue_pages(pool, requests)
    assert outcomes == ["queued", "coalesced", "coalesced"]
    assert len(await _jobs(pool)) == 2


async def _until_a_backend_waits_on_a_lock(pool: Any, timeout: float = 30.0) -> None:
    """Return once some transaction of this database waits on a lock (what the race test sets up), polling
    pg_stat_activity instead of sleeping for a guessed time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with pool.connection() as conn:  # a transaction per look: pg_stat_activity is a per-transaction snapshot
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
        if row and row[0] > 0:
            return
        assert asyncio.get_running_loop().time() < deadline, "no transaction ever waited on the page's lock"
        await asyncio.sleep(0.02)
