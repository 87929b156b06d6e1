"""Postgres: where the URL comes from, the connection pool, and the schema.

With `DATABASE_URL` unset the service runs on an embedded PostgreSQL with pgvector (`app.embedded`) under
`DATA_DIR`, so `make run` works on a bare machine. Every pooled connection has pgvector's types
registered, so vectors travel as binary, never as text.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.embedded import embedded_url
from app.errors import DatabaseUnavailable, IndexModelMismatch
from app.queue_schema import ensure_procrastinate_schema
from app.term_counts import ensure_term_counts

log = logging.getLogger(__name__)

#: Arbitrary, fixed key: only one process applies the schema at a time.
MIGRATION_LOCK = 727_271_001


def database_url(settings: Settings) -> str:
    """The Postgres URL to use: `DATABASE_URL`, else the embedded server's."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return embedded_url(settings.data_dir, settings.embedded_shared_buffers)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    await register_vector_async(conn)
    # Several statements per transaction are ours; make autocommit explicit per use instead.
    await conn.set_autocommit(True)


def make_pool(url: str, *, max_size: int = 10, min_size: int = 1, timeout: float = 10.0) -> AsyncConnectionPool:
    """A pool whose connections all speak pgvector. Open it with `await pool.open()`. `timeout`: seconds a
    caller waits for a connection before PoolTimeout."""
    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        configure=_configure,
        check=AsyncConnectionPool.check_connection,  # drop connections a Postgres restart killed, not a request
        open=False,
        timeout=timeout,
        name="confluence-vectors",
        kwargs={"application_name": "confluence-vectors"},
    )


def _schema_sql() -> str:
    return resources.files("app").joinpath("sql/schema.sql").read_text(encoding="utf-8")


async def migrate(url: str, settings: Settings, *, table: str | None = None) -> None:
    """Create everything we need, idempotently and under an advisory lock (several processes start at once).

    Also applies procrastinate's schema on first start, and refuses to run against a vector table built
    with another embedding model or dimension: mixing vectors from two models makes search meaningless.
    """
    table = table or settings.vector_table
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to Postgres: {exc}") from exc
    async with conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            await conn.execute(_schema_sql())
            await _drop_if_empty_and_built_otherwise(conn, table, settings)
            await ensure_vector_table(
                conn,
                table,
                settings.embed_dim,
                settings.vector_type,
                m=settings.hnsw_m,
                ef_construction=settings.hnsw_ef_construction,
            )
            await advise_on_hnsw_index(conn, table, settings)
            await check_index_model(conn, table, settings.embed_model, settings.embed_dim)
            await _apply_procrastinate_schema(conn)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


#: Postgres keeps the first NAMEDATALEN-1 = 63 bytes of an identifier ("Identifiers and Key Words", PostgreSQL
#: docs, 4.1.1); a longer name is truncated, with only a NOTICE.
MAX_IDENTIFIER_BYTES = 63


def fit_identifier(name: str) -> str:
    """`name` as Postgres stores it: at most 63 bytes, cut on a character boundary (what Postgres itself does
    with a longer name, so tables created before names were cut here keep theirs)."""
    data = name.encode("utf-8")
    if len(data) <= MAX_IDENTIFIER_BYTES:
        return name
    return data[:MAX_IDENTIFIER_BYTES].decode("utf-8", "ignore")


def vector_index_names(table: str) -> dict[str, str]:
    """Index names of `data_<table>` by role; PGVectorStore's own names where it has one. Each fits 63 bytes
    and, for any `VECTOR_TABLE` the settings allow (51 characters at most), differs from the others."""
    physical = f"data_{table}"
    names = {
        "node_id": f"{physical}_node_id_key",
        "tsv": f"{table}_idx",
        "ref_doc_id": f"{table}_idx_1",
        "space_key": f"{physical}_space_key_idx",
        "embedding": f"{physical}_embedding_idx",
        "search": f"{physical}_search_idx",
        "search_sample": f"{physical}_sample_search_idx",
    }
    return {role: fit_identifier(name) for role, name in names.items()}


