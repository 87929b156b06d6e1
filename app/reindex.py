"""`reindex`: rebuild every vector with the configured model into a shadow table, swap it in, lose no edit.

Live workers keep indexing into the old table (with the old model) while the rebuild runs, so the new table
must end with every change they made meanwhile. Changes are found with the database's clock, never this
process's: every writer of `cv_pages` stamps `updated_at = now()`, its transaction's start time, so a round
that starts at mark M re-processes the pages whose `updated_at >= M`, where M is the start of the oldest
transaction still open when the round starts (a transaction open then may commit later with an older stamp).

1. A session advisory lock: a second reindex refuses at once (`ReindexInProgress`).
2. A fresh shadow table, without its HNSW index, and `cv_reindex_pages`, the shadow's page records (a copy of
   `cv_pages`' columns; `cv_pages` itself keeps describing the live table until the swap).
3. Bulk load: every page indexed at the first mark is fetched, checked like the pipeline does
   (`app.pipeline.admit_page`: status, who may read it), chunked, embedded and written. A page that fails is
   recorded and reported, and the rebuild goes on.
4. The HNSW index is built over the loaded rows, then ANALYZE (pgvector's README: build after the bulk load).
5. Catch-up rounds re-process what changed since the previous mark, until a round finds few changes.
6. One transaction swaps: it takes the model row of `cv_index_meta` FOR UPDATE (writes hold it FOR SHARE while
   they write), then `cv_pages` and the live table (reads go on), processes what changed since the last mark,
   copies the shadow's records into `cv_pages`, renames the tables and indexes, and defers a page job for each
   page the new table could not take (failed, or a newer version recorded than the one rebuilt). Readers see
   the old table or the new one, never neither.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import procrastinate.exceptions as pexc
import psycopg
from psycopg import AsyncConnection, sql
from rich.console import Console

from app.chunking import embed_text
from app.config import Settings
from app.db import database_url, fit_identifier, vector_index_names
from app.errors import ConfluenceVectorsError, PageNotFound
from app.models import ContentType, Page
from app.pipeline import admit_page, document_nodes
from app.queue import PageJobRequest, defer_pages
from app.runtime import Runtime
from app.vector_store import INDEXED_COLUMNS, VectorStore, indexed_columns

log = logging.getLogger(__name__)

#: Session advisory lock key of a running reindex (beside app.db's migration lock, 727_271_001).
REINDEX_LOCK = 727_271_002
#: The shadow's page records (one reindex at a time, under `REINDEX_LOCK`).
STATE_TABLE = "cv_reindex_pages"
#: A catch-up round that finds at most this many changed pages hands them to the locked swap instead.
SETTLED = 20
#: Catch-up rounds before the swap takes whatever is left under its locks (edits faster than we re-process).
MAX_ROUNDS = 8
#: `VECTOR_TABLE`'s own limit (app.config): a shadow name within it derives names that all fit 63 bytes.
MAX_TABLE_NAME = 51


class ReindexInProgress(ConfluenceVectorsError):
    """Another reindex is running against this database: wait for it to finish (one at a time)."""


@dataclass
class ReindexReport:
    """What a reindex did. `failed` holds "page_id: error" for pages the new table could not take."""

    table: str
    pages: int = 0
    chunks: int = 0
    removed: int = 0
    caught_up: int = 0
    rounds: int = 0
    requeued: int = 0
    failed: list[str] = field(default_factory=list)


def short_name(name: str, limit: int = MAX_TABLE_NAME) -> str:
    """`name` if it has at most `limit` characters, else its head and a digest of the whole (unique, stable)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - len(digest) - 1]}_{digest}"


def shadow_table(table: str) -> str:
    """The shadow's `VECTOR_TABLE`-style name for `table`: `<table>_reindex`, hash-shortened to 51 characters
    so its physical table and index names stay within Postgres's 63 bytes and distinct from `table`'s."""
    return short_name(f"{table}_reindex")


def swap_names(table: str, shadow: str) -> list[tuple[str, str]]:
    """(shadow index name, live index name) for every index `ensure_vector_table` makes, by role."""
    live, staged = vector_index_names(table), vector_index_names(shadow)
    return [(staged[role], live[role]) for role in live]


async def reindex(settings: Settings, console: Console | None = None) -> ReindexReport:
    """Re-embed every indexed page with `settings.embed_model` into a shadow table and swap it in.

    Raises `ReindexInProgress` when another reindex holds the lock. Pages that fail are listed in the
    report's `failed` and given a page job after the swap, never silently left out.
    """
    url = database_url(settings)
    lock = await psycopg.AsyncConnection.connect(url, autocommit=True)
    async with lock:
        row = await (await lock.execute("SELECT pg_try_advisory_lock(%s)", (REINDEX_LOCK,))).fetchone()
        if not row or not row[0]:
            raise ReindexInProgress()
        try:
            return await _reindex(settings, url, console)
        finally:
            await lock.execute("SELECT pg_advisory_unlock(%s)", (REINDEX_LOCK,))


