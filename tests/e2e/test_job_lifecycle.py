"""The job lifecycle cannot wedge: real service processes, real Postgres, the fake Confluence's faults.

A page must never stop updating (issue 10, part 1). procrastinate's own retry put a failed job back to `todo`,
which violates its unique `queueing_lock` index when a newer job for the page waits: the failed job stayed
`doing` for ever, holding the page's `lock`, and the waiting job never ran. These tests drive exactly those
interleavings (retryable failures, permanent failures, SIGKILLed workers, new events) and check that the page
ends indexed at the latest version, with no job `doing` without a live worker and none `todo` for ever.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.vector_store import VectorStore
from tests.conftest import make_settings
from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, running, wait_until
from tests.e2e.test_faults import assert_indexed_exactly_once, jobs_by_status
from tests.e2e.test_pipeline_e2e import api_queue_idle, indexed
from tests.fakes.confluence import FakeConfluence
from tests.integration.test_vector_store import make_page, write


def page_jobs(db: Db, page_id: str) -> list[tuple[int, str, Any]]:
    """(id, status, worker's heartbeat age in seconds or None) of every job of one page."""
    with psycopg.connect(db.url) as conn:
        rows = conn.execute(
            """SELECT j.id, j.status::text, extract(epoch FROM now() - w.last_heartbeat)
               FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id
               WHERE j.queue_name = 'pages' AND j.args ->> 'page_id' = %s ORDER BY j.id""",
            (page_id,),
        ).fetchall()
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


def job_doing(db: Db, page_id: str) -> bool:
    return any(status == "doing" for _, status, _ in page_jobs(db, page_id))


def job_waiting(db: Db, page_id: str) -> bool:
    return any(status == "todo" for _, status, _ in page_jobs(db, page_id))


def edit(confluence: FakeConfluence, page_id: str, seed: str) -> int:
    return confluence.put_page(page_id, title=f"Page {page_id}", body=page_body(2, 2, seed=seed), space_key="ENG")


# --- the exact reproduction ---------------------------------------------------------------------------------


def test_retryable_failure_while_a_newer_job_waits_does_not_freeze_the_page(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, db: Db
) -> None:
    """Job A is mid-fetch, job B (a newer event) waits behind A's page lock, then A's fetch answers 429.
    Before the fix, procrastinate's retry of A hit the queueing-lock index: A stayed `doing` for ever and B
    never ran. Now A records the failure and its follow-up joins B, which indexes the newer version."""
    pid = "5101"
    edit(confluence, pid, "v1")
    env = {**env, "CONFLUENCE_MAX_RETRIES": "0"}  # one 429 fails the job (no in-call retry)
    with running(Api(env, tmp_path / "api.log")) as api:
        assert isinstance(api, Api)
        confluence.slowness = 1.5  # A's first request is in flight long enough for B to be deferred
        assert api.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202
        wait_until(lambda: job_doing(db, pid), timeout=20, what="job A running")
        latest = edit(confluence, pid, "v2")
        assert api.webhook({"event": "page_updated", "page": {"id": pid}}).status_code == 202
        assert job_waiting(db, pid), page_jobs(db, pid)
        confluence.fail_next(1, status=429, retry_after=0.2, path_contains="/pages/")
        confluence.slowness = 0.0
        wait_until(
            lambda: indexed(db, pid, latest) and api_queue_idle(db),
            timeout=40,
            what=f"page indexed at v{latest}, queue idle; jobs={page_jobs(db, pid)}; logs:\n{api.logs()[-3000:]}",
        )
    assert_indexed_exactly_once(db, pid, latest)
    state = db.state(pid)
    assert state is not None and state["attempts"] == 0 and state["last_error"] is None, state
    assert jobs_by_status(db).get("failed", 0) == 0


# --- the page's state on real Postgres (no service process) ------------------------------------------------


async def test_permanent_failure_removes_the_page_rows_and_keeps_the_reason(pool: Any) -> None:
    """A 403 (or any permanent error) must not leave the page's old vectors searchable."""
    store = VectorStore(pool, "confluence")
    await write(store, make_page(1), ["alpha", "beta"])
    record = await store.record_failure("42", "ConfluenceAuthError: 403", permanent=True, max_attempts=12)
    assert record.failed and record.removed == 2 and record.attempts == 1
    assert await store.count_rows("42") == 0
    state = await store.page_state("42")
    assert state is not None and state.status == "failed" and state.chunk_count == 0
    assert state.last_error == "ConfluenceAuthError: 403" and state.reason == "permanent error"


async def test_attempts_carry_across_jobs_until_max_then_failed_without_rows(pool: Any) -> None:
    store = VectorStore(pool, "confluence")
    await write(store, make_page(1), ["alpha"])
    first = await store.record_failure("42", "ConfluenceUnavailable: 429", permanent=False, max_attempts=3)
    second = await store.record_failure("42", "ConfluenceUnavailable: 429", permanent=False, max_attempts=3)
    assert (first.attempts, first.failed, second.attempts, second.failed) == (1, False, 2, False)
    assert await store.count_rows("42") == 1, "while retrying, the page stays searchable"
    state = await store.page_state("42")
    assert state is not None and state.status == "indexed" and state.attempts == 2
    third = await store.record_failure("42", "ConfluenceUnavailable: 429", permanent=False, max_attempts=3)
    assert third.failed and third.attempts == 3 and await store.count_rows("42") == 0
    state = await store.page_state("42")
    assert state is not None and state.status == "failed" and state.reason == "gave up after 3 attempts"
    # A new event for a failed page gets a fresh set of attempts (and shows as pending while retrying).
    again = await store.record_failure("42", "ConfluenceUnavailable: 503", permanent=False, max_attempts=3)
    assert (again.attempts, again.failed) == (1, False)
    state = await store.page_state("42")
    assert state is not None and state.status == "pending"


async def test_success_clears_the_failure_count(pool: Any) -> None:
    store = VectorStore(pool, "confluence")
    await write(store, make_page(1), ["alpha"])
    await store.record_failure("42", "EmbeddingUnavailable: down", permanent=False, max_attempts=3)
    await store.clear_failure("42")
    state = await store.page_state("42")
    assert state is not None and state.attempts == 0 and state.last_error is None and state.status == "indexed"


@pytest.mark.parametrize("status", ["deleted", "skipped"])
async def test_stale_job_cannot_resurrect_a_page_deleted_or_skipped_at_a_newer_version(pool: Any, status: str) -> None:
    store = VectorStore(pool, "confluence")
    await write(store, make_page(1), ["one"])
    assert await store.delete_page("42", status=status, reason="trashed or restricted", page=make_page(3)) == 1
    result, _ = await write(store, make_page(2), ["two"])  # a job that fetched v2 before the change
    assert not result.written
    assert await store.count_rows("42") == 0
    state = await store.page_state("42")
    assert state is not None and state.status == status and state.version == 3


async def test_stale_delete_does_not_remove_a_newer_version(pool: Any) -> None:
    store = VectorStore(pool, "confluence")
    await write(store, make_page(3), ["three"])
    assert await store.delete_page("42", status="skipped", reason="restricted", page=make_page(2)) == 0
    assert await store.count_rows("42") == 1
    state = await store.page_state("42")
    assert state is not None and state.status == "indexed" and state.version == 3


async def test_stalled_page_job_with_a_waiting_job_is_handed_over_and_the_worker_still_starts(db_url: str) -> None:
    """The worker that ran page 77's job died; a newer job for page 77 waits. Before, recovery retried the
    stalled job in place, hit the queueing-lock index and raised before the worker started. Now the stalled
    job ends `aborted`, the waiting job covers the page, the other stalled job (page 78) gets a follow-up."""
    from app.jobs import recover_stalled_jobs
    from app.queue import PageJobRequest, enqueue_pages
    from app.runtime import Runtime

    rt = await Runtime.open(make_settings(database_url=db_url, worker_heartbeat_seconds=1))
    try:
        await enqueue_pages(rt.pool, [PageJobRequest("77"), PageJobRequest("78")])
        async with rt.pool.connection() as conn:
            dead = await (
                await conn.execute(
                    "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') RETURNING id"
                )
            ).fetchone()
            assert dead is not None
            await conn.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s", (dead[0],))
        await enqueue_pages(rt.pool, [PageJobRequest("77", event="page_updated")])  # waits behind the stalled one

        assert await recover_stalled_jobs(rt) == 2
        async with rt.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT args->>'page_id', status::text FROM procrastinate_jobs ORDER BY args->>'page_id', id"
                )
            ).fetchall()
        assert rows == [("77", "aborted"), ("77", "todo"), ("78", "aborted"), ("78", "todo")], rows
        state = await rt.store.page_state("77")
        assert state is not None and state.attempts == 1 and state.last_error is not None
    finally:
        await rt.close()


