"""Issue 10 fault injection on the real service: Postgres connections dropped under a worker, a `Retry-After`
far beyond RETRY_MAX_SECONDS, a page failed for good that is edited again, and jobs stored the way the
previous release stored them, run by a worker started by `worker` and by `serve`.

The property checked each time: the page ends indexed at its latest version, no job is left `doing` on a dead
worker nor `todo` for ever, and no job of ours failed for want of a runtime in its context.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import Db
from tests.e2e.harness import Api, Service, cli_path, running, wait_until
from tests.e2e.test_faults import live_workers
from tests.e2e.test_job_lifecycle import edit, job_doing, job_history, orphaned_jobs, page_idle, poll
from tests.e2e.test_pipeline_e2e import indexed
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama


def drop_service_connections(db: Db) -> int:
    """pg_terminate_backend on every connection of the services to this test's database (a failover, a
    pgbouncer restart, an idle-session kill); returns how many were dropped."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND application_name LIKE 'confluence-vectors%'"""
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def failed_jobs(db: Db) -> list[tuple[Any, ...]]:
    with psycopg.connect(db.url) as conn:
        return conn.execute(
            "SELECT id, task_name, args FROM procrastinate_jobs WHERE status = 'failed' ORDER BY id"
        ).fetchall()


def webhook(api: Api, page_id: str) -> None:
    assert api.webhook({"event": "page_updated", "page": {"id": page_id}}).status_code == 202


def settled(db: Db, page_id: str, version: int) -> bool:
    return bool(indexed(db, page_id, version)) and page_idle(db, page_id)


