"""Backfill resumes where it stopped; reconciliation runs when due."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import sync
from app.queue import INDEX_PAGE
from app.runtime import Runtime
from app.sync import backfill, get_state, reconcile, reconcile_due, set_state
from app.vector_store import WORKER_LOST_ERROR
from tests.conftest import open_runtime
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama


@pytest.fixture()
def fakes() -> Iterator[tuple[FakeConfluence, FakeOllama]]:
    with FakeConfluence("cloud") as confluence, FakeOllama() as ollama:
        yield confluence, ollama


@pytest.fixture()
async def rt(db_url: str, fakes: tuple[FakeConfluence, FakeOllama]) -> AsyncIterator[Runtime]:
    confluence, ollama = fakes
    async with open_runtime(
        database_url=db_url,
        confluence_base_url=confluence.base_url,
        ollama_base_url=ollama.base_url,
        reconcile_interval=600,
        **confluence.credentials,
    ) as runtime:
        yield runtime


async def _jobs(rt: Runtime) -> int:
    async with rt.pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'")).fetchone()
    return int(row[0]) if row else 0


async def test_interrupted_backfill_resumes_where_it_stopped(
    rt: Runtime, fakes: tuple[FakeConfluence, FakeOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    confluence, _ = fakes
    confluence.bulk_pages("BIG", 450)
    original = rt.confluence.iter_pages

    async def interrupted(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        count = 0
        async for ref in original(*args, **kwargs):
            count += 1
            if count > 300:
                raise KeyboardInterrupt  # the operator's Ctrl-C, mid-space
            yield ref

    monkeypatch.setattr(rt.confluence, "iter_pages", interrupted)
    with pytest.raises(KeyboardInterrupt):
        await backfill(rt, ["BIG"])
    saved = await get_state(rt, "backfill:BIG")
    assert saved == {"done": [], "space": "BIG", "position": 200}  # progress is saved per batch of 200
    assert await _jobs(rt) == 200

    monkeypatch.setattr(rt.confluence, "iter_pages", original)
    report = await backfill(rt, ["BIG"])
    assert report.seen == 250, "the resumed run skips what the first one had enqueued"
    assert await _jobs(rt) == 450
    assert await get_state(rt, "backfill:BIG") is None  # finished: the next run starts fresh


async def test_reconcile_due_follows_the_interval(rt: Runtime) -> None:
    assert await reconcile_due(rt)  # never ran
    await set_state(
        rt, "reconcile", {"checkpoint": datetime.now(UTC).isoformat(), "finished_at": datetime.now(UTC).isoformat()}
    )
    assert not await reconcile_due(rt)
    long_ago = (datetime.now(UTC) - timedelta(seconds=601)).isoformat()
    await set_state(rt, "reconcile", {"checkpoint": long_ago, "finished_at": long_ago})
    assert await reconcile_due(rt)


async def test_periodic_tick_defers_one_reconciliation(rt: Runtime) -> None:
    from app.jobs import defer_reconcile

    assert await defer_reconcile(rt) is True
    assert await defer_reconcile(rt) is False  # one waiting reconciliation at a time


async def test_backfill_keeps_the_queue_tables_statistics_fresh(
    rt: Runtime, fakes: tuple[FakeConfluence, FakeOllama]
) -> None:
    """A fresh jobs table has no statistics, and procrastinate's fetch then checks every waiting job's lock
    (hundreds of ms per fetch with thousands waiting): backfill analyzes it as the queue grows."""
    confluence, _ = fakes
    confluence.bulk_pages("STATS", 450)
    await backfill(rt, ["STATS"])
    async with rt.pool.connection() as conn:
        row = await (
            await conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'procrastinate_jobs'::regclass")
        ).fetchone()
    assert row is not None and row[0] >= 400, f"planner still believes the jobs table holds {row} rows"


# --- reconciliation: calls proportional to changes ---------------------------------------------------------
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)


def _old_pages(confluence: FakeConfluence, n: int, start: int = 200_000) -> list[str]:
    """`n` pages last modified long before any checkpoint; ids sort as strings in creation order."""
    ids = [str(start + i) for i in range(n)]
    for page_id in ids:
        confluence.put_page(page_id, title=f"Page {page_id}", body="<p/>", last_modified=LONG_AGO)
    return ids


async def _hold(rt: Runtime, ids: list[str], *, status: str = "indexed", chunks: int = 2) -> None:
    """Record pages as the pipeline would have after indexing version 1 of each."""
    async with rt.pool.connection() as conn:
        await conn.execute(
            """INSERT INTO cv_pages (page_id, content_type, status, version, chunk_count)
               SELECT unnest(%s::text[]), 'page', %s, 1, %s""",
            (ids, status, chunks),
        )


async def _queued(rt: Runtime) -> dict[str, str]:
    """page id -> event of every waiting page job."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT args->>'page_id', args->>'event' FROM procrastinate_jobs WHERE status = 'todo' "
            "AND task_name = %s",
            (INDEX_PAGE,),
        )
        return {row[0]: row[1] for row in await cur.fetchall()}


async def _checkpoint(rt: Runtime, minutes_ago: int = 10) -> None:
    when = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()
    await set_state(rt, "reconcile", {"checkpoint": when, "finished_at": when})