# --- procrastinate's schema ----------------------------------------------------------------------------------


async def test_schema_version_recorded_on_a_fresh_database(db_url: str) -> None:
    from app.queue_schema import STATE_KEY, latest_migration

    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT value->>'migration' FROM cv_state WHERE key = %s", (STATE_KEY,)).fetchone()
    assert row == (latest_migration(),)


async def test_upgrade_applies_the_pending_procrastinate_migrations(db_url: str) -> None:
    """A database whose procrastinate schema predates the last migration (03.04.00: `procrastinate_retry_job_v2`
    and the `retried` event) is migrated at start-up."""
    from app.db import migrate
    from app.queue_schema import STATE_KEY, installed_migrations, latest_migration

    older = [m.name for m in installed_migrations() if not m.name.startswith("03.04.00")][-1]
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Undo 03.04.00 as far as it can be undone, and record the version before it.
        conn.execute("DROP FUNCTION procrastinate_retry_job_v2")
        conn.execute("ALTER TYPE procrastinate_job_event_type RENAME VALUE 'retried' TO 'retried_before_upgrade'")
        conn.execute(
            "UPDATE cv_state SET value = jsonb_build_object('migration', %s::text) WHERE key = %s", (older, STATE_KEY)
        )
    await migrate(db_url, make_settings())
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT to_regproc('procrastinate_retry_job_v2') IS NOT NULL").fetchone() == (True,)
        row = conn.execute("SELECT value->>'migration' FROM cv_state WHERE key = %s", (STATE_KEY,)).fetchone()
    assert row == (latest_migration(),)


async def test_schema_newer_than_the_installed_procrastinate_is_refused(db_url: str) -> None:
    from app.db import migrate
    from app.queue_schema import STATE_KEY, QueueSchemaMismatch

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE cv_state SET value = jsonb_build_object('migration', '99.00.00_01_future') WHERE key = %s",
            (STATE_KEY,),
        )
    with pytest.raises(QueueSchemaMismatch, match="newer than the installed procrastinate"):
        await migrate(db_url, make_settings())


async def test_unrecorded_schema_missing_functions_is_refused_with_the_fix(db_url: str) -> None:
    from app.db import migrate
    from app.queue_schema import STATE_KEY, QueueSchemaMismatch

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM cv_state WHERE key = %s", (STATE_KEY,))
        conn.execute("DROP FUNCTION procrastinate_defer_jobs_v1")
    with pytest.raises(QueueSchemaMismatch, match="procrastinate schema --migrations-path"):
        await migrate(db_url, make_settings())
