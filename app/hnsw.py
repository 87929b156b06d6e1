"""`rebuild-hnsw-index`: rebuild the vector table's HNSW index with other build parameters, while search and
writes go on.

pgvector fixes an HNSW index's `m` and `ef_construction` when it builds it (pgvector README, "HNSW": m 2-100,
default 16; ef_construction 4-1000, default 64, at least 2 x m). With the defaults, on a table of about a million
chunks, some true neighbours are not reachable in the graph at all, so no `hnsw.ef_search` finds them
(bench/search_scale.py at 1M: recall@10 flat at 0.92 from ef_search 400 on). The settings HNSW_M and
HNSW_EF_CONSTRUCTION shape every new index; this command applies them to the existing one. `reindex` would
too, but it re-embeds every page.

The new index is built `CREATE INDEX CONCURRENTLY` under a name of its own (pgvector README, "Indexing": create
indexes concurrently in production, so writes are not blocked), then the old one is dropped `CONCURRENTLY` and
the new one takes its name. Both indexes are valid answers while both exist. Each step can be interrupted: a run
finds what the previous one left (a half-built index is dropped and built again; a finished one that lost its old
index only needs its name). It holds `app.reindex.REINDEX_LOCK`, so it never meets a `reindex` renaming the same
table's indexes, and takes the migration lock for the drop and rename, so a service starting meanwhile never
builds a second index under the old name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from rich.console import Console

from app.config import Settings
from app.db import (
    MIGRATION_LOCK,
    database_url,
    embedding_type,
    hnsw_index_sql,
    hnsw_parameters,
    vector_index_names,
)
from app.errors import ConfluenceVectorsError, DatabaseUnavailable
from app.reindex import REINDEX_LOCK, ReindexInProgress

log = logging.getLogger(__name__)

#: How often the build's progress is read from `pg_stat_progress_create_index` for the console.
PROGRESS_SECONDS = 5.0


class HnswRebuildFailed(ConfluenceVectorsError):
    """Postgres refused a step of the rebuild (a bad maintenance_work_mem, out of memory or disk, a cancel); what
    the step left is taken over by the next run."""


class VectorTableMissing(ConfluenceVectorsError):
    """There is no vector table to rebuild the index of (the service has never started on this database)."""


@dataclass(frozen=True, slots=True)
class HnswRebuildReport:
    """What `rebuild_hnsw_index` did: the (m, ef_construction) before and after, whether it built anything,
    seconds spent and the new index's size in bytes."""

    table: str
    before: tuple[int, int] | None
    after: tuple[int, int]
    rebuilt: bool
    seconds: float
    index_bytes: int


def rebuild_name(table_oid: int) -> str:
    """The new index's name while it is built: short and unique per table, whatever `VECTOR_TABLE` is (the
    index's own name, cut to 63 bytes, could not take a suffix)."""
    return f"cv_hnsw_rebuild_{table_oid}"


async def rebuild_hnsw_index(
    settings: Settings,
    console: Console | None = None,
    *,
    maintenance_work_mem: str | None = None,
    force: bool = False,
) -> HnswRebuildReport:
    """Rebuild `data_<VECTOR_TABLE>`'s HNSW index with `settings.hnsw_m` and `settings.hnsw_ef_construction`.

    Does nothing when the index already has them, unless `force`. `maintenance_work_mem` (e.g. "4GB") is set for
    the build only: pgvector builds fastest while the graph fits in it ("Index Build Time", pgvector README).
    Raises `ReindexInProgress` when a reindex or another rebuild holds the lock, `VectorTableMissing` without a
    vector table, `DatabaseUnavailable` when Postgres cannot be reached or goes away, `HnswRebuildFailed` when it
    refuses a step (the half-built index is left for the next run to drop).
    """
    try:
        return await _rebuild(settings, console, maintenance_work_mem=maintenance_work_mem, force=force)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"the HNSW rebuild lost Postgres: {exc}") from exc
    except psycopg.Error as exc:
        raise HnswRebuildFailed(f"Postgres refused the HNSW rebuild: {exc}") from exc


