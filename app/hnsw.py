"""`rebuild-hnsw-index`: rebuild the vector table's HNSW index with other build parameters, while search and
writes go on.

pgvector fixes an HNSW index's `m` and `ef_construction` when it builds it (pgvector README, "HNSW": m 2-100,
default 16; ef_construction 4-1000, default 64, at least 2 x m). With the defaults, on a table of about a million
chunks, some true neighbours are not reachable in the graph at all, so no `hnsw.ef_search` finds them
(bench/search_scale.py at 1M: recall@10 flat at 0.92 from ef_search 400 on). The settings HNSW_M and
HNSW_EF_CONSTRUCTION shape every new index; this command applies them to the existing one. `reindex` would
too, but it re-embeds every page.

The new index is built `CREATE INDEX CONCURRENTLY` under a name of its own (pgvector README, "Indexing": create
indexes concurrently in production, so writes are not blocked). Then one short transaction renames the old index
aside and the new one into its name (renaming takes a lock that reads and writes pass), and the old one is
dropped `CONCURRENTLY` afterwards: that drop waits for transactions still using the table (an idle session
holding one waits it out), but by then the table's index has its name and the new parameters, and nothing else
waits on the rebuild. Both indexes are valid answers while both exist. Every step can be interrupted: a run finds
what the previous one left (an index renamed aside is dropped; a finished new index is swapped in; a half-built
one is dropped and built again). It holds `app.reindex.REINDEX_LOCK`, so it never meets a `reindex` renaming the
same table's indexes, and takes the migration lock for the renames, so a service starting meanwhile always finds
the index under its name and never builds a second one.
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


def retired_name(table_oid: int) -> str:
    """The old index's name between the swap and its drop."""
    return f"cv_hnsw_retired_{table_oid}"


#: How long the drop of the old index waits for transactions still using the table before it gives up (the
#: new index is in place by then; the next run drops the old one). Also bounds each rename's wait.
DROP_WAIT_SECONDS = 300


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
    except psycopg.Error as exc:
        if _connection_lost(exc):
            raise DatabaseUnavailable(f"the HNSW rebuild could not reach Postgres or lost it: {exc}") from exc
        raise HnswRebuildFailed(f"Postgres refused the HNSW rebuild: {exc}") from exc


def _connection_lost(exc: psycopg.Error) -> bool:
    """A connection that failed or broke, or a server shutting down (SQLSTATE class 08, 57P01-57P03), as opposed
    to Postgres answering no: a cancel or statement/lock timeout (57014, 55P03), out of memory or disk (class 53),
    a bad value (22023) are refusals, although psycopg raises some of them as `OperationalError`."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in {"57P01", "57P02", "57P03"}


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
            oid = int(oid_row[0])
            live_valid = await _finish_interrupted(conn, physical, name, rebuild_name(oid), retired_name(oid), console)
            before = await hnsw_parameters(conn, table)
            rebuilt = False
            if before != wanted or force or not live_valid:
                if maintenance_work_mem is not None:
                    await conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (maintenance_work_mem,))
                build = hnsw_index_sql(
                    table,
                    vector_type,
                    m=wanted[0],
                    ef_construction=wanted[1],
                    name=rebuild_name(oid),
                    concurrently=True,
                )
                await _with_progress(conn, url, physical, build, console)
                await _swap(conn, physical, name, rebuild_name(oid), retired_name(oid))
                await _drop_retired(conn, physical, name, retired_name(oid), console)
                rebuilt = True
            size = await (
                await conn.execute(
                    "SELECT pg_relation_size(i.indexrelid) FROM pg_index AS i"
                    " JOIN pg_class AS c ON c.oid = i.indexrelid"
                    " WHERE i.indrelid = to_regclass(quote_ident(%s)) AND c.relname = %s",
                    (physical, name),
                )
            ).fetchone()
            after = await hnsw_parameters(conn, table)
            if after is None:  # dropped by hand meanwhile: say so rather than report a rebuild
                raise HnswRebuildFailed(f"the HNSW index of {physical} disappeared during the rebuild: run it again")
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


async def _finish_interrupted(
    conn: AsyncConnection[Any], physical: str, name: str, new: str, retired: str, console: Console | None
) -> bool:
    """Take over what an interrupted run left, and say whether the index under `name` is valid.

    An old index renamed aside (`retired`, valid or left INVALID by a cancelled drop) is dropped. A finished,
    valid `new` index is swapped in (so a build is never thrown away); a half-built (INVALID) one is dropped."""
    present = await _indexes(conn, physical, name, new, retired)
    if retired in present:
        await _drop_retired(conn, physical, name, retired, console)
    if new in present:
        if present[new]:
            await _swap(conn, physical, name, new, retired)
            await _drop_retired(conn, physical, name, retired, console)
        else:
            await _drop_retired(conn, physical, name, new, console)
    return (await _indexes(conn, physical, name)).get(name, False)


async def _indexes(conn: AsyncConnection[Any], physical: str, *names: str) -> dict[str, bool]:
    """Which of `names` are indexes of the table `physical`, each with whether it is valid (`indisvalid`); never
    another table's index of the same name in another schema."""
    rows = await (
        await conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = to_regclass(quote_ident(%s)) AND c.relname = ANY (%s)",
            (physical, list(names)),
        )
    ).fetchall()
    return {str(relname): bool(valid) for relname, valid in rows}


async def _swap(conn: AsyncConnection[Any], physical: str, name: str, new: str, retired: str) -> None:
    """In one transaction, under the migration lock: the old index (if any) becomes `retired`, the new one
    `name`.

    `ALTER INDEX ... RENAME` takes SHARE UPDATE EXCLUSIVE on the index (PostgreSQL docs, ALTER INDEX), which
    reads and writes pass, so neither waits; a service starting meanwhile (it creates a missing index under the
    migration lock) finds it under its name before and after."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{DROP_WAIT_SECONDS}s",))
            if name in await _indexes(conn, physical, name):
                await _rename(conn, name, retired)
            await _rename(conn, new, name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


async def _rename(conn: AsyncConnection[Any], old: str, new: str) -> None:
    rename = sql.SQL("ALTER INDEX {old} RENAME TO {new}").format(old=sql.Identifier(old), new=sql.Identifier(new))
    await conn.execute(rename)


async def _drop_retired(
    conn: AsyncConnection[Any], physical: str, name: str, retired: str, console: Console | None
) -> None:
    """Drop `retired` (the old index renamed aside, or a half-built leftover), waiting at most `DROP_WAIT_SECONDS`
    for the transactions still using the table (`DROP INDEX CONCURRENTLY` waits for every one, idle ones too).
    Raises `HnswRebuildFailed` saying which index answers when it cannot; the next run drops it."""
    drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {i}").format(i=sql.Identifier(retired))
    await conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{DROP_WAIT_SECONDS}s",))
    try:
        if console is None:
            await conn.execute(drop)
        else:
            with console.status(f"dropping the old index {retired} once the transactions using the table end…"):
                await conn.execute(drop)
    except psycopg.Error as exc:
        if _connection_lost(exc):
            raise
        raise HnswRebuildFailed(
            f"the index {name} answers searches, but {retired}, left by this run or an interrupted one, could not be "
            f"dropped ({exc}); run the command again to drop it (an open transaction on the table holds it: see "
            "pg_stat_activity)"
        ) from exc
    finally:
        await conn.execute("SELECT set_config('lock_timeout', '0', false)")


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
