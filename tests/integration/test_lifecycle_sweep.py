"""Page jobs that ended without handing their page on are swept by `recover_stalled` (worker start, every tick).

Reproduces the end state of a Postgres outage longer than the worker's drain: the drain cancelled the page job
inside `_store_failure`'s database retries, procrastinate recorded it `aborted`, no follow-up existed, and the
page stayed at its old version for ever. Real Postgres, procrastinate's own SQL functions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.jobs import recover_stalled_jobs
from app.queue import INDEX_PAGE, SWEEP_EVENT, PageJobRequest, enqueue_pages
from app.runtime import Runtime
from tests.conftest import make_settings


@pytest.fixture()
async def rt(db_url: str) -> AsyncIterator[Runtime]:
    runtime = await Runtime.open(make_settings(database_url=db_url, worker_heartbeat_seconds=1, job_max_attempts=1))
    try:
        yield runtime
    finally:
        await runtime.close()


async def _jobs(rt: Runtime) -> list[tuple[str, str, str | None]]:
    """(page id, status, event) of every page job, oldest first."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT args->>'page_id', status::text, args->>'event' FROM procrastinate_jobs WHERE task_name = %s "
            "ORDER BY id",
            (INDEX_PAGE,),
        )
        return [(row[0], row[1], row[2]) for row in await cur.fetchall()]


async def _end(rt: Runtime, page_id: str, status: str, *, page_status: str | None = None) -> None:
    """Run the page's waiting job to `status` the way procrastinate ends it (`procrastinate_finish_job_v1`),
    after recording the page's state as the job would have (`page_status`)."""
    async with rt.pool.connection() as conn:
        row = await (
            await conn.execute(
                "UPDATE procrastinate_jobs SET status = 'doing' WHERE status = 'todo' AND args->>'page_id' = %s "
                "RETURNING id",
                (page_id,),
            )
        ).fetchone()
        assert row is not None
        if page_status is not None:
            await conn.execute(
                "INSERT INTO cv_pages (page_id, content_type, status, version, chunk_count) "
                "VALUES (%s, 'page', %s, 1, 0)",
                (page_id, page_status),
            )
        await conn.execute(
            "SELECT procrastinate_finish_job_v1(%s, %s::procrastinate_job_status, false)", (row[0], status)
        )


async def test_aborted_page_job_without_follow_up_gets_one_and_is_removed(rt: Runtime) -> None:
    await enqueue_pages(rt.pool, [PageJobRequest("61", event="page_updated")])
    await _end(rt, "61", "aborted", page_status="indexed")
    assert await _jobs(rt) == [("61", "aborted", "page_updated")]

    assert await recover_stalled_jobs(rt) == 1
    assert await _jobs(rt) == [("61", "todo", SWEEP_EVENT)]
    # Swept once: the next run (the next tick) finds nothing, and the follow-up is not duplicated.
    assert await recover_stalled_jobs(rt) == 0
    assert await _jobs(rt) == [("61", "todo", SWEEP_EVENT)]


async def test_failed_page_job_of_a_page_not_recorded_failed_is_swept(rt: Runtime) -> None:
    """A job that ended `failed` without recording the page `failed` (e.g. `_store_failure` gave up while
    Postgres was unreachable) lost its page just the same."""
    await enqueue_pages(rt.pool, [PageJobRequest("62")])
    await _end(rt, "62", "failed", page_status="indexed")

    assert await recover_stalled_jobs(rt) == 1
    assert await _jobs(rt) == [("62", "todo", SWEEP_EVENT)]


async def test_final_page_failure_is_left_alone(rt: Runtime) -> None:
    """A genuine final failure records the page `failed` (reconciliation re-checks it): not swept."""
    await enqueue_pages(rt.pool, [PageJobRequest("63")])
    await _end(rt, "63", "failed", page_status="failed")

    assert await recover_stalled_jobs(rt) == 0
    assert await _jobs(rt) == [("63", "failed", None)]


async def test_aborted_job_whose_page_already_has_a_waiting_job_is_removed_without_a_second_job(rt: Runtime) -> None:
    await enqueue_pages(rt.pool, [PageJobRequest("64")])
    await _end(rt, "64", "aborted")
    await enqueue_pages(rt.pool, [PageJobRequest("64", event="page_updated")])  # newer event, waiting

    assert await recover_stalled_jobs(rt) == 0
    assert await _jobs(rt) == [("64", "todo", "page_updated")]


async def test_stalled_job_that_exhausted_its_attempts_is_not_revived_by_the_sweep(rt: Runtime) -> None:
    """The stalled hand-back records the lost attempt; at JOB_MAX_ATTEMPTS (1 here) the page ends `failed`
    with no follow-up. Its job row is deleted, so the sweep does not mistake it for a lost page."""
    await enqueue_pages(rt.pool, [PageJobRequest("65")])
    async with rt.pool.connection() as conn:
        dead: Any = await (
            await conn.execute(
                "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') RETURNING id"
            )
        ).fetchone()
        await conn.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s", (dead[0],))

    assert await recover_stalled_jobs(rt) == 1
    assert await _jobs(rt) == []
    state = await rt.store.page_state("65")
    assert state is not None and state.status == "failed", state
    assert await recover_stalled_jobs(rt) == 0
    assert await _jobs(rt) == []
