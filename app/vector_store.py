"""The vector table: readable by LlamaIndex's `PGVectorStore`, written only by us.

Stock `PGVectorStore.add` inserts: re-indexing a page duplicates its rows, and deleting then adding lets a
reader see the page half-written. Our write path swaps a page's rows in ONE transaction, as a diff:

* rows whose chunk is gone are deleted,
* rows whose chunk is unchanged are kept (their metadata refreshed in place if the page moved),
* rows for new chunks arrive by binary COPY,

and the page's state row is updated in the same transaction, after a version check, so a job holding an older
version of the page can never overwrite rows written from a newer one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.utils import node_to_metadata_dict
from pgvector import HalfVector
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from app.db import embedding_type
from app.errors import RetryableError
from app.models import Page

log = logging.getLogger(__name__)


#: The error recorded for a page job whose worker died mid-job (`app.jobs.hand_back_stalled_page`).
WORKER_LOST_ERROR = "the worker stopped while processing the page (no heartbeat)"


@dataclass(frozen=True, slots=True)
class PageState:
    """What we hold for a page (a row of `cv_pages`)."""

    page_id: str
    status: str
    version: int | None
    content_hash: str | None
    meta_hash: str | None
    chunk_count: int
    reason: str | None = None
    last_error: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one page write did, for logs, metrics and tests."""

    written: bool  # False when refused as stale
    inserted: int = 0
    deleted: int = 0
    kept: int = 0
    metadata_updated: int = 0


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """What recording a failed attempt did: the page's consecutive failures, and whether it is now `failed`
    (its rows removed)."""

    attempts: int
    failed: bool
    removed: int = 0


#: States recorded from a fetched version of the page: a job holding an older version must not overwrite them.
_VERSIONED_STATES = frozenset({"indexed", "deleted", "skipped"})


def is_stale(stored: PageState | None, version: int) -> TypeGuard[PageState]:
    """True when `stored` was recorded from a newer version than `version` (indexed, deleted or skipped).

    Jobs of one page run one at a time, but a job can hold an old version (fetched before an edit, or a
    reindex's shadow writer): indexing, trashing or restricting a page at version N+1 must not be undone by a
    job holding version N. `failed` and `pending` record no fetched version, so they never make a job stale.
    """
    return stored is not None and stored.status in _VERSIONED_STATES and (stored.version or 0) > version


def metadata_hash(metadata: Mapping[str, Any]) -> str:
    """Stable digest of page-level metadata: tells a move/relabel (rows to refresh) from a no-op."""
    return hashlib.sha256(json.dumps(metadata, sort_keys=True, default=str).encode()).hexdigest()


def content_hash(node_ids: Sequence[str]) -> str:
    """Digest of a page's chunking. Node ids derive from the embedded text, so equal ids mean equal vectors."""
    return hashlib.sha256("\n".join(node_ids).encode()).hexdigest()


#: The `cv_pages` columns a write of a page records (`indexed_columns`), in that order.
INDEXED_COLUMNS = (
    "content_type",
    "space_key",
    "title",
    "url",
    "version",
    "last_modified",
    "author",
    "content_hash",
    "meta_hash",
    "chunk_count",
    "chunk_ids",
)


def indexed_columns(page: Page, ids: Sequence[str], page_meta_hash: str) -> dict[str, Any]:
    """The `cv_pages` columns (name -> value) that record `page` written as the chunks `ids`, in reading order.

    One list for every writer of that record: the pipeline (`VectorStore._record_indexed`) and a reindex,
    which keeps the same record for its shadow table and copies it into `cv_pages` when it swaps the tables.
    """
    return {
        "content_type": page.content_type,
        "space_key": page.space_key,
        "title": page.title,
        "url": page.url,
        "version": page.version,
        "last_modified": page.last_modified,
        "author": page.author,
        "content_hash": content_hash(ids),
        "meta_hash": page_meta_hash,
        "chunk_count": len(ids),
        "chunk_ids": list(ids),  # reading order: get_page (app/page_text.py) rebuilds the page in this order
    }


def row_metadata(node: BaseNode) -> dict[str, Any]:
    """The `metadata_` column exactly as `PGVectorStore.add` writes it, so LlamaIndex can rebuild the node.

    Only what a chunk or a move changes belongs here (`app.chunking.page_metadata`): a row is rewritten when
    its metadata differs, so a per-version field here would make every edit rewrite every row of the page.
    """
    return node_to_metadata_dict(node, remove_text=True, flat_metadata=False)


