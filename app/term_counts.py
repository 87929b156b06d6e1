"""Exact document counts per word of a vector table's full-text column, kept by Postgres on every write.

Why: the lexical ranking weighs each query word by its rarity (an IDF: `app.search`), which needs the number of
chunks holding the word. The planner's statistics (`pg_stats.most_common_elems`) are an estimate refreshed when
autovacuum happens to ANALYZE, so the same rows ranked differently from one run to the next (issue 14: statistics
taken mid-backfill changed 11 of 46 top-10 lists); counting on the GIN index at query time builds a bitmap of
every row holding the word (65-83 ms a query at 1M chunks, bench/search_scale.py). Counts kept on write are
exact in every snapshot and cost one index probe per query word to read.

Shape (one pair of tables for every vector table, keyed by the table's oid, which a reindex's rename keeps):

* `cv_term_counts(relid, lexeme, n)`: chunks of the table whose `cv_search_tsv` holds `lexeme`; the table's row
  count under the lexeme '' (`to_tsvector` never yields an empty lexeme);
* `cv_term_deltas(relid, lexeme, delta)`: the net change of each statement not yet folded into the counts.

Statement-level triggers with transition tables (PostgreSQL docs, CREATE TRIGGER, "REFERENCING") append every
INSERT, UPDATE and DELETE statement's net change per lexeme to `cv_term_deltas`, whoever writes: our write path,
a stock `PGVectorStore.add`, a reindex, psql. Writers only insert, so concurrent page writes never wait on one
another for a common word's counter row (an UPDATE of `n` would serialize every page write on "the").
`fold_term_deltas` (the minute tick) moves the deltas into the counts in one statement; a reader adds the counts
and the pending deltas (`COUNTS_SQL`), so what it reads is exact whether a fold ran or not.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

#: The full-text column counted (`app.db.SEARCH_COLUMN`; not imported: app.db imports this module).
SEARCH_COLUMN = "cv_search_tsv"
#: The row count's key in `cv_term_counts`.
ROW_COUNT = ""
#: Transaction-level advisory lock key of a fold (beside app.db's migration lock 727_271_001 and the reindex's).
FOLD_LOCK = 727_271_014
#: The trigger names `ensure_term_counts` creates on a vector table, one per event.
TRIGGERS = {
    "INSERT": "cv_count_terms_insert",
    "UPDATE": "cv_count_terms_update",
    "DELETE": "cv_count_terms_delete",
    "TRUNCATE": "cv_count_terms_truncate",
}

#: Tables and trigger function, idempotent (applied at every start, under app.db's migration lock).
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cv_term_counts (
    relid  OID NOT NULL,
    lexeme TEXT NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (relid, lexeme)
);
CREATE TABLE IF NOT EXISTS cv_term_deltas (
    relid  OID NOT NULL,
    lexeme TEXT NOT NULL,
    delta  BIGINT NOT NULL
);
-- Created only when missing: CREATE INDEX takes a SHARE lock before it looks, even with IF NOT EXISTS, and every
-- write to a vector table writes here, so a start would wait for (and hold up) the writes in flight.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                   WHERE i.indrelid = to_regclass('cv_term_deltas') AND c.relname = 'cv_term_deltas_lexeme_idx') THEN
        CREATE INDEX IF NOT EXISTS cv_term_deltas_lexeme_idx ON cv_term_deltas (relid, lexeme) INCLUDE (delta);
    END IF;
END
$$;

-- SET search_path FROM CURRENT: the schema the migration created the tables in, whatever the writer's own
-- search_path (pg_restore --data-only writes with an empty one).
CREATE OR REPLACE FUNCTION cv_count_terms() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- Each branch reads only the transition tables its trigger declares (plpgsql plans a query when it first runs).
    IF TG_OP = 'INSERT' THEN
        INSERT INTO cv_term_deltas (relid, lexeme, delta)
        SELECT TG_RELID, w.lexeme, count(*)
        FROM cv_new_rows AS r, unnest(tsvector_to_array(r.{SEARCH_COLUMN})) AS w(lexeme) GROUP BY w.lexeme
        UNION ALL
        SELECT TG_RELID, '{ROW_COUNT}', count(*) FROM cv_new_rows HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO cv_term_deltas (relid, lexeme, delta)
        SELECT TG_RELID, w.lexeme, -count(*)
        FROM cv_old_rows AS r, unnest(tsvector_to_array(r.{SEARCH_COLUMN})) AS w(lexeme) GROUP BY w.lexeme
        UNION ALL
        SELECT TG_RELID, '{ROW_COUNT}', -count(*) FROM cv_old_rows HAVING count(*) > 0;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Net of what the statement's rows held before and after: a metadata-only update (a page move that
        -- keeps its title) nets to nothing and appends no row.
        INSERT INTO cv_term_deltas (relid, lexeme, delta)
        SELECT TG_RELID, c.lexeme, sum(c.d)
        FROM (
            SELECT w.lexeme, 1 AS d
            FROM cv_new_rows AS r, unnest(tsvector_to_array(r.{SEARCH_COLUMN})) AS w(lexeme)
            UNION ALL
            SELECT w.lexeme, -1
            FROM cv_old_rows AS r, unnest(tsvector_to_array(r.{SEARCH_COLUMN})) AS w(lexeme)
        ) AS c
        GROUP BY c.lexeme HAVING sum(c.d) <> 0;
    ELSIF current_setting('transaction_isolation') = 'read committed' THEN  -- TRUNCATE
        -- This statement's snapshot, taken after TRUNCATE's exclusive lock, sees every delta of the rows it removed.
        DELETE FROM cv_term_deltas WHERE relid = TG_RELID;
        DELETE FROM cv_term_counts WHERE relid = TG_RELID;
        INSERT INTO cv_term_counts (relid, lexeme, n) VALUES (TG_RELID, '{ROW_COUNT}', 0);
    ELSE
        -- A snapshot older than the lock may miss deltas of rows TRUNCATE removed: stop counting this table
        -- (searches count on the index meanwhile, and the fold discards its deltas) until the worker's next
        -- minute tick counts it afresh (`count_untracked`).
        DELETE FROM cv_term_deltas WHERE relid = TG_RELID;
        DELETE FROM cv_term_counts WHERE relid = TG_RELID;
    END IF;
    RETURN NULL;
END
$$;
"""

