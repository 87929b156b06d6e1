"""Backfill resumes where it stopped; reconciliation runs when due."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.runtime import Runtime
from app.sync import backfill, get_state, reconcile_due, set_state
from tests.conftest import make_settings
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama


@pytest.fixture()
def fakes() -> Iterator[tuple[FakeConfluence, FakeOllama]]:
    with FakeConfluence("cloud") as confluence, FakeOllama() as ollama:
        yield confluence, ollama


@pytest.fixture()
async def rt(db_url: str, fakes: tuple[FakeConfluence, FakeOllama]) -> AsyncIterator[Runtime]:
    confluence, ollama = fakes
    settings = make_settings(
        database_url=db_url,
        confluence_base_url=confluence.base_url,
        ollama_base_url=ollama.base_url,
        reconcile_interval=600,
        **confluence.credentials,
    )
    runtime = await Runtime.open(settings)
    try:
        yield runtime
    finally:
        await runtime.close()


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
