"""Word counts kept on write (`app.term_counts`): exact after every kind of write, whoever writes, folded or not;
installed once on a table that predates them; and a table without them still ranks the same (issue 14: a
ranking must depend on the rows alone, never on when ANALYZE last ran)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest

from app.term_counts import FOLD_LOCK, ROW_COUNT, TRIGGERS, ensure_term_counts, fold_term_deltas
from app.vector_store import VectorStore
from tests.integration.test_search import CORPUS, TABLE, load_corpus, make_page, rankings, write_page

RELATION = f"data_{TABLE}"


async def truth(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """What the counts must say, counted from scratch: `ts_stat`'s document counts and the row count."""
    query = f"SELECT word, ndoc FROM ts_stat('SELECT cv_search_tsv FROM {RELATION}')"
    rows = await (await conn.execute(query)).fetchall()
    counted = {str(word): int(n) for word, n in rows}
    total = await (await conn.execute(f"SELECT count(*) FROM {RELATION}")).fetchone()
    assert total is not None
    counted[ROW_COUNT] = int(total[0])
    return counted


async def kept(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """What the counts say: folded counts plus pending deltas, words at 0 left out (the row count kept)."""
    rows = await (
        await conn.execute(
            """SELECT lexeme, sum(n) FROM (
                   SELECT lexeme, n FROM cv_term_counts WHERE relid = %(r)s::regclass
                   UNION ALL SELECT lexeme, delta FROM cv_term_deltas WHERE relid = %(r)s::regclass) AS k
               GROUP BY lexeme""",
            {"r": RELATION},
        )
    ).fetchall()
    return {str(word): int(n) for word, n in rows if int(n) != 0 or word == ROW_COUNT}


async def test_counts_match_the_rows_after_every_kind_of_write(pool: Any) -> None:
    await load_corpus(pool)
    store = VectorStore(pool, TABLE)
    page_id, space, title, labels, sections = CORPUS[0]
    async with pool.connection() as conn:
        assert await kept(conn) == await truth(conn)
        # an edit: one section changed, one added (the write path rewrites only those chunks)
        edited = [(sections[0][0], sections[0][1] + " Zanzibar quokka."), *sections[1:], ("New", "Brand new words.")]
        await write_page(store, make_page(page_id, space, title, labels), edited)
        assert await kept(conn) == await truth(conn)
        # a rename: every chunk's title, hence its search document, changes in one UPDATE
        await conn.execute(
            f"""UPDATE {RELATION} SET metadata_ = jsonb_set(metadata_, '{{title}}', '"Renamed quasar handbook"')
                WHERE metadata_ ->> 'ref_doc_id' = %s""",
            (page_id,),
        )
        assert await kept(conn) == await truth(conn)
        # a page removed; another program's writes (psql, a stock PGVectorStore): insert, update, delete
        await store.delete_page(CORPUS[1][0], reason="deleted")
        await conn.execute(
            f"INSERT INTO {RELATION} (text, metadata_, node_id) VALUES"
            " ('hand written xylophone row', '{\"title\": \"Manual\"}', 'manual-1'),"
            " ('another xylophone', '{}', 'manual-2')"
        )
        await conn.execute(f"UPDATE {RELATION} SET text = 'xylophone replaced' WHERE node_id = 'manual-1'")
        await conn.execute(f"UPDATE {RELATION} SET metadata_ = metadata_ || '{{\"x\": 1}}'")  # nets to nothing
        await conn.execute(f"DELETE FROM {RELATION} WHERE node_id = 'manual-2'")
        expected = await truth(conn)
        assert await kept(conn) == expected
        assert expected["xylophon"] == 1 and expected["quokka"] >= 1 and "quasar" in expected
        # folded: the same counts, no delta left, words no row holds any more gone from the table
        assert (await fold_term_deltas(conn) or 0) > 0
        assert await kept(conn) == expected
        left = await (await conn.execute("SELECT count(*) FROM cv_term_deltas")).fetchone()
        zero = await (
            await conn.execute("SELECT count(*) FROM cv_term_counts WHERE n <= 0 AND lexeme <> ''")
        ).fetchone()
        assert left == (0,) and zero == (0,)
        await conn.execute(f"TRUNCATE {RELATION}")
        assert await kept(conn) == {ROW_COUNT: 0} == await truth(conn)


async def test_a_table_that_predates_the_counts_is_counted_once(pool: Any) -> None:
    """An upgrade: rows written before the triggers existed are counted at start-up, atomically, and only once."""
    await load_corpus(pool)
    async with pool.connection() as conn:
        for name in TRIGGERS.values():
            await conn.execute(f"DROP TRIGGER {name} ON {RELATION}")
        await conn.execute("DELETE FROM cv_term_counts; DELETE FROM cv_term_deltas")
        await write_page(VectorStore(pool, TABLE), make_page("900", "OPS", "Late page", ()), [("A", "uncounted yak")])
        assert await kept(conn) == {}
        assert await ensure_term_counts(conn, TABLE) is True
        assert await kept(conn) == await truth(conn)
        assert await ensure_term_counts(conn, TABLE) is False  # a second start counts nothing twice
        assert await kept(conn) == await truth(conn)


async def test_counts_of_a_dropped_table_are_forgotten(pool: Any) -> None:
    async with pool.connection() as conn:
        await conn.execute(f"CREATE TABLE data_gone (LIKE {RELATION} INCLUDING ALL)")
        from app.db import ensure_vector_table

        await ensure_vector_table(conn, "gone", 8)
        await conn.execute("INSERT INTO data_gone (text, node_id) VALUES ('ephemeral words', 'g-1')")
        oid = await (await conn.execute("SELECT 'data_gone'::regclass::oid")).fetchone()
        assert oid is not None
        await conn.execute("DROP TABLE data_gone")
        await ensure_term_counts(conn, TABLE)
        for table in ("cv_term_counts", "cv_term_deltas"):
            row = await (await conn.execute(f"SELECT count(*) FROM {table} WHERE relid = %s", (oid[0],))).fetchone()
            assert row == (0,)


async def test_a_fold_under_way_is_not_run_twice(pool: Any, db_url: str) -> None:
    await load_corpus(pool)
    async with await psycopg.AsyncConnection.connect(db_url) as holder:
        await holder.execute("SELECT pg_advisory_xact_lock(%s)", (FOLD_LOCK,))  # a fold in another process
        async with pool.connection() as conn:
            assert await fold_term_deltas(conn) is None
            assert await kept(conn) == await truth(conn)
        await holder.rollback()
    async with pool.connection() as conn:
        assert (await fold_term_deltas(conn) or 0) > 0


async def test_a_table_without_counts_ranks_as_one_with_them(pool: Any) -> None:
    """A table no migration equipped (written by another program) falls back to counting on the GIN index: on a
    table this small that count is exact, so the rankings are the same."""
    await load_corpus(pool)
    counted = await rankings(pool)
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM cv_term_counts; DELETE FROM cv_term_deltas")
    assert await rankings(pool) == counted


async def test_a_count_held_up_by_a_long_operation_is_left_to_the_minute_tick(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A start that must count a table (counts lost) while another operation holds the table (a concurrent HNSW
    build holds SHARE UPDATE EXCLUSIVE for up to an hour) gives up after `LOCK_WAIT_SECONDS` instead of queueing,
    with every write to the table queued behind it; the worker's minute tick counts it once the table is free."""
    from app.jobs import tick
    from app.runtime import Runtime
    from tests.conftest import make_settings

    rt = await Runtime.open(make_settings(database_url=db_url, confluence_base_url=""))
    try:
        await load_corpus(rt.pool)
        async with rt.pool.connection() as conn:
            await conn.execute("DELETE FROM cv_term_counts; DELETE FROM cv_term_deltas")
        holder = await psycopg.AsyncConnection.connect(db_url)
        try:
            await holder.execute(
                f"LOCK TABLE {RELATION} IN SHARE UPDATE EXCLUSIVE MODE"
            )  # as CREATE INDEX CONCURRENTLY
            async with rt.pool.connection() as conn:
                with caplog.at_level(logging.WARNING, logger="app.term_counts"):
                    assert await asyncio.wait_for(ensure_term_counts(conn, TABLE), timeout=10) is False
                assert any("not kept yet" in r.getMessage() for r in caplog.records)
                assert await kept(conn) == {}
                # Writes go on meanwhile (nothing is queued for the table).
                await conn.execute("SET lock_timeout = '2s'")
                await write_page(VectorStore(rt.pool, TABLE), make_page("901", "OPS", "Held", ()), [("A", "held yak")])
                await conn.execute("SET lock_timeout = 0")
        finally:
            await holder.close()
        await tick(rt, 0)  # the table is free: the minute tick counts it
        async with rt.pool.connection() as conn:
            assert await kept(conn) == await truth(conn)
    finally:
        await rt.close()