async def _reindex(settings: Settings, url: str, console: Console | None) -> ReindexReport:
    shadow = shadow_table(settings.vector_table)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # What an interrupted reindex left behind, its model record included (the shadow starts afresh).
        await conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=sql.Identifier(f"data_{shadow}")))
        await conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=sql.Identifier(STATE_TABLE)))
        meta = await (await conn.execute("SELECT to_regclass('cv_index_meta') IS NOT NULL")).fetchone()
        if meta and meta[0]:
            await conn.execute("DELETE FROM cv_index_meta WHERE table_name = %s", (shadow,))
    # The runtime migrates the schema and creates the shadow table, recording the new model for it.
    rt = await Runtime.open(settings.model_copy(update={"vector_table": shadow}))
    try:
        job = _Rebuild(rt, settings, shadow, console)
        return await job.run()
    finally:
        await rt.close()


class _Rebuild:
    def __init__(self, rt: Runtime, settings: Settings, shadow: str, console: Console | None) -> None:
        self.rt = rt
        self.settings = settings
        self.shadow = shadow
        self.console = console
        self.store = VectorStore(rt.pool, shadow, track_state=False, embed_model=settings.embed_model)
        self.report = ReindexReport(table=settings.physical_table)

    async def run(self) -> ReindexReport:
        await self.rt.embedder.check_model()  # a missing model fails here, not on every page
        async with self.rt.pool.connection() as conn:
            # Loaded first, indexed after: keep the definition of the HNSW index the shadow was created with
            # (whatever its column type and operator class) and drop it while the table is empty.
            name = vector_index_names(self.shadow)["embedding"]
            row = await (
                await conn.execute("SELECT pg_get_indexdef(to_regclass(%s))", (sql.Identifier(name).as_string(conn),))
            ).fetchone()
            if row is None or row[0] is None:
                raise ConfluenceVectorsError(f"the shadow table has no vector index {name}: its schema is not ours")
            hnsw_definition = str(row[0])
            await conn.execute(sql.SQL("DROP INDEX {i}").format(i=sql.Identifier(name)))
            await conn.execute(
                sql.SQL("CREATE TABLE {s} (LIKE cv_pages INCLUDING DEFAULTS, PRIMARY KEY (page_id))").format(
                    s=sql.Identifier(STATE_TABLE)
                )
            )
            mark = await _mark(conn)
            cur = await conn.execute(
                "SELECT page_id, content_type FROM cv_pages WHERE status = 'indexed' ORDER BY page_id"
            )
            pages = [(str(r[0]), r[1]) for r in await cur.fetchall()]
        await self._process(pages, progress=True)
        async with self.rt.pool.connection() as conn:
            await conn.execute(hnsw_definition.encode())  # Postgres's own text of the index it made
            await conn.execute(sql.SQL("ANALYZE {t}").format(t=sql.Identifier(f"data_{self.shadow}")))
        while self.report.rounds < MAX_ROUNDS:
            async with self.rt.pool.connection() as conn:
                next_mark = await _mark(conn)
                changed = await _changed_since(conn, mark)
            if len(changed) <= SETTLED:
                break
            self.report.rounds += 1
            self.report.caught_up += len(changed)
            await self._process(changed)
            mark = next_mark
        await self._swap(mark)
        log.info("reindex done", extra={k: v for k, v in self.report.__dict__.items() if k != "failed"})
        return self.report

    async def _process(self, pages: Sequence[tuple[str, str]], *, progress: bool = False) -> None:
        for done, (page_id, content_type) in enumerate(pages, 1):
            await self._rebuild(page_id, cast(ContentType, content_type))
            if progress and self.console is not None and done % 50 == 0:
                self.console.print(f"{done}/{len(pages)} pages re-embedded")

    async def _rebuild(self, page_id: str, content_type: ContentType) -> None:
        """Make the shadow hold what Confluence says of the page now, and record it; never raises for the page."""
        try:
            try:
                page = await self.rt.confluence.get_page(page_id, content_type)
            except PageNotFound:
                await self._remove(page_id, "not found in Confluence", None)
                return
            reason = await admit_page(self.rt, page)
            if reason is not None:
                await self._remove(page_id, reason, page)
                return
            nodes, meta_hash = await document_nodes(self.rt, page)  # body, comments and attachments
            stored = await self.store.node_ids(page.id)
            missing = [node for node in nodes if node.node_id not in stored]
            vectors = await self.rt.embedder.aembed_many([embed_text(node) for node in missing]) if missing else []
            await self.store.replace_page(
                page,
                nodes,
                {node.node_id: vector for node, vector in zip(missing, vectors, strict=True)},
                page_meta_hash=meta_hash,
            )
            await self._record(page.id, "indexed", None, indexed_columns(page, [n.node_id for n in nodes], meta_hash))
            self.report.pages += 1
            self.report.chunks += len(nodes)
        except Exception as exc:  # one bad page is reported and requeued, never the end of the rebuild
            error = f"{type(exc).__name__}: {exc}"
            log.warning("reindex: page failed", extra={"page_id": page_id, "error": error})
            self.report.failed.append(f"{page_id}: {error}")
            await self._record(page_id, "failed", error[:2000], {"content_type": content_type})

    async def _remove(self, page_id: str, reason: str, page: Page | None) -> None:
        await self.store.remove_rows(page_id)
        columns: dict[str, Any] = {"chunk_count": 0}
        if page is not None:
            columns.update(content_type=page.content_type, space_key=page.space_key, title=page.title,
                           version=page.version)  # fmt: skip
        await self._record(page_id, "deleted", reason, columns)
        self.report.removed += 1

    async def _record(self, page_id: str, status: str, reason: str | None, columns: dict[str, Any]) -> None:
        """Upsert the shadow's record of a page (`status` indexed, deleted or failed; `reason` why not indexed)."""
        values = {**columns, "page_id": page_id, "status": status, "reason": reason}
        names = list(values)
        statement = sql.SQL(
            "INSERT INTO {s} ({cols}) VALUES ({vals}) ON CONFLICT (page_id) DO UPDATE SET {sets}"
        ).format(
            s=sql.Identifier(STATE_TABLE),
            cols=sql.SQL(", ").join(map(sql.Identifier, names)),
            vals=sql.SQL(", ").join(map(sql.Placeholder, names)),
            sets=sql.SQL(", ").join(
                sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                for c in [*INDEXED_COLUMNS, "status", "reason"]
            ),
        )
        async with self.rt.pool.connection() as conn:
            await conn.execute(statement, values)

    # --- the swap --------------------------------------------------------------------------------------
    async def _swap(self, mark: Any) -> None:
        table = self.settings.vector_table
        async with self.rt.pool.connection() as conn, conn.transaction():
            # Lock order as the writers': the model row (replace_page holds it FOR SHARE while writing), then
            # cv_pages (every writer's first table), then the live table (readers go on until the rename).
            await conn.execute("SELECT 1 FROM cv_index_meta WHERE table_name = %s FOR UPDATE", (table,))
            await conn.execute("LOCK TABLE cv_pages IN SHARE ROW EXCLUSIVE MODE")
            await conn.execute(sql.SQL("LOCK TABLE {t} IN EXCLUSIVE MODE").format(t=sql.Identifier(f"data_{table}")))
            changed = await _changed_since(conn, mark)
            self.report.caught_up += len(changed)
            await self._process(changed)
            requeue = await self._adopt_records(conn)
            await _rename(conn, table, self.shadow)
            await conn.execute(
                """INSERT INTO cv_index_meta (table_name, embed_model, embed_dim) VALUES (%s, %s, %s)
                   ON CONFLICT (table_name) DO UPDATE SET embed_model = EXCLUDED.embed_model,
                       embed_dim = EXCLUDED.embed_dim, created_at = now()""",
                (table, self.settings.embed_model, self.settings.embed_dim),
            )
            await conn.execute("DELETE FROM cv_index_meta WHERE table_name = %s", (self.shadow,))
            await conn.execute(sql.SQL("DROP TABLE {s}").format(s=sql.Identifier(STATE_TABLE)))
            await _defer(conn, requeue)
        self.report.requeued = len(requeue)

    async def _adopt_records(self, conn: AsyncConnection[Any]) -> list[PageJobRequest]:
        """Make `cv_pages` describe the new table; return the pages it could not take, their hashes cleared so
        their next job rewrites them whole."""
        s = sql.Identifier(STATE_TABLE)
        cur = await conn.execute(
            sql.SQL(
                """SELECT p.page_id, p.content_type FROM cv_pages AS p LEFT JOIN {s} AS s USING (page_id)
                   WHERE (s.page_id IS NULL AND p.status = 'indexed')
                      OR s.status = 'failed'
                      OR (p.status IN ('indexed', 'deleted', 'skipped') AND p.version > s.version)
                      OR (s.status = 'deleted' AND s.version IS NULL AND p.status = 'indexed')"""
            ).format(s=s)
        )
        requeue = [PageJobRequest(str(r[0]), r[1], "reindex") for r in await cur.fetchall()]
        ids = [r.page_id for r in requeue]
        copied = sql.SQL(", ").join(sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c)) for c in INDEXED_COLUMNS)
        await conn.execute(
            sql.SQL(
                """UPDATE cv_pages AS p SET {copied}, status = 'indexed', reason = NULL, indexed_at = now(),
                          last_error = NULL, attempts = 0, updated_at = now()
                   FROM {s} AS s
                   WHERE p.page_id = s.page_id AND s.status = 'indexed' AND NOT (p.page_id = ANY(%s))"""
            ).format(copied=copied, s=s),
            (ids,),
        )
        await conn.execute(
            sql.SQL(
                """UPDATE cv_pages AS p SET status = 'deleted', reason = s.reason, chunk_count = 0,
                          content_hash = NULL, meta_hash = NULL, chunk_ids = NULL,
                          version = COALESCE(s.version, p.version), updated_at = now()
                   FROM {s} AS s
                   WHERE p.page_id = s.page_id AND s.status = 'deleted' AND NOT (p.page_id = ANY(%s))"""
            ).format(s=s),
            (ids,),
        )
        await conn.execute(
            sql.SQL(
                """UPDATE cv_pages AS p SET content_hash = NULL, meta_hash = NULL, updated_at = now(),
                          last_error = COALESCE((SELECT 'reindex: ' || s.reason FROM {s} AS s
                                                 WHERE s.page_id = p.page_id AND s.status = 'failed'),
                                                p.last_error)
                   WHERE p.page_id = ANY(%s)"""
            ).format(s=s),
            (ids,),
        )
        return requeue