def hnsw_index_sql(
    table: str,
    vector_type: str = "vector",
    *,
    m: int = 16,
    ef_construction: int = 64,
    name: str | None = None,
    concurrently: bool = False,
) -> sql.Composed:
    """The HNSW cosine index of `data_<table>` (pgvector README, "HNSW": `vector_cosine_ops`, or
    `halfvec_cosine_ops` for a halfvec column; m and ef_construction, pgvector's defaults 16 and 64, are the
    settings HNSW_M and HNSW_EF_CONSTRUCTION). `name`: another name than the index's own (a rebuild's)."""
    return sql.SQL(
        "CREATE INDEX {concurrently} IF NOT EXISTS {i} ON {t} USING hnsw (embedding {ops}) "
        "WITH (m = {m}, ef_construction = {ef_construction})"
    ).format(
        concurrently=sql.SQL("CONCURRENTLY" if concurrently else ""),
        i=sql.Identifier(name or vector_index_names(table)["embedding"]),
        t=sql.Identifier(f"data_{table}"),
        ops=sql.SQL(VECTOR_OPS[vector_type]),
        m=sql.Literal(m),
        ef_construction=sql.Literal(ef_construction),
    )


#: pgvector's defaults, what an index built without WITH (...) has (pgvector README, "Index Options").
HNSW_DEFAULTS = {"m": 16, "ef_construction": 64}


async def hnsw_parameters(
    conn: psycopg.AsyncConnection[Any], table: str, index: str | None = None
) -> tuple[int, int] | None:
    """(m, ef_construction) the HNSW index of `data_<table>` (or the index named `index`) was built with, from
    its storage options (`pg_class.reloptions`, e.g. `{m=16,ef_construction=64}`); pgvector's defaults for an
    option it does not name. None when there is no such index."""
    row = await (
        await conn.execute(
            "SELECT c.reloptions FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = to_regclass(quote_ident(%s)) AND c.relname = %s",
            (f"data_{table}", index or vector_index_names(table)["embedding"]),
        )
    ).fetchone()
    if row is None:
        return None
    options = dict(HNSW_DEFAULTS)
    for option in row[0] or []:
        key, _, value = str(option).partition("=")
        if key in options:
            options[key] = int(value)
    return options["m"], options["ef_construction"]


#: From about this many chunks an HNSW graph built with ef_construction below `LARGE_TABLE_EF_CONSTRUCTION` leaves
#: true neighbours unreachable (bench/search_scale.py, 1M chunks of 1024 dimensions: recall@10 0.62 at ef_search 40
#: and flat at 0.92 from 400 on with 64; 0.96 at 40 and 1.00 from 200 on with 200; at 100,000 chunks, 64 gave 1.00).
LARGE_TABLE_ROWS = 500_000
LARGE_TABLE_EF_CONSTRUCTION = 200


async def advise_on_hnsw_index(conn: psycopg.AsyncConnection[Any], table: str, settings: Settings) -> None:
    """Say at start-up when the table's HNSW index was built with other parameters than the settings name
    (pgvector fixes them at build time, so a changed HNSW_M / HNSW_EF_CONSTRUCTION needs `rebuild-hnsw-index`), or
    when the table has grown past `LARGE_TABLE_ROWS` on a graph built for less."""
    built = await hnsw_parameters(conn, table)
    wanted = (settings.hnsw_m, settings.hnsw_ef_construction)
    if built is not None and built != wanted:
        log.warning(
            "the HNSW index of data_%s was built with m=%d, ef_construction=%d; the settings say m=%d, "
            "ef_construction=%d: run `confluence-vectors rebuild-hnsw-index` to rebuild it (search and writes go "
            "on meanwhile)",
            table,
            *built,
            *wanted,
        )
        return
    if built is None or built[1] >= LARGE_TABLE_EF_CONSTRUCTION:
        return
    row = await (
        await conn.execute(
            """SELECT greatest(
                   (SELECT reltuples FROM pg_class WHERE oid = to_regclass(quote_ident(%(r)s))),
                   (SELECT sum(k.n) FROM (SELECT c.n FROM cv_term_counts AS c
                                          WHERE c.relid = to_regclass(quote_ident(%(r)s)) AND c.lexeme = ''
                                          UNION ALL
                                          SELECT d.delta FROM cv_term_deltas AS d
                                          WHERE d.relid = to_regclass(quote_ident(%(r)s)) AND d.lexeme = '') AS k))""",
            {"r": f"data_{table}"},
        )
    ).fetchone()
    rows = int(row[0]) if row and row[0] is not None else 0
    if rows >= LARGE_TABLE_ROWS:
        log.warning(
            "data_%s holds %d chunks, and its HNSW index was built with ef_construction=%d: at this size some true "
            "neighbours are unreachable whatever HNSW_EF_SEARCH (measured at 1M chunks: recall@10 0.62 with 64, "
            "0.96 with %d). Set HNSW_EF_CONSTRUCTION=%d and run `confluence-vectors rebuild-hnsw-index` (search and "
            "writes go on meanwhile)",
            table,
            rows,
            built[1],
            LARGE_TABLE_EF_CONSTRUCTION,
            LARGE_TABLE_EF_CONSTRUCTION,
        )