class VectorStore:
    """Reads and writes one `data_<table>` table and the `cv_pages` state rows."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        table: str,
        *,
        track_state: bool = True,
        embed_model: str | None = None,
    ) -> None:
        """`track_state=False` writes rows only (a reindex's shadow table); `embed_model`, when given, is
        checked against the model recorded for the table inside every write, so a worker still running an
        old model after a reindex cannot put its vectors into the rebuilt table."""
        self.pool = pool
        self.table = table
        self.track_state = track_state
        self.embed_model = embed_model
        self._t = sql.Identifier(f"data_{table}")

    # --- reads ---------------------------------------------------------------------------------------
    async def page_state(self, page_id: str) -> PageState | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                """SELECT page_id, status, version, content_hash, meta_hash, chunk_count, reason,
                          last_error, attempts
                   FROM cv_pages WHERE page_id = %s""",
                (page_id,),
            )
            row = await cur.fetchone()
        return PageState(**row) if row else None

    async def node_ids(self, page_id: str) -> set[str]:
        """Ids of the chunks stored for a page (to embed only what is missing)."""
        async with self.pool.connection() as conn:
            return await self._node_ids(conn, page_id)

    async def _node_ids(self, conn: AsyncConnection[Any], page_id: str) -> set[str]:
        cur = await conn.execute(
            sql.SQL("SELECT node_id FROM {t} WHERE metadata_ ->> 'ref_doc_id' = %s").format(t=self._t),
            (page_id,),
        )
        return {row[0] for row in await cur.fetchall()}

    async def count_rows(self, page_id: str | None = None) -> int:
        async with self.pool.connection() as conn:
            if page_id is None:
                cur = await conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=self._t))
            else:
                cur = await conn.execute(
                    sql.SQL("SELECT count(*) FROM {t} WHERE metadata_ ->> 'ref_doc_id' = %s").format(t=self._t),
                    (page_id,),
                )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # --- writes --------------------------------------------------------------------------------------
    async def replace_page(
        self,
        page: Page,
        nodes: Sequence[BaseNode],
        embeddings: Mapping[str, Sequence[float]],
        *,
        page_meta_hash: str,
    ) -> WriteResult:
        """Make the table hold exactly `nodes` for `page`, atomically.

        `embeddings` must cover every node not already stored (the caller embedded only those). Refuses,
        without writing, when the table already holds a newer version of the page.
        """
        ids = [node.node_id for node in nodes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate node ids for page {page.id}")
        async with self.pool.connection() as conn, conn.transaction():
            await _commit_without_waiting_for_flush(conn)
            await self._check_model(conn)
            stored = await self._lock_page(conn, page.id) if self.track_state else None
            if is_stale(stored, page.version):
                log.info(
                    "stale write refused",
                    extra={"page_id": page.id, "version": page.version, "stored_version": stored.version},
                )
                return WriteResult(written=False)

            existing = await self._node_ids(conn, page.id)
            wanted = set(ids)
            new_nodes = [node for node in nodes if node.node_id not in existing]
            missing = [node.node_id for node in new_nodes if node.node_id not in embeddings]
            if missing:
                # Rows we counted on vanished between planning and writing (e.g. a concurrent reindex).
                raise RetryableError(f"{len(missing)} chunks of page {page.id} need embeddings; retrying")

            deleted = await self._delete_except(conn, page.id, wanted)
            kept_nodes = [node for node in nodes if node.node_id in existing]
            metadata_updated = 0
            if kept_nodes and (stored is None or stored.meta_hash != page_meta_hash):
                metadata_updated = await self._refresh_metadata(conn, kept_nodes)
            await self._copy_rows(conn, new_nodes, embeddings)
            if self.track_state:
                await self._record_indexed(conn, page, ids, page_meta_hash)
        return WriteResult(
            written=True,
            inserted=len(new_nodes),
            deleted=deleted,
            kept=len(kept_nodes),
            metadata_updated=metadata_updated,
        )

    async def remove_rows(self, page_id: str) -> int:
        """Delete a page's rows and nothing else (a store without state: a reindex's shadow table, whose
        page records the reindex keeps itself). Returns the rows removed."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                sql.SQL("DELETE FROM {t} WHERE metadata_ ->> 'ref_doc_id' = %s").format(t=self._t), (page_id,)
            )
            return cur.rowcount

    async def _record_indexed(
        self, conn: AsyncConnection[Any], page: Page, ids: Sequence[str], page_meta_hash: str
    ) -> None:
        """The page's state row, in the rows' transaction. It is also where the per-version fields live
        (`version`, `last_modified`, `author`; see `app.chunking.version_metadata`): one row per edit, instead
        of a metadata rewrite of every chunk row."""
        columns = indexed_columns(page, ids, page_meta_hash)
        await conn.execute(
            sql.SQL(
                """UPDATE cv_pages SET {assignments}, status = 'indexed', reason = NULL, indexed_at = now(),
                          last_error = NULL, attempts = 0, updated_at = now()
                   WHERE page_id = %(page_id)s"""
            ).format(
                assignments=sql.SQL(", ").join(
                    sql.SQL("{c} = {v}").format(c=sql.Identifier(c), v=sql.Placeholder(c)) for c in columns
                )
            ),
            {**columns, "page_id": page.id},
        )

    async def delete_page(
        self, page_id: str, *, status: str = "deleted", reason: str | None = None, page: Page | None = None
    ) -> int:
        """Remove every row of a page and record why (deleted, trashed, restricted...). Returns rows removed.

        `page` is the version that said so (None for a 404, which carries no version). A job holding an
        older version than the one recorded (indexed, deleted or skipped at a newer version) changes nothing
        and returns 0: a stale "trashed" or "restricted" must not remove a newer page's rows.
        """
        async with self.pool.connection() as conn, conn.transaction():
            stored = await self._lock_page(conn, page_id)
            if page is not None and is_stale(stored, page.version):
                log.info(
                    "stale delete refused",
                    extra={"page_id": page_id, "version": page.version, "stored": stored},
                )
                return 0
            cur = await conn.execute(
                sql.SQL("DELETE FROM {t} WHERE metadata_ ->> 'ref_doc_id' = %s").format(t=self._t), (page_id,)
            )
            removed = cur.rowcount
            await conn.execute(
                """UPDATE cv_pages SET status = %s, reason = %s, chunk_count = 0, content_hash = NULL,
                          meta_hash = NULL, last_error = NULL, attempts = 0, updated_at = now(),
                          title = COALESCE(%s, title), space_key = COALESCE(%s, space_key),
                          version = COALESCE(%s, version)
                   WHERE page_id = %s""",
                (
                    status,
                    reason,
                    page.title if page else None,
                    page.space_key if page else None,
                    page.version if page else None,
                    page_id,
                ),
            )
        return removed

    async def record_failure(
        self,
        page_id: str,
        error: str,
        *,
        permanent: bool,
        max_attempts: int | None = None,
        conn: AsyncConnection[Any] | None = None,
        service_fault: bool = False,
        worker_lost: bool = False,
    ) -> FailureRecord:
        """Count a failed attempt at a page and keep its last error visible in `status`.

        The count (`cv_pages.attempts`) is the page's consecutive failures, whichever job made them: a retry is
        a new job (see `app.jobs`), so the count must live with the page, not the job. A success resets it
        (`clear_failure`, and every write). When the error is permanent (403, a 404 of the page itself) or the
        count reaches `max_attempts`, the page is recorded `failed`. Its rows are DELETED in the same transaction
        when the error is permanent (a page we can no longer read must not stay searchable with old, possibly
        now forbidden, content) or when the attempts were lost with their worker (`worker_lost`: a page that
        kills its worker is not retried by reconciliation, see `app.sync`). A page that ran out of attempts on
        transient errors (an outage of Confluence or Ollama: nothing says anything about the page) KEEPS its
        rows, searchable at their last good version as through any outage; reconciliation re-checks it each
        interval (`app.sync._failed_to_recheck`), so it comes back by itself once the outage ends. Who may read
        it is decided at query time from the access tables, which an outage of the page job does not freeze.
        A page already `failed` starts a fresh count: a job for it comes from a new event or a reconciliation,
        and deserves a full set of attempts. On `conn` (inside the caller's transaction) when given, else in a
        transaction of its own.

        `service_fault` (an `app.errors.ServiceFault`: credentials refused, the embedding model missing...) is
        never final, whatever `permanent` and the count say: the fault is the service's, not the page's, so the
        rows stay searchable at their last good version and the caller's follow-up job (backoff capped at
        RETRY_MAX_SECONDS, `app.queue.plan_retry`) indexes the page once the fault is fixed. Deleting them here
        would leave a `failed` page with no rows, which nothing ever retries.
        """
        if conn is None:
            async with self.pool.connection() as own, own.transaction():
                return await self._record_failure(
                    own, page_id, error, permanent, max_attempts, service_fault, worker_lost
                )
        return await self._record_failure(conn, page_id, error, permanent, max_attempts, service_fault, worker_lost)

    async def _record_failure(
        self,
        conn: AsyncConnection[Any],
        page_id: str,
        error: str,
        permanent: bool,
        max_attempts: int | None,
        service_fault: bool = False,
        worker_lost: bool = False,
    ) -> FailureRecord:
        stored = await self._lock_page(conn, page_id)
        previous = stored.attempts if stored is not None and stored.status != "failed" else 0
        attempts = previous + 1
        failed = not service_fault and (permanent or (max_attempts is not None and attempts >= max_attempts))
        if not failed:
            # Still retrying: the rows (if any) stay searchable; a page that had failed is pending again.
            await conn.execute(
                """UPDATE cv_pages SET last_error = %s, attempts = %s, updated_at = now(),
                          status = CASE WHEN status = 'failed' THEN 'pending' ELSE status END
                   WHERE page_id = %s""",
                (error[:2000], attempts, page_id),
            )
            return FailureRecord(attempts=attempts, failed=False)
        if not permanent and not worker_lost:  # out of attempts in an outage: failed, rows kept (see above)
            await conn.execute(
                """UPDATE cv_pages SET status = 'failed', reason = %s, last_error = %s, attempts = %s,
                          updated_at = now()
                   WHERE page_id = %s""",
                (f"gave up after {attempts} attempts", error[:2000], attempts, page_id),
            )
            return FailureRecord(attempts=attempts, failed=True, removed=0)
        cur = await conn.execute(
            sql.SQL("DELETE FROM {t} WHERE metadata_ ->> 'ref_doc_id' = %s").format(t=self._t), (page_id,)
        )
        removed = cur.rowcount
        reason = "permanent error" if permanent else f"gave up after {attempts} attempts"
        await conn.execute(
            """UPDATE cv_pages SET status = 'failed', reason = %s, last_error = %s, attempts = %s,
                      chunk_count = 0, content_hash = NULL, meta_hash = NULL, updated_at = now()
               WHERE page_id = %s""",
            (reason, error[:2000], attempts, page_id),
        )
        return FailureRecord(attempts=attempts, failed=True, removed=removed)

    async def clear_failure(self, page_id: str) -> None:
        """A job for the page succeeded (even as `unchanged` or `stale`, which write nothing): its failure
        count restarts, so sporadic failures spread over months never add up to `JOB_MAX_ATTEMPTS`."""
        async with self.pool.connection() as conn:
            await conn.execute(
                """UPDATE cv_pages SET attempts = 0, last_error = NULL, updated_at = now()
                   WHERE page_id = %s AND (attempts <> 0 OR last_error IS NOT NULL) AND status <> 'failed'""",
                (page_id,),
            )

    @staticmethod
    async def mark_pending(conn: AsyncConnection[Any], pages: Sequence[tuple[str, str]]) -> None:
        """Pages (id, content type) we were told about and have not processed yet (`pending` in `status`).

        On the caller's connection, so backfill records them in the transaction that enqueues their jobs.
        """
        if not pages:
            return
        await conn.execute(
            """INSERT INTO cv_pages (page_id, content_type, status)
               SELECT p.page_id, p.content_type, 'pending'
               FROM unnest(%s::text[], %s::text[]) AS p(page_id, content_type) ORDER BY p.page_id
               ON CONFLICT (page_id) DO NOTHING""",
            ([page_id for page_id, _ in pages], [content_type for _, content_type in pages]),
        )

    # --- helpers ---------------------------------------------------------------------------------------
    async def _check_model(self, conn: AsyncConnection[Any]) -> None:
        if self.embed_model is None:
            return
        row = await (
            # FOR SHARE: a reindex swapping tables takes this row FOR UPDATE, so it waits for writes that
            # checked the old model to commit, and writes that start later see the new one (app/reindex.py).
            await conn.execute(
                "SELECT embed_model FROM cv_index_meta WHERE table_name = %s FOR SHARE", (self.table,)
            )
        ).fetchone()
        if row is not None and row[0] != self.embed_model:
            raise RetryableError(
                f"data_{self.table} is now built with {row[0]}, this process embeds with {self.embed_model}: "
                "restart it with the new EMBED_MODEL"
            )

    async def _lock_page(self, conn: AsyncConnection[Any], page_id: str) -> PageState | None:
        """Lock the page's state row (creating it) for the rest of the transaction; return what it held."""
        await conn.execute(
            "INSERT INTO cv_pages (page_id, status) VALUES (%s, 'pending') ON CONFLICT (page_id) DO NOTHING",
            (page_id,),
        )
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            """SELECT page_id, status, version, content_hash, meta_hash, chunk_count, reason, last_error,
                      attempts
               FROM cv_pages WHERE page_id = %s FOR UPDATE""",
            (page_id,),
        )
        row = await cur.fetchone()
        return PageState(**row) if row else None

    async def _delete_except(self, conn: AsyncConnection[Any], page_id: str, keep: set[str]) -> int:
        cur = await conn.execute(
            sql.SQL("DELETE FROM {t} WHERE metadata_ ->> 'ref_doc_id' = %s AND NOT (node_id = ANY(%s))").format(
                t=self._t
            ),
            (page_id, list(keep)),
        )
        return cur.rowcount

    async def _refresh_metadata(self, conn: AsyncConnection[Any], nodes: Sequence[BaseNode]) -> int:
        cur = await conn.execute(
            sql.SQL(
                """UPDATE {t} AS d SET metadata_ = v.meta
                   FROM unnest(%s::text[], %s::jsonb[]) AS v(node_id, meta)
                   WHERE d.node_id = v.node_id"""
            ).format(t=self._t),
            ([n.node_id for n in nodes], [Jsonb(row_metadata(n)) for n in nodes]),
        )
        return cur.rowcount

    async def _copy_rows(
        self, conn: AsyncConnection[Any], nodes: Sequence[BaseNode], embeddings: Mapping[str, Sequence[float]]
    ) -> None:
        if not nodes:
            return
        statement = sql.SQL("COPY {t} (text, metadata_, node_id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
            t=self._t
        )
        # The column's type as it is now (VECTOR_TYPE; a reindex may have swapped in a halfvec table under a
        # running worker): one catalog lookup per page write, and binary COPY needs the exact type.
        halfvec = await embedding_type(conn, self.table) == "halfvec"
        cur = conn.cursor()
        async with cur.copy(statement) as copy:
            copy.set_types(["varchar", "jsonb", "varchar", "halfvec" if halfvec else "vector"])
            for node in nodes:
                vector = np.asarray(embeddings[node.node_id], dtype=np.float32)
                value = HalfVector(vector) if halfvec else vector
                await copy.write_row((node.get_content(), Jsonb(row_metadata(node)), node.node_id, value))