async def _mark(conn: AsyncConnection[Any]) -> Any:
    """The database time from which changes must be re-processed: now, or the start of the oldest transaction
    still open in this database (it may commit after this with that older `now()` as its `updated_at`).

    Sessions of other roles show no `xact_start` without `pg_read_all_stats`: run reindex as the service's role.
    """
    row = await (
        await conn.execute(
            """SELECT least(now(), min(xact_start)) FROM pg_stat_activity
               WHERE datname = current_database() AND xact_start IS NOT NULL"""
        )
    ).fetchone()
    assert row is not None
    return row[0]


async def _changed_since(conn: AsyncConnection[Any], mark: Any) -> list[tuple[str, str]]:
    """Pages whose record changed at or after `mark`: indexed, deleted, failed, or newly announced."""
    cur = await conn.execute(
        "SELECT page_id, content_type FROM cv_pages WHERE updated_at >= %s ORDER BY page_id", (mark,)
    )
    return [(str(r[0]), r[1]) for r in await cur.fetchall()]


async def _rename(conn: AsyncConnection[Any], table: str, shadow: str) -> None:
    """The shadow takes the live table's name, and its indexes, primary key and id sequence theirs, so the
    next start-up (and `PGVectorStore`) finds everything where it expects it."""
    ident = sql.Identifier
    live, staged = f"data_{table}", f"data_{shadow}"
    # The dropped table's word counts (app.term_counts) go with it; the shadow's, keyed by its oid, follow the rename.
    # Deltas before counts: the order of every statement touching both (app.term_counts), or a fold deadlocks.
    await conn.execute("DELETE FROM cv_term_deltas WHERE relid = %s::regclass", (live,))
    await conn.execute("DELETE FROM cv_term_counts WHERE relid = %s::regclass", (live,))
    await conn.execute(sql.SQL("DROP TABLE {t}").format(t=ident(live)))
    await conn.execute(sql.SQL("ALTER TABLE {s} RENAME TO {t}").format(s=ident(staged), t=ident(live)))
    renames = [("INDEX", old, new) for old, new in swap_names(table, shadow)]
    row = await (
        await conn.execute(
            """SELECT (SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                       WHERE i.indrelid = %s::regclass AND i.indisprimary),
                      (SELECT c.relname FROM pg_class AS c WHERE c.oid = pg_get_serial_sequence(%s, 'id')::regclass)""",
            (live, live),
        )
    ).fetchone()
    assert row is not None
    renames.append(("INDEX", row[0], fit_identifier(f"{live}_pkey")))
    renames.append(("SEQUENCE", row[1], fit_identifier(f"{live}_id_seq")))
    for kind, old, new in renames:
        if old != new:
            await conn.execute(
                sql.SQL("ALTER {k} {o} RENAME TO {n}").format(k=sql.SQL(kind), o=ident(old), n=ident(new))
            )


async def _defer(conn: AsyncConnection[Any], requests: Sequence[PageJobRequest]) -> None:
    """Jobs for `requests` inside the swap. A job deferred by another transaction between our check and our
    insert makes Postgres refuse ours: undo to a savepoint and look again (it then joins that job)."""
    if not requests:
        return
    for _ in range(5):
        try:
            async with conn.transaction():
                await defer_pages(conn, requests)
            return
        except pexc.AlreadyEnqueued:
            continue
    raise ConfluenceVectorsError("could not defer the reindex's follow-up jobs: the queue kept changing")