#: Operator class of the HNSW cosine index per embedding column type (pgvector README, "HNSW").
VECTOR_OPS = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops"}


async def embedding_type(conn: psycopg.AsyncConnection[Any], table: str) -> str | None:
    """`vector` or `halfvec`: the type of `data_<table>.embedding` as it is in the database (None: no table)."""
    row = await (
        await conn.execute(
            """SELECT t.typname FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
               WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding' AND NOT a.attisdropped""",
            (sql.Identifier(f"data_{table}").as_string(conn),),
        )
    ).fetchone()
    return str(row[0]) if row else None


#: The column `app.search` ranks full text on. `text_search_tsv` stays as stock `PGVectorStore` defines it (its
#: readers query it with their own `text_search_config`); ours adds what the issue-14 measurement showed missing:
#: the page title (weight A, so `ts_rank_cd` puts a page named by the query first) and the heading path (B),
#: both embedded with every chunk already, and stemming ("sentinels" finds "Sentinel"). `english` rather than
#: a per-page language: the snowball stemmer leaves tokens of other scripts (Hangul) and unknown words intact, so
#: exact-word matching still works on non-English pages (tests/integration/test_search.py has Korean and German).
TEXT_SEARCH_CONFIG = "english"
SEARCH_COLUMN = "cv_search_tsv"
#: One row in `SAMPLE_SCALE` (a power of two) forms the fixed sample a person's document counts of common words
#: are estimated from (`app.search._VIEWER_STATISTICS`).
SAMPLE_SCALE = 16


def sample_predicate(alias: str | None = None) -> sql.Composed:
    """The sample: rows whose `node_id` hashes to 0 modulo `SAMPLE_SCALE`. `hashtext` is immutable, so a partial
    index holds exactly these rows, and a query that repeats this expression (for its own table alias) is
    proved by the planner to be able to use that index (PostgreSQL docs, 11.8 Partial Indexes)."""
    column = sql.Identifier(alias, "node_id") if alias else sql.Identifier("node_id")
    return sql.SQL("(hashtext({c}) & {m}) = 0").format(c=column, m=sql.Literal(SAMPLE_SCALE - 1))


SEARCH_DOCUMENT = (
    f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}', coalesce(metadata_ ->> 'title', '')), 'A') || "
    f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}', coalesce(metadata_ ->> 'header_path', '')), 'B') || "
    f"to_tsvector('{TEXT_SEARCH_CONFIG}', text)"
)