async def test_reconcile_finds_edits_trash_purges_and_failed_rows_in_calls_independent_of_wiki_size(
    rt: Runtime, fakes: tuple[FakeConfluence, FakeOllama]
) -> None:
    confluence, _ = fakes
    confluence.max_limit = 250  # what Cloud serves per v2 response (the fake's default 25 forces paging)
    ids = _old_pages(confluence, 3000)
    await _hold(rt, ids[:-1])
    await _hold(rt, ids[-1:], status="failed", chunks=3)  # failed, yet its rows are still searchable
    await _checkpoint(rt)
    for page_id in ids[1000:1003]:
        confluence.put_page(page_id, title="Edited", body="<p>new</p>")
    for page_id in ids[2000:2002]:
        confluence.set_status(page_id, "trashed")
    confluence.delete_page(ids[5])  # purged without a webhook: only the existence slice can see it
    confluence.reset_counters()

    report = await reconcile(rt)

    assert await _queued(rt) == {
        **dict.fromkeys(ids[1000:1003], "reconcile"),
        **dict.fromkeys(ids[2000:2002], "reconcile_gone"),
        ids[5]: "reconcile_vanished",
        ids[-1]: "reconcile_failed",
    }
    assert (report.held_checked, report.failed_rechecked) == (sync.RECONCILE_SLICE, 1)
    # changed (1 CQL call) + gone (1) + comments and attachments changed (1) + existence of one slice (2
    # batches of 250 x pages, blog posts): not the 2 x 3000/250 = 24 calls of checking every held page.
    assert confluence.count() <= 7, confluence.requests


async def test_reconcile_rechecks_pages_a_service_fault_ended_even_without_rows(rt: Runtime) -> None:
    """Pages recorded `failed` by a service fault before service faults stopped being final (their rows were
    deleted) are re-checked, so they recover once the fault is fixed; a page that failed for a page-level
    reason and holds no rows is not (nothing of it is searchable, and re-fetching it would fail again)."""
    await _hold(rt, ["701", "702", "703"], status="failed", chunks=0)
    async with rt.pool.connection() as conn:
        for page_id, error in [
            ("701", "EmbeddingModelMissing: model 'bge-m3' is not on the Ollama server"),
            ("702", "ConfluenceCredentialsRejected: Confluence refused our credentials (401)"),
            ("703", "ConfluenceAuthError: Confluence forbade GET /wiki/api/v2/pages/703 (403)"),
        ]:
            await conn.execute("UPDATE cv_pages SET last_error = %s WHERE page_id = %s", (error, page_id))
    await _checkpoint(rt)

    report = await reconcile(rt)

    assert {k: v for k, v in (await _queued(rt)).items() if k.startswith("70")} == {
        "701": "reconcile_failed",
        "702": "reconcile_failed",
    }
    assert report.failed_rechecked == 2


async def test_reconcile_existence_slice_rotates_over_every_held_page(
    rt: Runtime, fakes: tuple[FakeConfluence, FakeOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    confluence, _ = fakes
    monkeypatch.setattr(sync, "RECONCILE_SLICE", 50)
    ids = _old_pages(confluence, 120)
    await _hold(rt, ids)
    await _checkpoint(rt)
    confluence.delete_page(ids[110])
    checked, cursors = [], []
    for _ in range(3):
        report = await reconcile(rt)
        state = await get_state(rt, "reconcile") or {}
        checked.append(report.held_checked)
        cursors.append(state.get("slice_after"))
    assert checked == [50, 50, 50]
    assert cursors == [ids[49], ids[99], ids[29]]  # the third run takes the last 20 and wraps to the first 30
    assert (await _queued(rt)) == {ids[110]: "reconcile_vanished"}


async def test_events_that_change_restrictions_or_place_invalidate_the_client_cache(
    rt: Runtime, fakes: tuple[FakeConfluence, FakeOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.pipeline import process_page

    confluence, _ = fakes
    confluence.put_page("700", title="Parent", body="<p>parent</p>")
    invalidated: list[str] = []
    original = rt.confluence.invalidate

    def spy(content_id: str) -> None:
        invalidated.append(content_id)
        original(content_id)

    monkeypatch.setattr(rt.confluence, "invalidate", spy)
    for event in ("content_permissions_updated", "page_moved", None, "page_created"):
        await process_page(rt, "700", "page", event)
    assert invalidated == ["700", "700"]


async def test_reconcile_rechecks_pages_an_outage_ended_but_not_pages_that_kill_workers(rt: Runtime) -> None:
    """A page first seen during an outage ran out of attempts on transient errors without ever holding rows:
    re-checked, so it is indexed once the outage ends. A page whose attempts died with their worker is not
    (it would kill workers again each interval), nor one ended by a permanent error without rows."""
    await _hold(rt, ["711", "712", "713"], status="failed", chunks=0)
    async with rt.pool.connection() as conn:
        for page_id, reason, error in [
            ("711", "gave up after 12 attempts", "EmbeddingUnavailable: Ollama unreachable"),
            ("712", "gave up after 12 attempts", WORKER_LOST_ERROR),
            ("713", "permanent error", "ConfluenceAuthError: Confluence forbade GET /wiki/api/v2/pages/713 (403)"),
        ]:
            await conn.execute(
                "UPDATE cv_pages SET reason = %s, last_error = %s WHERE page_id = %s", (reason, error, page_id)
            )
    await _checkpoint(rt)

    report = await reconcile(rt)

    assert {k: v for k, v in (await _queued(rt)).items() if k.startswith("71")} == {"711": "reconcile_failed"}
    assert report.failed_rechecked == 1
