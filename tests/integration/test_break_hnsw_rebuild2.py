"""Fault injection on the revised `rebuild-hnsw-index` (app/hnsw.py) and the start-up that skips existing
indexes (app/db.py `_existing`): defects found by trying to break ef9c040.

Each test fails on the code it was written against, for the reason its docstring gives.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import psycopg
import pytest

from app.db import migrate, vector_index_names
from app.hnsw import rebuild_hnsw_index
from tests.conftest import make_settings
from tests.integration.test_hnsw_rebuild import INDEX, TABLE, _connect, _hnsw_indexes, _insert, _unit

pytestmark = pytest.mark.timeout(180)


def _with_search_path(url: str, path: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={path}')}"


async def test_a_start_in_its_own_schema_gets_the_indexes_another_schema_has(db_url: str) -> None:
    """A second deployment in the same database, in a schema of its own found first on its search_path (the
    default search_path is `"$user", public`: a role with a schema of its name). `CREATE TABLE IF NOT EXISTS`
    creates `tenant.data_confluence`; `_existing` then asks `to_regclass('<index name>')`, which searches the
    whole search_path and finds `public`'s indexes of the same name, so none is created on the new table: no
    unique node_id (every `ON CONFLICT (node_id)` write fails), no HNSW index, no full-text indexes. Before
    ef9c040, `CREATE INDEX IF NOT EXISTS` looked only in the table's own schema and created them."""
    async with await _connect(db_url) as conn:
        await conn.execute("CREATE SCHEMA tenant")
    tenant_url = _with_search_path(db_url, "tenant,public")
    await migrate(tenant_url, make_settings(database_url=tenant_url))
    async with await _connect(tenant_url) as conn:
        row = await (
            await conn.execute(
                "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'data_confluence'::regclass"
            )
        ).fetchone()
        assert row is not None and row[0] == "tenant"  # the start made its own table
        rows = await (
            await conn.execute(
                "SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = 'tenant.data_confluence'::regclass AND NOT i.indisprimary"
            )
        ).fetchall()
    made = sorted(str(r[0]) for r in rows)
    assert made == sorted(vector_index_names("confluence").values()), f"tenant.data_confluence's indexes: {made}"


async def test_a_table_without_its_hnsw_index_gets_one_in_one_run(db_url: str) -> None:
    """The table has no HNSW index (dropped by hand, e.g. to bulk-load; or the `reindex` shadow's build was never
    run). `rebuild_hnsw_index` reads `before` as None and builds `cv_hnsw_rebuild_<oid>`, then `_swap` renames the
    live index aside -- which does not exist -- and the run fails with "relation ... does not exist"
    (`HnswRebuildFailed`), leaving the index under the rebuild name; only a second run renames it. The
    docstring's "a `new` index without any under `name` only takes the name" is the path the first run needs."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(30, seed=31), "row")
        await conn.execute(f"DROP INDEX {INDEX}")
    settings = make_settings(database_url=db_url)
    try:
        report = await rebuild_hnsw_index(settings)
    finally:
        async with await _connect(db_url) as conn:
            indexes = await _hnsw_indexes(conn)
    assert report.rebuilt and indexes == [(INDEX, True)], indexes


_BUILD_WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND query ILIKE 'CREATE INDEX CONCURRENTLY%%' AND wait_event_type = 'Lock'"
)


async def test_a_start_that_recounts_does_not_wait_for_the_build_and_hold_up_writes(db_url: str) -> None:
    """The counts of the table are to be redone at this start (`ensure_term_counts`: "counts deleted by hand", a
    restore, a TRUNCATE under REPEATABLE READ). While `rebuild-hnsw-index` builds (its CREATE INDEX CONCURRENTLY
    holds SHARE UPDATE EXCLUSIVE on the table for the whole build -- here it is held at its last wait by a
    session with an old snapshot on another table), the start's `LOCK TABLE ... SHARE ROW EXCLUSIVE` waits for
    the whole build while holding the migration lock; and, queued for that lock, it makes every write to the
    table wait behind it. The commit's point ("starts queued behind the hour-long concurrent build") holds only
    when the counts are kept."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(30, seed=41), "row")
    old = await _connect(db_url)
    await old.set_autocommit(False)
    await old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    await old.execute("SELECT 1")  # a snapshot, no lock on any table
    settings = make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40)
    build = asyncio.create_task(rebuild_hnsw_index(settings))
    start: asyncio.Task[None] | None = None
    try:
        async with await _connect(db_url) as watcher:
            for _ in range(600):
                row = await (await watcher.execute(_BUILD_WAITING)).fetchone()
                if row is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the build never waited")
            await watcher.execute("DELETE FROM cv_term_counts WHERE relid = %s::regclass", (TABLE,))
            start = asyncio.create_task(migrate(db_url, settings))  # a worker starting
            done, _ = await asyncio.wait({start}, timeout=10)
            waiting = await (
                await watcher.execute(
                    "SELECT left(query, 60), wait_event FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query NOT ILIKE 'CREATE INDEX%%'"
                )
            ).fetchall()
            write_held = False
            try:
                await watcher.execute("SET statement_timeout = '2s'")
                await _insert(watcher, _unit(1, seed=42), "during")
            except psycopg.errors.QueryCanceled:
                write_held = True
            finally:
                await watcher.execute("SET statement_timeout = 0")
            assert done, f"the start waited for the HNSW build in {waiting}; a write held behind it: {write_held}"
    finally:
        await old.close()
        if start is not None:
            await asyncio.wait_for(start, timeout=60)
        await asyncio.wait_for(build, timeout=60)
