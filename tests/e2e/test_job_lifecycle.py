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

from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, running, wait_until
from tests.e2e.test_faults import assert_indexed_exactly_once, jobs_by_status
from tests.e2e.test_pipeline_e2e import api_queue_idle, indexed
from tests.fakes.confluence import FakeConfluence


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