def sqlalchemy_urls(database_url: str) -> tuple[str, str]:
    """(sync, async) SQLAlchemy URLs for a libpq URL, both on psycopg 3 (unix-socket hosts included)."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme not in {"postgres", "postgresql"}:
        raise ValueError("expected a postgresql:// URL")
    url = f"postgresql+psycopg://{rest}"
    return url, url


def llamaindex_store(database_url: str, table: str, embed_dim: int, *, use_halfvec: bool = False) -> Any:
    """A stock LlamaIndex `PGVectorStore` over our table, for retrieval code that wants LlamaIndex.

    Read-only by convention: writes go through `VectorStore.replace_page`, which never duplicates rows.
    """
    from llama_index.vector_stores.postgres import PGVectorStore

    sync_url, async_url = sqlalchemy_urls(database_url)
    return PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name=table,
        embed_dim=embed_dim,
        hybrid_search=True,
        text_search_config="simple",
        use_jsonb=True,
        use_halfvec=use_halfvec,  # VECTOR_TYPE=halfvec: the stock store casts its query vectors to match
    )


async def _commit_without_waiting_for_flush(conn: AsyncConnection[Any]) -> None:
    """Let this transaction's COMMIT return before its WAL reaches disk (`synchronous_commit = off`, local).

    Why it is safe here: a page write only counts once its job is marked done, and procrastinate marks it in a
    later, synchronously committed transaction. WAL is flushed in order, so that flush makes this write durable
    too. A crash in between loses at most writes whose jobs are not yet done; those jobs are retried (stalled
    job recovery) and rewrite the page, and the state row and the vectors roll back together (one transaction),
    so nothing is ever half written. What it buys: a per-page flush wait is most of the gap between our per-page
    transactions and one bulk COPY (see bench/write_path.py).
    """
    await conn.execute("SET LOCAL synchronous_commit = off")