#: Document counts of the words `%(lexemes)s` (text[]) and the row count (under '') of `%(relation)s` (a
#: table name): `(lexeme, n)` rows, a word held by no chunk absent. One index probe per word in each table.
COUNTS_SQL = """SELECT k.lexeme, sum(k.n)::float8 AS n FROM (
                SELECT c.lexeme, c.n FROM cv_term_counts AS c
                WHERE c.relid = %(relation)s::regclass AND c.lexeme = ANY (%(lexemes)s::text[] || ''::text)
                UNION ALL
                SELECT d.lexeme, d.delta FROM cv_term_deltas AS d
                WHERE d.relid = %(relation)s::regclass AND d.lexeme = ANY (%(lexemes)s::text[] || ''::text)
            ) AS k GROUP BY k.lexeme HAVING sum(k.n) > 0"""


async def ensure_term_counts(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    """Install the counting triggers on `data_<table>` and count its rows, whenever the counts are not known to be
    kept: a table created before this module, a new one, or one whose counts were lost (a dump restored into
    another database gives the table a new oid; a TRUNCATE under REPEATABLE READ; counts deleted by hand).

    Atomic: the table is locked against writes (SHARE ROW EXCLUSIVE; searches go on) while the triggers are created
    and the rows counted (`ts_stat`, one pass over the column: 102 s at 1M chunks), so no write falls between the
    two; READ COMMITTED, so the count sees every write committed before the lock was granted. Returns True when
    it counted, False when the counts were kept already. Also forgets the counts of tables that no longer carry
    the triggers (dropped). The lock is waited for at most `LOCK_WAIT_SECONDS` (`count_untracked`). `conn` must
    be in autocommit mode.
    """
    await conn.execute(SCHEMA)
    # Deltas before counts, in every statement that touches both (the fold too): one lock order, no deadlock.
    counted = "SELECT tgrelid FROM pg_trigger WHERE tgname = %(name)s"
    for forget in ("cv_term_deltas", "cv_term_counts"):
        await conn.execute(f"DELETE FROM {forget} WHERE relid NOT IN ({counted})", {"name": TRIGGERS["INSERT"]})
    return await count_untracked(conn, table)


#: How long a count waits for its lock. Queued for it, the count holds up every write to the table, and a
#: concurrent index build (`rebuild-hnsw-index`) holds a conflicting lock for up to an hour: better to leave
#: the table uncounted (searches count on the index meanwhile) and try again at the worker's next minute tick.
LOCK_WAIT_SECONDS = 1


async def count_untracked(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    """Count `data_<table>` (and install its triggers) if its counts are not kept; see `ensure_term_counts`.

    Returns True when it counted. Gives up, with a warning and False, when the table's lock is not granted
    within `LOCK_WAIT_SECONDS`; the worker's minute tick calls this again. `conn` must be in autocommit mode.
    """
    t = sql.Identifier(f"data_{table}")
    if await _kept(conn, f"data_{table}"):
        return False
    try:
        return await _count(conn, table, t)
    except psycopg.errors.LockNotAvailable:
        log.warning(
            "the word counts of data_%s are not kept yet: another operation holds the table (an index build?); "
            "searches count on the index meanwhile, and the worker tries again every minute",
            table,
        )
        return False


async def _count(conn: psycopg.AsyncConnection[Any], table: str, t: sql.Identifier) -> bool:
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{LOCK_WAIT_SECONDS}s",))
        await conn.execute(sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=t))
        await conn.execute("SET LOCAL lock_timeout TO DEFAULT")  # the role's or database's own, for the count
        if await _kept(conn, f"data_{table}"):  # another process counted while we waited for the lock
            return False
        present = await (
            await conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = ANY (%s)",
                (f"data_{table}", list(TRIGGERS.values())),
            )
        ).fetchall()
        for event, name in TRIGGERS.items():
            if name in {row[0] for row in present}:
                continue  # dropping it would take an ACCESS EXCLUSIVE lock, and stop searches, for the whole count
            transition = {
                "INSERT": "REFERENCING NEW TABLE AS cv_new_rows",
                "UPDATE": "REFERENCING OLD TABLE AS cv_old_rows NEW TABLE AS cv_new_rows",
                "DELETE": "REFERENCING OLD TABLE AS cv_old_rows",
                "TRUNCATE": "",
            }[event]
            await conn.execute(
                sql.SQL(
                    "CREATE TRIGGER {n} AFTER {e} ON {t} {r} FOR EACH STATEMENT EXECUTE FUNCTION cv_count_terms()"
                ).format(n=sql.Identifier(name), e=sql.SQL(event), t=t, r=sql.SQL(transition))
            )
        column_query = sql.SQL("SELECT {c} FROM {t}").format(c=sql.Identifier(SEARCH_COLUMN), t=t).as_string(conn)
        params = {"relation": f"data_{table}", "query": column_query}
        await conn.execute("DELETE FROM cv_term_deltas WHERE relid = %(relation)s::regclass", params)
        await conn.execute("DELETE FROM cv_term_counts WHERE relid = %(relation)s::regclass", params)
        await conn.execute(
            "INSERT INTO cv_term_counts (relid, lexeme, n)"
            " SELECT %(relation)s::regclass, s.word, s.ndoc FROM ts_stat(%(query)s) AS s",
            params,
        )
        await conn.execute(
            sql.SQL(
                "INSERT INTO cv_term_counts (relid, lexeme, n) SELECT %(relation)s::regclass, {k}, count(*) FROM {t}"
            ).format(k=sql.Literal(ROW_COUNT), t=t),
            params,
        )
    return True


