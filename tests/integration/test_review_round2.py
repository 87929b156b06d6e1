"""Review of a19b564..HEAD (round 2): a count of a table by `ensure_term_counts` is documented to hold "a lock
that pauses writes, not searches" (README "Word counts"; its docstring: "SHARE ROW EXCLUSIVE; searches go on").
When the table already carries the triggers (counts lost: a restored dump, a REPEATABLE READ TRUNCATE, counts
deleted), its `DROP TRIGGER IF EXISTS` takes ACCESS EXCLUSIVE on the table and holds it until the count commits
(102 s at 1M chunks per the README), so every search waits meanwhile. The upgrade case (no triggers yet) holds."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from app.term_counts import TRIGGERS, ensure_term_counts
from tests.integration.test_break_term_counts import _wait_until_blocked
from tests.integration.test_search import TABLE, load_corpus
from tests.integration.test_term_counts import RELATION


@pytest.mark.parametrize("case", ["upgrade: no triggers yet", "counts lost, triggers kept"])
async def test_the_first_count_does_not_block_searches(pool: Any, db_url: str, case: str) -> None:
    await load_corpus(pool)
    async with pool.connection() as conn:
        if case.startswith("upgrade"):  # a table created before app.term_counts
            for name in TRIGGERS.values():
                await conn.execute(f"DROP TRIGGER {name} ON {RELATION}")
        await conn.execute("DELETE FROM cv_term_counts; DELETE FROM cv_term_deltas")
    holder = await psycopg.AsyncConnection.connect(db_url)
    starter = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    reader = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        # An uncommitted row-count row pauses the counting transaction at its last INSERT (unique check),
        # i.e. after its LOCK, DROP TRIGGER IF EXISTS, CREATE TRIGGER and ts_stat count.
        await holder.execute("INSERT INTO cv_term_counts VALUES (%s::regclass, '', 0)", (RELATION,))
        counting = asyncio.create_task(ensure_term_counts(starter, TABLE))
        await _wait_until_blocked(reader, starter.info.backend_pid)
        modes = await (
            await reader.execute(
                "SELECT array_agg(mode ORDER BY mode) FROM pg_locks WHERE pid = %s AND relation = %s::regclass",
                (starter.info.backend_pid, RELATION),
            )
        ).fetchone()
        held = modes[0] if modes else None
        # A search's first read of the table, as a person or the service account.
        await reader.execute("SET lock_timeout = '500ms'")
        try:
            await reader.execute(f"SELECT count(*) FROM {RELATION}")
            blocked = False
        except psycopg.errors.LockNotAvailable:
            blocked = True
        await holder.rollback()
        assert await counting is True
        assert not blocked, f"a search waits on the first count; the counting transaction holds {held}"
    finally:
        await holder.close()
        await starter.close()
        await reader.close()


pytestmark = pytest.mark.timeout(120)