async def _rebuild(
    settings: Settings, console: Console | None, *, maintenance_work_mem: str | None, force: bool
) -> HnswRebuildReport:
    url = database_url(settings)
    table = settings.vector_table
    physical = f"data_{table}"
    name = vector_index_names(table)["embedding"]
    wanted = (settings.hnsw_m, settings.hnsw_ef_construction)
    started = time.monotonic()
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (REINDEX_LOCK,))).fetchone()
        if not row or not row[0]:
            raise ReindexInProgress("a reindex or another HNSW rebuild is running against this database: wait for it")
        try:
            oid_row = await (await conn.execute("SELECT to_regclass(quote_ident(%s))::oid", (physical,))).fetchone()
            vector_type = await embedding_type(conn, table)
            if oid_row is None or oid_row[0] is None or vector_type is None:
                raise VectorTableMissing(f"there is no vector table {physical}: start the service once first")
            new = rebuild_name(int(oid_row[0]))
            await _finish_interrupted(conn, name, new)
            before = await hnsw_parameters(conn, table)
            rebuilt = False
            if before != wanted or force:
                if maintenance_work_mem is not None:
                    await conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
                build = hnsw_index_sql(
                    table, vector_type, m=wanted[0], ef_construction=wanted[1], name=new, concurrently=True
                )
                await _with_progress(conn, url, physical, build, console)
                await _swap(conn, name, new)
                rebuilt = True
            size = await (
                await conn.execute("SELECT pg_relation_size(to_regclass(quote_ident(%s)))", (name,))
            ).fetchone()
            after = await hnsw_parameters(conn, table)
            assert after is not None
            return HnswRebuildReport(
                table=physical,
                before=before,
                after=after,
                rebuilt=rebuilt,
                seconds=time.monotonic() - started,
                index_bytes=int(size[0]) if size and size[0] is not None else 0,
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (REINDEX_LOCK,))


async def _finish_interrupted(conn: AsyncConnection[Any], name: str, new: str) -> None:
    """Take over what an interrupted run left: with the old index gone, a valid new one only needs its name;
    otherwise a new one (possibly INVALID, half-built) is dropped and built again."""
    rows = await (
        await conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
            "WHERE c.oid IN (to_regclass(quote_ident(%s)), to_regclass(quote_ident(%s)))",
            (name, new),
        )
    ).fetchall()
    present = {str(relname): bool(valid) for relname, valid in rows}
    if new not in present:
        return
    if name not in present and present[new]:
        await _swap(conn, name, new)
        return
    await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {i}").format(i=sql.Identifier(new)))


async def _swap(conn: AsyncConnection[Any], name: str, new: str) -> None:
    """Drop the old index and give the new one its name, under the migration lock (a service starting meanwhile
    would otherwise create a second index under the old name). `DROP INDEX CONCURRENTLY` waits for the searches
    using the old index instead of blocking the table; the rename takes a lock that reads and writes pass."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {i}").format(i=sql.Identifier(name)))
        rename = sql.SQL("ALTER INDEX {new} RENAME TO {i}").format(new=sql.Identifier(new), i=sql.Identifier(name))
        await conn.execute(rename)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


async def _with_progress(
    conn: AsyncConnection[Any], url: str, physical: str, build: sql.Composed, console: Console | None
) -> None:
    """Run `build`; with a console, show the phase and share of blocks done from `pg_stat_progress_create_index`
    (PostgreSQL docs, "Progress Reporting") every `PROGRESS_SECONDS`."""
    if console is None:
        await conn.execute(build)
        return
    with console.status(f"building the HNSW index of {physical}…") as status:

        async def watch() -> None:
            async with await AsyncConnection.connect(url, autocommit=True) as probe:
                while True:
                    await asyncio.sleep(PROGRESS_SECONDS)
                    row = await (
                        await probe.execute(
                            "SELECT phase, blocks_done, blocks_total FROM pg_stat_progress_create_index "
                            "WHERE relid = to_regclass(quote_ident(%s))",
                            (physical,),
                        )
                    ).fetchone()
                    if row is not None:
                        phase, done, total = row
                        share = f" {100 * done / total:.0f}% of blocks" if total else ""
                        status.update(f"building the HNSW index of {physical}: {phase}{share}")

        watcher = asyncio.create_task(watch())
        try:
            await conn.execute(build)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await watcher