async def _kept(conn: psycopg.AsyncConnection[Any], relation: str) -> bool:
    """The table carries every trigger and has its row count: only `ensure_term_counts` writes that row, after
    counting, so its presence means the counts were complete when the triggers took over."""
    row = await (
        await conn.execute(
            """SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = %(r)s::regclass AND tgname = ANY (%(names)s)),
                      EXISTS (SELECT 1 FROM cv_term_counts WHERE relid = %(r)s::regclass AND lexeme = %(k)s)""",
            {"r": relation, "names": list(TRIGGERS.values()), "k": ROW_COUNT},
        )
    ).fetchone()
    return bool(row and row[0] == len(TRIGGERS) and row[1])


async def fold_term_deltas(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """Move every committed delta into `cv_term_counts`; the number of delta rows folded, None when another fold
    holds the lock (it does the same work). One transaction: a reader sees the deltas or their sum, never both
    or neither. Words no chunk holds any more are dropped (the row count stays, at 0 for an empty table). Deltas
    of a table whose counts are not kept (no row count: the next minute tick, `count_untracked`, counts it
    afresh) are dropped, never folded into counts that would then look complete."""
    async with conn.transaction():
        row = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (FOLD_LOCK,))).fetchone()
        if not row or not row[0]:
            return None
        cur = await conn.execute(
            """WITH moved AS (DELETE FROM cv_term_deltas RETURNING relid, lexeme, delta),
                    upserted AS (
                        INSERT INTO cv_term_counts AS c (relid, lexeme, n)
                        SELECT m.relid, m.lexeme, sum(m.delta) FROM moved AS m
                        WHERE EXISTS (SELECT 1 FROM cv_term_counts AS r WHERE r.relid = m.relid AND r.lexeme = %(k)s)
                        GROUP BY m.relid, m.lexeme
                        ON CONFLICT (relid, lexeme) DO UPDATE SET n = c.n + EXCLUDED.n
                        RETURNING c.relid, c.lexeme, c.n
                    )
               SELECT (SELECT count(*) FROM moved),
                      COALESCE(array_agg(u.relid) FILTER (WHERE u.n = 0 AND u.lexeme <> %(k)s), '{}'),
                      COALESCE(array_agg(u.lexeme) FILTER (WHERE u.n = 0 AND u.lexeme <> %(k)s), '{}')
               FROM upserted AS u""",
            {"k": ROW_COUNT},
        )
        folded = await cur.fetchone()
        if folded and folded[1]:  # words no chunk holds any more; only those just folded are looked at
            await conn.execute(
                """DELETE FROM cv_term_counts AS c USING unnest(%s::oid[], %s::text[]) AS z(relid, lexeme)
                   WHERE c.relid = z.relid AND c.lexeme = z.lexeme AND c.n = 0""",
                (folded[1], folded[2]),
            )
    return int(folded[0]) if folded and folded[0] is not None else 0
