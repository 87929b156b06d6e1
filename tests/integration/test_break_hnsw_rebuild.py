"""Fault injection on `rebuild-hnsw-index` (app/hnsw.py): defects found by trying to break it.

Each test fails on the code it was written against, for the reason its docstring gives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from app.db import hnsw_parameters, migrate
from app.hnsw import HnswRebuildFailed, rebuild_hnsw_index
from tests.conftest import make_settings
from tests.integration.test_hnsw_rebuild import INDEX, TABLE, _connect, _hnsw_indexes, _insert, _unit

pytestmark = pytest.mark.timeout(180)


async def _poll(
    conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] = (), seconds: float = 30
) -> Any:
    """Poll `query` until it returns a row (a true first column), at most `seconds`."""
    for _ in range(int(seconds / 0.05)):
        row = await (await conn.execute(query, params)).fetchone()
        if row is not None and row[0]:
            return row
        await asyncio.sleep(0.05)
    pytest.fail(f"never true: {query}")


_DROP_WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND query ILIKE 'DROP INDEX CONCURRENTLY%%' AND wait_event_type = 'Lock'"
)
_BUILD_WAITING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND query ILIKE 'CREATE INDEX CONCURRENTLY%%' AND wait_event_type = 'Lock'"
)

_DROP_GONE = (
    "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
    "AND query ILIKE 'DROP INDEX CONCURRENTLY%%' AND state = 'active')"
)


async def _idle_reader(url: str) -> psycopg.AsyncConnection[Any]:
    """A session idle in a transaction that has read the table (a stock PGVectorStore / SQLAlchemy client
    between statements): it holds AccessShareLock on the table until it ends."""
    reader = await _connect(url)
    await reader.set_autocommit(False)
    await reader.execute(f"SELECT id FROM {TABLE} LIMIT 1")
    return reader


async def test_a_service_start_is_not_blocked_while_the_swap_waits_for_an_idle_reader(db_url: str) -> None:
    """The swap's `DROP INDEX CONCURRENTLY` waits for every transaction holding a lock on the table -- with no
    bound -- while the rebuild holds `MIGRATION_LOCK`. Every `serve` / `worker` / `reindex` start (`migrate`
    takes the same lock with `pg_advisory_lock`, no timeout) then hangs for as long as some unrelated session
    stays idle in a transaction. The new index is already valid at that point: nothing needs the lock while
    the old one is waited out (renaming the old index away first, then dropping it outside the lock, would do)."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(50, seed=11), "row")
    reader = await _idle_reader(db_url)
    settings = make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40)
    build = asyncio.create_task(rebuild_hnsw_index(settings))
    try:
        async with await _connect(db_url) as watcher:
            await _poll(watcher, _DROP_WAITING)
        # A worker (re)starting now, with the settings the rebuild applies.
        await asyncio.wait_for(migrate(db_url, settings), timeout=15)
    finally:
        await reader.close()
        await asyncio.wait_for(build, timeout=60)


async def test_a_rerun_after_an_interrupted_drop_keeps_a_valid_index(db_url: str) -> None:
    """Interrupt the swap while its `DROP INDEX CONCURRENTLY` waits (Ctrl-C on a command that seems to hang;
    here: the statement is cancelled). Postgres leaves the old index INVALID; the new, finished, valid index is
    what searches use. The next run (`_finish_interrupted`) sees the old name present and drops the new index
    -- the only valid one -- and then reads the parameters of the INVALID old index as `before`: after a
    `--force` rebuild (parameters unchanged) it reports "nothing to do" and leaves the table with no usable
    HNSW index at all (every search a sequential scan)."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(50, seed=12), "row")
    settings = make_settings(database_url=db_url)  # 16 / 64, what the index has: a --force rebuild
    reader = await _idle_reader(db_url)
    build = asyncio.create_task(rebuild_hnsw_index(settings, force=True))
    try:
        async with await _connect(db_url) as watcher:
            row = await _poll(watcher, _DROP_WAITING)
            await watcher.execute("SELECT pg_cancel_backend(%s)", (row[0],))
        with pytest.raises(Exception):  # noqa: B017 -- whichever error the cancel is reported as
            await asyncio.wait_for(build, timeout=60)
    finally:
        await reader.close()
    async with await _connect(db_url) as conn:
        assert any(valid for _, valid in await _hnsw_indexes(conn)), "the interrupted run keeps a valid index"
    report = await rebuild_hnsw_index(settings)  # the user runs it again
    async with await _connect(db_url) as conn:
        indexes = await _hnsw_indexes(conn)
    assert indexes == [(INDEX, True)], f"after the rerun ({report}): {indexes}"


async def test_a_cancelled_build_is_reported_as_refused_not_as_a_lost_database(db_url: str) -> None:
    """`rebuild_hnsw_index` documents `HnswRebuildFailed` for "a cancel" (and out of memory or disk). Postgres
    reports those as SQLSTATE classes 57 (query_canceled, also a statement_timeout) and 53, which psycopg maps
    to `OperationalError` -- so the rebuild says "the HNSW rebuild lost Postgres" (`DatabaseUnavailable`)
    while Postgres is up and only the statement was cancelled."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(20, seed=13), "row")
    holder = await _connect(db_url)
    await holder.set_autocommit(False)
    await _insert(holder, _unit(1, seed=14), "open")  # holds the build at "waiting for writers"
    build = asyncio.create_task(
        rebuild_hnsw_index(make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40))
    )
    try:
        async with await _connect(db_url) as watcher:
            row = await _poll(watcher, _BUILD_WAITING)
            await watcher.execute("SELECT pg_cancel_backend(%s)", (row[0],))
        with pytest.raises(HnswRebuildFailed, match="cancel"):
            await asyncio.wait_for(build, timeout=60)
    finally:
        await holder.close()
    async with await _connect(db_url) as conn:
        assert await hnsw_parameters(conn, "confluence") == (16, 64)


async def test_a_command_killed_during_the_swap_does_not_make_a_start_build_a_second_index(db_url: str) -> None:
    """The command seems to hang in the swap (its `DROP INDEX CONCURRENTLY` waits for an idle reader) and is
    killed (SIGKILL, a closed terminal). The server-side DROP goes on and completes once the reader ends; the
    rename never comes: the table's only HNSW index is `cv_hnsw_rebuild_<oid>`. The next service start
    (`migrate`) does not know that name, so `CREATE INDEX IF NOT EXISTS <the index's name>` builds a whole second
    HNSW index -- not concurrently, so writes wait for the whole build and the start with them -- although
    app/hnsw.py says a service starting "never builds a second index under the old name"."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(50, seed=15), "row")
    reader = await _idle_reader(db_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFLUENCE_", "HNSW_", "DATABASE_"))}
    env.update(
        DATABASE_URL=db_url, CONFLUENCE_BASE_URL="http://127.0.0.1:9/wiki", HNSW_M="8", HNSW_EF_CONSTRUCTION="40"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "rebuild-hnsw-index"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with await _connect(db_url) as watcher:
            await _poll(watcher, _DROP_WAITING)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            await reader.close()
            # The orphaned DROP finishes server-side, then its session ends.
            await _poll(watcher, _DROP_GONE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await reader.close()
    settings = make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40)
    await migrate(db_url, settings)  # a worker starting
    async with await _connect(db_url) as conn:
        indexes = await _hnsw_indexes(conn)
    assert len(indexes) == 1, f"one HNSW index after the start, not a second one built beside it: {indexes}"