async def ensure_vector_table(
    conn: psycopg.AsyncConnection[Any],
    table: str,
    dim: int,
    vector_type: str = "vector",
    *,
    m: int = 16,
    ef_construction: int = 64,
) -> None:
    """The `data_<table>` table exactly as LlamaIndex's `PGVectorStore` (hybrid, jsonb) models it, plus
    what our write path needs: a unique `node_id` (so no duplicate can ever exist), an HNSW cosine index,
    btree indexes on the metadata we filter by, and the triggers that keep its word counts (`app.term_counts`).
    """
    t = sql.Identifier(f"data_{table}")
    index = vector_index_names(table)
    names = {role: sql.Identifier(name) for role, name in index.items()}
    statements: list[tuple[str | None, sql.Composed]] = [
        (
            None,
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {t} (
                id BIGSERIAL PRIMARY KEY,
                text VARCHAR NOT NULL,
                metadata_ JSONB,
                node_id VARCHAR,
                embedding {vector_type}({dim}),
                text_search_tsv TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
            )"""
            ).format(t=t, dim=sql.Literal(dim), vector_type=sql.SQL(vector_type)),
        ),
        (
            index["node_id"],
            sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {i} ON {t} (node_id)").format(i=names["node_id"], t=t),
        ),
        (
            index["tsv"],
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (text_search_tsv)").format(i=names["tsv"], t=t),
        ),
        # Our own full-text document (app.search's lexical ranking); added to tables created before it existed.
        (
            f"column:{SEARCH_COLUMN}",
            sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} TSVECTOR GENERATED ALWAYS AS ({doc}) STORED").format(
                t=t, c=sql.Identifier(SEARCH_COLUMN), doc=sql.SQL(SEARCH_DOCUMENT)
            ),
        ),
        (
            index["search"],
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin ({c})").format(
                i=names["search"], t=t, c=sql.Identifier(SEARCH_COLUMN)
            ),
        ),
        # One row in 16 of the same document, on its own: a person's word counts are estimated from it
        # (app.search `_VIEWER_STATISTICS`).
        (
            index["search_sample"],
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin ({c}) WHERE {sample}").format(
                i=names["search_sample"], t=t, c=sql.Identifier(SEARCH_COLUMN), sample=sample_predicate()
            ),
        ),
        (
            index["ref_doc_id"],
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} ((metadata_ ->> 'ref_doc_id'))").format(
                i=names["ref_doc_id"], t=t
            ),
        ),
        (
            index["space_key"],
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} ((metadata_ ->> 'space_key'))").format(
                i=names["space_key"], t=t
            ),
        ),
        (index["embedding"], hnsw_index_sql(table, vector_type, m=m, ef_construction=ef_construction)),
    ]
    if vector_type not in VECTOR_OPS:
        raise ValueError(f"unknown vector type {vector_type!r}")
    await conn.execute(statements[0][1])
    built = await embedding_type(conn, table)
    if built != vector_type:
        raise IndexModelMismatch(
            f"the vector table data_{table} stores embeddings as {built}, but the service is configured with "
            f"VECTOR_TYPE={vector_type}: restore the old setting, or run `confluence-vectors reindex` to rebuild "
            "the table with the new type (search keeps working on the old table meanwhile)."
        )
    # What exists already is left alone, unlocked: even with IF NOT EXISTS, CREATE INDEX takes a SHARE lock on the
    # table (waiting for writers, and for a concurrent index build or drop, for as long as that runs) and ALTER
    # TABLE an ACCESS EXCLUSIVE one, before looking. A start must not queue behind `rebuild-hnsw-index`.
    present = await _existing(conn, table, [name for name, _ in statements[1:] if name is not None])
    for name, statement in statements[1:]:
        if name is None or name not in present:
            await conn.execute(statement)
    await ensure_term_counts(conn, table)


async def _existing(conn: psycopg.AsyncConnection[Any], table: str, names: list[str]) -> set[str]:
    """Which of `names` exist on `data_<table>` (the one the search_path finds, as CREATE TABLE IF NOT EXISTS
    just did): its indexes by name, its columns as "column:<name>". Never another table's index of the same name
    in another schema (a schema per tenant)."""
    row = await (
        await conn.execute(
            """SELECT array(SELECT c.relname::text FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                            WHERE i.indrelid = to_regclass(quote_ident(%(table)s)) AND c.relname = ANY (%(names)s))
                      || array(SELECT 'column:' || a.attname FROM pg_attribute AS a
                               WHERE a.attrelid = to_regclass(quote_ident(%(table)s)) AND a.attnum > 0
                                 AND NOT a.attisdropped)""",
            {"names": names, "table": f"data_{table}"},
        )
    ).fetchone()
    return set(row[0]) if row else set()


#: Seconds a start waits for the lock that drops an empty table built for other settings (a writer holding it is
#: writing rows: then the table is not empty, and the start refuses as for any table with vectors).
EMPTY_TABLE_LOCK_SECONDS = 5


async def _drop_if_empty_and_built_otherwise(
    conn: psycopg.AsyncConnection[Any], table: str, settings: Settings
) -> None:
    """Drop `data_<table>` when it holds no row and was built for another EMBED_MODEL, EMBED_DIM or VECTOR_TYPE,
    so the start creates it for the settings it has.

    Why: a first start with a wrong EMBED_DIM (the page jobs then fail on the model's real dimension) or the
    default EMBED_MODEL fixes the table's model before any vector is written; correcting the setting then met
    "run reindex" for a table with nothing to rebuild (found by a new user following the README). A table with
    rows is never touched here: mixing two models' vectors is what `check_index_model` refuses; nor one while
    another client is connected to the database (a running service).
    """
    physical = sql.Identifier(f"data_{table}")
    row = await (
        await conn.execute("SELECT embed_model, embed_dim FROM cv_index_meta WHERE table_name = %s", (table,))
    ).fetchone()
    built_type = await embedding_type(conn, table)
    other_model = row is not None and (row[0], row[1]) != (settings.embed_model, settings.embed_dim)
    other_type = built_type is not None and built_type != settings.vector_type
    if not (other_model or other_type):
        return
    # Only when no other client is connected to this database (a process starting beside us waits on the migration
    # lock and does not count): a mistaken command run beside a working service must not change its table
    # under it, even an empty one. That service is told to reindex, as before.
    others = await (
        await conn.execute(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
                 AND NOT (wait_event_type = 'Lock' AND wait_event = 'advisory')"""
        )
    ).fetchone()
    if others is None or others[0]:
        return
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{EMPTY_TABLE_LOCK_SECONDS}s'")
        if built_type is not None:
            try:
                await conn.execute(sql.SQL("LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE").format(t=physical))
            except psycopg.errors.LockNotAvailable:
                return  # in use: someone writes to it, so it is not empty; `check_index_model` decides
            has_rows = await (
                await conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {t})").format(t=physical))
            ).fetchone()
            if has_rows is None or has_rows[0]:
                return
            await conn.execute("DELETE FROM cv_term_counts WHERE relid = to_regclass(%s)", (physical.as_string(conn),))
            await conn.execute("DELETE FROM cv_term_deltas WHERE relid = to_regclass(%s)", (physical.as_string(conn),))
            await conn.execute(sql.SQL("DROP TABLE {t}").format(t=physical))
        await conn.execute("DELETE FROM cv_index_meta WHERE table_name = %s", (table,))
    log.warning(
        "the empty vector table was built for other settings: created again for these",
        extra={
            "table": f"data_{table}",
            "built": f"EMBED_MODEL={row[0] if row else '?'} EMBED_DIM={row[1] if row else '?'} "
            f"VECTOR_TYPE={built_type}",
            "now": f"EMBED_MODEL={settings.embed_model} EMBED_DIM={settings.embed_dim} "
            f"VECTOR_TYPE={settings.vector_type}",
        },
    )


