"""The webhook intake and batch deferral against real Postgres and procrastinate's real schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import procrastinate
import pytest
from procrastinate import exceptions as pexc

from app.errors import DatabaseUnavailable
from app.intake import Delivery, WebhookIntake
from app.queue import PageJobRequest, build_queue, enqueue_page, enqueue_pages
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


def _delivery(page: str, digest: str | None = None, event: str = "page_updated") -> Delivery:
    return Delivery(PageJobRequest(page, "page", event), digest or f"body:{page}:{event}")


async def test_concurrent_deliveries_share_transactions_and_get_their_own_outcome(pool: Any, queue: Any) -> None:
    intake = WebhookIntake(pool, queue, dedupe_window_seconds=300)
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
    intake = WebhookIntake(pool, queue, dedupe_window_seconds=300)
    assert await intake.submit(_delivery("7")) == "queued"
    assert await intake.submit(_delivery("7")) == "duplicate"
    assert await intake.submit(_delivery("7", "body:edit-2")) == "coalesced"
    await intake.aclose()
    assert len(await _jobs(pool)) == 1


async def test_without_dedupe_window_redeliveries_coalesce_and_nothing_is_recorded(pool: Any, queue: Any) -> None:
    intake = WebhookIntake(pool, queue, dedupe_window_seconds=0)
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
    intake = WebhookIntake(pool, queue, dedupe_window_seconds=300)
    assert await intake.submit(_delivery("9")) == "queued"
    async with pool.connection() as conn:
        await conn.execute("UPDATE procrastinate_jobs SET status = 'doing'")
    assert await intake.submit(_delivery("9", "body:edit-while-running")) == "queued"
    await intake.aclose()
    assert [status for status, _, _ in await _jobs(pool)] == ["doing", "todo"]


async def test_a_page_deferred_by_another_process_in_between_is_joined_after_a_retry(pool: Any, queue: Any) -> None:
    """The lock race: another process defers page 5 after our check, before our insert. Procrastinate's unique
    index refuses our insert, the transaction rolls back, and the retry sees the other job and joins it."""
    inserts: list[list[str]] = []
    original = queue.job_manager.batch_defer_jobs_async

    async def racing(jobs: list[Any], connection: Any = None) -> Any:
        inserts.append([job.queueing_lock for job in jobs])
        if len(inserts) == 1:
            await enqueue_page(queue, "5", event="from-another-process")  # its own connection, committed
        return await original(jobs, connection=connection)

    queue.job_manager.batch_defer_jobs_async = racing
    intake = WebhookIntake(pool, queue, dedupe_window_seconds=300)
    outcomes = await asyncio.gather(intake.submit(_delivery("5")), intake.submit(_delivery("6")))
    await intake.aclose()
    # ours (refused), the other process's, then our retry without page 5
    assert inserts == [["page:5", "page:6"], ["page:5"], ["page:6"]]
    assert sorted(outcomes) == ["coalesced", "queued"]
    jobs = await _jobs(pool)
    assert sorted(lock for _, lock, _ in jobs) == ["page:5", "page:6"]
    assert [args["event"] for _, lock, args in jobs if lock == "page:5"] == ["from-another-process"]
    async with pool.connection() as conn:  # both deliveries remembered, in the retried transaction only
        row = await (await conn.execute("SELECT count(*) FROM cv_deliveries")).fetchone()
    assert row is not None and row[0] == 2


async def test_a_failed_commit_fails_every_waiter_and_stores_nothing(pool: Any, queue: Any) -> None:
    async def broken(jobs: list[Any], connection: Any = None) -> Any:
        raise pexc.ConnectorException("connection lost")

    queue.job_manager.batch_defer_jobs_async = broken
    intake = WebhookIntake(pool, queue, dedupe_window_seconds=300)
    results = await asyncio.gather(*(intake.submit(_delivery(str(p))) for p in range(5)), return_exceptions=True)
    await intake.aclose()
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    assert await _jobs(pool) == []
    async with pool.connection() as conn:  # not remembered either: a retry of these deliveries is not a duplicate
        row = await (await conn.execute("SELECT count(*) FROM cv_deliveries")).fetchone()
    assert row is not None and row[0] == 0


async def test_batches_are_capped(pool: Any, queue: Any) -> None:
    intake = WebhookIntake(pool, queue, dedupe_window_seconds=300, max_batch=10)
    outcomes = await asyncio.gather(*(intake.submit(_delivery(str(p))) for p in range(1, 36)))
    await intake.aclose()
    assert outcomes == ["queued"] * 35
    assert intake.batches >= 4


async def test_enqueue_pages_keeps_request_order(pool: Any, queue: Any) -> None:
    await enqueue_page(queue, "2", event="earlier")
    outcomes = await enqueue_pages(
        pool, queue, [PageJobRequest("1", "page", "sync"), PageJobRequest("2"), PageJobRequest("1")]
    )
    assert outcomes == ["queued", "coalesced", "coalesced"]
    assert len(await _jobs(pool)) == 2
