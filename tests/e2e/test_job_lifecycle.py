"""The job lifecycle cannot wedge: real service processes, real Postgres, the fake Confluence's faults.

A page must never stop updating (issue 10, part 1). procrastinate's own retry put a failed job back to `todo`,
which violates its unique `queueing_lock` index when a newer job for the page waits: the failed job stayed
`doing` for ever, holding the page's `lock`, and the waiting job never ran. These tests drive exactly those
interleavings (retryable failures, permanent failures, SIGKILLed workers, new events) and check that the page
ends indexed at the latest version, with no job `doing` without a live worker and none `todo` for ever.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.vector_store import WORKER_LOST_ERROR, VectorStore
from tests.conftest import make_settings
from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, Service, running, wait_until
from tests.e2e.test_faults import assert_indexed_exactly_once, jobs_by_status, live_workers
from tests.e2e.test_pipeline_e2e import api_queue_idle, indexed
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama
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


def job_history(db: Db, page_id: str) -> list[tuple[Any, ...]]:
    """Every job of the page with its procrastinate events, for failure messages."""
    with psycopg.connect(db.url) as conn:
        return conn.execute(
            """SELECT j.id, j.status::text, j.scheduled_at, j.worker_id, j.args->>'event',
                      array_agg(e.type::text || '@' || to_char(e.at, 'HH24:MI:SS.MS') ORDER BY e.id)
               FROM procrastinate_jobs j LEFT JOIN procrastinate_events e ON e.job_id = j.id
               WHERE j.args ->> 'page_id' = %s GROUP BY j.id ORDER BY j.id""",
            (page_id,),
        ).fetchall()


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


@pytest.mark.parametrize(("status", "reason"), [(403, "permanent error"), (503, "gave up after 3 attempts")])
def test_page_that_fails_for_good_holds_no_rows_unless_an_outage_ended_it(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, db: Db, status: int, reason: str
) -> None:
    """An indexed page whose next fetches answer 403 (permanent) or 503 until JOB_MAX_ATTEMPTS ends `failed`
    with the reason in its state; the last job ends `failed`, none is left waiting. A 403 deletes its old rows
    (no longer searchable); 503s (an outage, nothing said about the page) keep them at their last good
    version, and reconciliation re-checks the page (`app.sync._failed_to_recheck`)."""
    pid = "5401"
    edit(confluence, pid, "v1")
    env = {**env, "CONFLUENCE_MAX_RETRIES": "0", "JOB_MAX_ATTEMPTS": "3"}
    with running(Api(env, tmp_path / "api.log")) as api:
        assert isinstance(api, Api)
        assert api.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202
        wait_until(lambda: indexed(db, pid) and page_idle(db, pid), timeout=30, what="indexed first")
        assert db.rows(pid)
        confluence.fail_next(50, status=status, path_contains=pid)
        assert api.webhook({"event": "page_updated", "page": {"id": pid}}).status_code == 202
        wait_until(
            lambda: (db.state(pid) or {}).get("status") == "failed" and page_idle(db, pid),
            timeout=60,
            what=f"page failed; jobs={page_jobs(db, pid)}",
        )
    state = db.state(pid)
    assert state is not None and state["reason"] == reason, state
    assert str(status) in (state["last_error"] or ""), state
    if status == 403:
        assert state["chunk_count"] == 0 and db.rows(pid) == [], state
    else:
        assert state["chunk_count"] > 0 and len(db.rows(pid)) == state["chunk_count"], state
    assert jobs_by_status(db).get("failed", 0) == 1


# --- the property: any interleaving of failures, crashes and events converges -------------------------------

#: What can happen to one page between two looks: an edit (with its webhook), a re-delivered webhook, the next
#: fetches of the page failing with 429 (Retry-After), 503 or 404, or the worker SIGKILLed (and replaced once its
#: heartbeat is stale, as an orchestrator would).
STEPS = ("edit", "event", "429", "503", "404", "kill")
SEEDS = tuple(int(x) for x in os.environ.get("H1_SEEDS", "1,2,3,4").split(","))


def schedule(seed: int, length: int = 7) -> list[tuple[str, int, bool]]:
    """A seeded random schedule: (step, how many faults, wait for a running job before the next step)."""
    rng = random.Random(seed)
    return [(rng.choice(STEPS), rng.randint(1, 3), rng.random() < 0.5) for _ in range(length)]


class Workers:
    """The one worker process of the property test, replaceable after a SIGKILL."""

    def __init__(self, env: dict[str, str], tmp_path: Path, db: Db) -> None:
        self.env, self.tmp_path, self.db, self.n = env, tmp_path, db, 0
        self.current = self._start()

    def _start(self) -> Service:
        self.n += 1
        return Service(self.env, ["worker"], self.tmp_path / f"worker-{self.n}.log").start()

    def kill_and_replace(self) -> None:
        self.current.kill()
        # Its jobs are handed back by the next worker's start-up recovery once its heartbeat is stale
        # (3 x WORKER_HEARTBEAT_SECONDS=1).
        wait_until(lambda: live_workers(self.db, 3.5) == 0, timeout=15, what="dead worker's heartbeat stale")
        self.current = self._start()

    def stop(self) -> None:
        self.current.stop()


def faults_left(confluence: FakeConfluence, page_id: str) -> int:
    """Injected faults for this page's requests not yet answered (the fake's own bookkeeping)."""
    return sum(f.remaining for f in confluence._faults if f.path_contains == page_id)


def page_idle(db: Db, page_id: str) -> bool:
    return not any(status in {"todo", "doing"} for _, status, _ in page_jobs(db, page_id))


def poll(predicate: Callable[[], bool], timeout: float) -> bool:
    """True as soon as `predicate()` is, False after `timeout` seconds (the caller reports the state then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def orphaned_jobs(db: Db, stale_after: float) -> list[tuple[int, str, Any]]:
    """Page jobs `doing` on no worker, or on one silent for longer than `stale_after` seconds."""
    return [
        job
        for pid_jobs in [page_jobs(db, pid) for pid in _all_pages(db)]
        for job in pid_jobs
        if job[1] == "doing" and (job[2] is None or float(job[2]) > stale_after)
    ]


def _all_pages(db: Db) -> list[str]:
    with psycopg.connect(db.url) as conn:
        rows = conn.execute("SELECT DISTINCT args->>'page_id' FROM procrastinate_jobs WHERE queue_name = 'pages'")
        return [str(r[0]) for r in rows.fetchall()]


def test_any_interleaving_of_failures_crashes_and_events_ends_indexed_at_the_latest_version(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    """For seeded random schedules of edits, re-deliveries, 429/503/404 faults and worker SIGKILLs on one page
    (a page per schedule), after a last edit the page ends indexed exactly once at the latest version, no job
    is left `todo` or `doing`, and at no look is a job `doing` for long on a dead worker."""
    env = {**env, "CONFLUENCE_MAX_RETRIES": "0", "RETRY_BASE_SECONDS": "0.2", "RETRY_MAX_SECONDS": "1"}
    ollama.per_input_delay = 0.05  # a page job lasts long enough for kills and events to land mid-job
    with running(Api(env, tmp_path / "api.log", worker=False)) as api:
        assert isinstance(api, Api)
        workers = Workers(env, tmp_path, db)
        try:
            for seed in SEEDS:
                pid = f"52{seed:02d}"
                steps = schedule(seed)
                edit(confluence, pid, f"s{seed}-v0")
                assert api.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202
                for i, (step, faults, wait_for_run) in enumerate(steps):
                    if wait_for_run:  # sometimes land the next step while a job runs, sometimes not
                        with contextlib.suppress(AssertionError):
                            wait_until(lambda pid=pid: job_doing(db, pid), timeout=3, what="a job running")
                    if step == "edit":
                        edit(confluence, pid, f"s{seed}-v{i + 1}")
                        assert api.webhook({"event": "page_updated", "page": {"id": pid}}).status_code == 202
                    elif step == "event":
                        assert api.webhook({"event": "page_updated", "page": {"id": pid}}).status_code == 202
                    elif step == "kill":
                        workers.kill_and_replace()
                    else:
                        retry_after = 0.2 if step == "429" else None
                        confluence.fail_next(faults, status=int(step), retry_after=retry_after, path_contains=pid)
                    assert orphaned_jobs(db, stale_after=10) == [], (seed, i, step)
                # Faults are transient: spend what is left of them before the last edit (a 404 answered
                # after it would rightly record the page as deleted).
                while faults_left(confluence, pid):
                    assert api.webhook({"event": "page_updated", "page": {"id": pid}}).status_code == 202
                    wait_until(lambda pid=pid: page_idle(db, pid), timeout=60, what=f"seed {seed}: faults spent")
                latest = edit(confluence, pid, f"s{seed}-last")
                assert api.webhook({"event": "page_updated", "page": {"id": pid}}).status_code == 202
                converged = poll(lambda pid=pid, latest=latest: indexed(db, pid, latest) and page_idle(db, pid), 60)
                assert converged, f"seed {seed} {steps}: v{latest} not indexed or a job left: {job_history(db, pid)}"
                assert_indexed_exactly_once(db, pid, latest)
                assert all(f"s{seed}-last" in text for text, _ in db.rows(pid)), "rows hold the latest text only"
        finally:
            workers.stop()
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


async def test_attempts_carry_across_jobs_until_max_then_failed_with_rows_kept(pool: Any) -> None:
    store = VectorStore(pool, "confluence")
    await write(store, make_page(1), ["alpha"])
    first = await store.record_failure("42", "ConfluenceUnavailable: 429", permanent=False, max_attempts=3)
    second = await store.record_failure("42", "ConfluenceUnavailable: 429", permanent=False, max_attempts=3)
    assert (first.attempts, first.failed, second.attempts, second.failed) == (1, False, 2, False)
    assert await store.count_rows("42") == 1, "while retrying, the page stays searchable"
    state = await store.page_state("42")
    assert state is not None and state.status == "indexed" and state.attempts == 2
    third = await store.record_failure("42", "ConfluenceUnavailable: 429", permanent=False, max_attempts=3)
    assert third.failed and third.attempts == 3
    assert await store.count_rows("42") == 1, "an outage says nothing about the page: its rows stay"
    state = await store.page_state("42")
    assert state is not None and state.status == "failed" and state.reason == "gave up after 3 attempts"
    assert state.chunk_count == 1
    # A new event for a failed page gets a fresh set of attempts (and shows as pending while retrying).
    again = await store.record_failure("42", "ConfluenceUnavailable: 503", permanent=False, max_attempts=3)
    assert (again.attempts, again.failed) == (1, False)
    state = await store.page_state("42")
    assert state is not None and state.status == "pending"


async def test_attempts_lost_with_their_worker_end_the_page_without_rows(pool: Any) -> None:
    """A page that kills its worker every time (`hand_back_stalled_page`) is ended without rows, and is not
    re-checked by reconciliation (it would kill workers again each interval)."""
    store = VectorStore(pool, "confluence")
    await write(store, make_page(1), ["alpha"])
    for _ in range(2):
        await store.record_failure("42", WORKER_LOST_ERROR, permanent=False, max_attempts=3, worker_lost=True)
    last = await store.record_failure("42", WORKER_LOST_ERROR, permanent=False, max_attempts=3, worker_lost=True)
    assert last.failed and last.removed == 1 and await store.count_rows("42") == 0


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
        # The stalled jobs are ended and deleted (their pages are handed on), the follow-ups wait.
        assert rows == [("77", "todo"), ("78", "todo")], rows
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