async def check_index_model(conn: psycopg.AsyncConnection[Any], table: str, model: str, dim: int) -> None:
    """Record which model built `table`, or refuse if it was another one."""
    row = await (
        await conn.execute(
            """INSERT INTO cv_index_meta (table_name, embed_model, embed_dim) VALUES (%s, %s, %s)
               ON CONFLICT (table_name) DO UPDATE SET table_name = EXCLUDED.table_name
               RETURNING embed_model, embed_dim""",
            (table, model, dim),
        )
    ).fetchone()
    assert row is not None
    built_model, built_dim = row
    if (built_model, built_dim) != (model, dim):
        raise IndexModelMismatch(
            f"the vector table data_{table} was built with EMBED_MODEL={built_model} EMBED_DIM={built_dim}, "
            f"but the service is configured with EMBED_MODEL={model} EMBED_DIM={dim}. Vectors of two models "
            "cannot be searched together: restore the old settings, or run `confluence-vectors reindex` to "
            "rebuild the index with the new model (search keeps working on the old table meanwhile)."
        )


async def _apply_procrastinate_schema(conn: psycopg.AsyncConnection[Any]) -> None:
    """Procrastinate's schema: applied on first start, migrated on upgrade, refused when it cannot match the
    installed procrastinate (`app.queue_schema`)."""
    await ensure_procrastinate_schema(conn)