def test_connections_dropped_mid_job_and_while_idle_do_not_stop_a_page(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    ollama.per_input_delay = 0.3  # a page job lasts a few seconds: the drop lands while it runs
    pid = "7101"
    with running(Api(env, tmp_path / "api.log", worker=False)) as api:
        assert isinstance(api, Api)
        worker = Service(env, ["worker"], tmp_path / "worker.log").start()
        try:
            edit(confluence, pid, "v1")
            webhook(api, pid)
            wait_until(lambda: job_doing(db, pid), timeout=30, what="the page's job running")
            assert drop_service_connections(db) > 0
            v2 = edit(confluence, pid, "v2")  # an event while the job whose connections died runs
            webhook(api, pid)
            assert poll(lambda: settled(db, pid, v2), 90), f"not indexed after a mid-job drop: {job_history(db, pid)}"

            # All connections idle (LISTEN included) when they are dropped: the next event still runs.
            assert drop_service_connections(db) > 0
            v3 = edit(confluence, pid, "v3")
            webhook(api, pid)
            assert poll(lambda: settled(db, pid, v3), 90), f"not indexed after an idle drop: {job_history(db, pid)}"
            assert orphaned_jobs(db, stale_after=10) == []
            assert all("v3" in text for text, _ in db.rows(pid)), "rows hold the latest text only"
        finally:
            worker.stop()
    assert failed_jobs(db) == []


def test_connections_dropped_again_and_again_while_pages_change_lose_no_page(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    """For a few seconds every connection of the services is killed every 50 ms while four pages are edited
    (so some land inside a write transaction, a fetch, a finish_job or a deferral); once it stops, every page
    ends indexed at its latest version with no job stuck, and the worker kept running."""
    ollama.per_input_delay = 0.2
    pages = [f"72{i:02d}" for i in range(4)]
    with running(Api(env, tmp_path / "api.log", worker=False)) as api:
        assert isinstance(api, Api)
        worker = Service(env, ["worker"], tmp_path / "worker.log").start()
        try:
            wait_until(lambda: live_workers(db, 3.0) > 0, timeout=60, what="the worker up before the storm")
            stop = threading.Event()
            dropped = [0]

            def storm() -> None:
                while not stop.is_set():
                    with contextlib.suppress(psycopg.Error):
                        dropped[0] += drop_service_connections(db)
                    stop.wait(0.05)

            thread = threading.Thread(target=storm, daemon=True)
            thread.start()
            try:
                deadline, round_ = time.monotonic() + 5.0, 0
                while time.monotonic() < deadline:  # edits and events for 5 s of the storm
                    round_ += 1
                    for pid in pages:
                        edit(confluence, pid, f"r{round_}")
                        with contextlib.suppress(httpx.HTTPError):  # a 503 or a timeout is allowed now
                            httpx.post(
                                f"{api.url}/webhook/confluence",
                                json={"event": "page_updated", "page": {"id": pid}},
                                timeout=1.0,
                            )
            finally:
                stop.set()
                thread.join(10)
            assert dropped[0] > 0
            latest = {pid: edit(confluence, pid, "last") for pid in pages}
            for pid in pages:
                webhook(api, pid)
            for pid in pages:
                ok = poll(functools.partial(settled, db, pid, latest[pid]), 90)
                assert ok, f"{pid} not at v{latest[pid]}: {job_history(db, pid)}\n{worker.logs()[-3000:]}"
                assert all("last" in text for text, _ in db.rows(pid))
            assert orphaned_jobs(db, stale_after=10) == []
            assert worker.proc is not None and worker.proc.poll() is None, "the worker process is still running"
        finally:
            worker.stop()


def test_retry_after_far_beyond_retry_max_seconds_waits_at_most_retry_max_seconds(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, db: Db
) -> None:
    """Confluence asks for an hour three times; RETRY_MAX_SECONDS=2 bounds each follow-up's wait, so the page
    is indexed within seconds of the rate limit lifting, not an hour later."""
    env = {**env, "CONFLUENCE_MAX_RETRIES": "5", "CONFLUENCE_MAX_BACKOFF": "2", "RETRY_MAX_SECONDS": "2"}
    pid = "7102"
    version = edit(confluence, pid, "v1")
    confluence.fail_next(3, status=429, retry_after=3600, path_contains=pid)
    with running(Api(env, tmp_path / "api.log")) as api:
        assert isinstance(api, Api)
        webhook(api, pid)
        assert poll(lambda: settled(db, pid, version), 45), f"not indexed: {job_history(db, pid)}"
    assert confluence.count(pid) >= 4
    assert failed_jobs(db) == []


OPERATOR = "operator-token-0123456789abcdef"


def operator_status(api: Api) -> dict[str, Any]:
    answer = httpx.get(f"{api.url}/status", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return report


def listed(report: dict[str, Any], page_id: str) -> dict[str, bool]:
    return {
        key: any(row.get("page_id") == page_id for row in report[key]) for key in ("failed", "retrying", "failed_jobs")
    }


def test_a_page_failed_for_good_is_indexed_again_by_its_next_edit_and_status_says_so(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, db: Db
) -> None:
    env = {**env, "CONFLUENCE_MAX_RETRIES": "0", "API_TOKEN": "api-token-0123456789abcdef", "OPERATOR_TOKEN": OPERATOR}
    pid = "7103"
    v1 = edit(confluence, pid, "v1")
    with running(Api(env, tmp_path / "api.log")) as api:
        assert isinstance(api, Api)
        webhook(api, pid)
        assert poll(lambda: settled(db, pid, v1), 45), job_history(db, pid)
        confluence.fail_next(1, status=403, path_contains=pid)  # permanent for this page
        webhook(api, pid)
        wait_until(lambda: not db.rows(pid) and page_idle(db, pid), timeout=45, what="failed page's rows gone")
        assert listed(operator_status(api), pid)["failed"], "status names the failed page"
        v2 = edit(confluence, pid, "v2")
        webhook(api, pid)
        assert poll(lambda: settled(db, pid, v2), 45), f"failed page never indexed again: {job_history(db, pid)}"
        report = operator_status(api)
        assert listed(report, pid) == {"failed": False, "retrying": False, "failed_jobs": False}, report


# --- jobs the previous release stored, run by each kind of worker ------------------------------------------

_DEFER = """
    SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[
        ROW(%(queue)s, %(task)s, 0, %(lock)s, %(qlock)s, %(args)s::jsonb, NULL::timestamptz)
            ::procrastinate_job_to_defer_v1
    ]))
"""

#: (queue, task, lock, queueing lock, args) exactly as the release before the runtime-in-context change
#: stored them (its `defer_pages` SQL, its `configure_task(...).defer_async(...)` calls, procrastinate's
#: periodic deferrer's `timestamp`).
OLD_JOBS: list[tuple[str, str, str | None, str | None, dict[str, Any]]] = [
    (
        "pages",
        "cv:index_page",
        "page:7104",
        "page:7104",
        {"page_id": "7104", "content_type": None, "event": "page_created"},
    ),
    ("pages", "cv:index_page", "page:7105", "page:7105", {"page_id": "7105"}),
    ("maintenance", "cv:refresh_space_access", None, "space-access:ENG", {"space_key": "ENG"}),
    ("maintenance", "cv:recheck_access", "permission_sync", "access-recheck", {"attempt": 1}),
    ("maintenance", "cv:reconcile", None, "reconcile", {}),
    ("maintenance", "cv:tick", None, None, {"timestamp": 1_700_000_000}),
    ("maintenance", "cv:permission_sync", "permission_sync", None, {"timestamp": 1_700_000_000}),
]


def defer_old_jobs(db: Db) -> list[int]:
    ids = []
    with psycopg.connect(db.url, autocommit=True) as conn:
        for queue, task, lock, qlock, args in OLD_JOBS:
            row = conn.execute(
                _DEFER, {"queue": queue, "task": task, "lock": lock, "qlock": qlock, "args": json.dumps(args)}
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
    return ids


def jobs_left(db: Db, ids: list[int]) -> list[tuple[Any, ...]]:
    """Those of `ids` not yet ended successfully (succeeded jobs are deleted: delete_jobs='successful')."""
    with psycopg.connect(db.url) as conn:
        return conn.execute(
            "SELECT id, task_name, status::text FROM procrastinate_jobs WHERE id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall()


@pytest.mark.parametrize("how", ["worker", "serve"])
def test_jobs_stored_by_the_previous_release_run_on_every_kind_of_worker(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, db: Db, how: str
) -> None:
    v4, v5 = edit(confluence, "7104", "v1"), edit(confluence, "7105", "v1")
    ids = defer_old_jobs(db)
    with running(Api(env, tmp_path / "api.log", worker=how == "serve")):
        worker = Service(env, ["worker"], tmp_path / "worker.log").start() if how == "worker" else None
        try:
            done = poll(lambda: all(s not in {"todo", "doing"} for _, _, s in jobs_left(db, ids)), 60)
            assert done, jobs_left(db, ids)
            assert jobs_left(db, ids) == [], "every old job ran and succeeded"
            assert poll(lambda: indexed(db, "7104", v4) and indexed(db, "7105", v5), 10)
        finally:
            if worker is not None:
                worker.stop()
    assert failed_jobs(db) == []


# --- a transient outage longer than JOB_MAX_ATTEMPTS -----------------------------------------------------


def reconcile_now(env: dict[str, str]) -> None:
    done = subprocess.run([cli_path(), "reconcile"], env=env, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def test_a_page_ended_by_an_outage_comes_back_by_itself_once_the_outage_ends(
    env: dict[str, str], tmp_path: Path, confluence: FakeConfluence, ollama: FakeOllama, db: Db
) -> None:
    env = {
        **env,
        "JOB_MAX_ATTEMPTS": "2",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "0.5",
        "RECONCILE_OVERLAP": "0",
    }
    pid = "7106"
    v1 = edit(confluence, pid, "v1")
    with running(Api(env, tmp_path / "api.log")) as api:
        assert isinstance(api, Api)
        webhook(api, pid)
        assert poll(lambda: settled(db, pid, v1), 45), job_history(db, pid)
        ollama.stop()  # Ollama down (a reboot, a model pull) for longer than the page's attempts last
        v2 = edit(confluence, pid, "v2")
        webhook(api, pid)

        def ended() -> bool:
            state = db.state(pid)
            return bool(state and state["status"] == "failed") and page_idle(db, pid)

        wait_until(ended, timeout=90, what="the page ended failed by the outage")
        reconcile_now(env)  # the interval's reconciliation during the outage: re-queues it, it fails again
        wait_until(ended, timeout=90, what="the re-queued page ended failed again")
        assert db.rows(pid), "an outage says nothing about the page: its last good version stays searchable"
        ollama.come_up()
        reconcile_now(env)  # the first reconciliation after the outage
        assert poll(lambda: settled(db, pid, v2), 30), f"never came back: {db.state(pid)} {job_history(db, pid)}"
