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

from typing import Any

import psycopg
from psycopg import sql

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
CREATE INDEX IF NOT EXISTS cv_term_deltas_lexeme_idx ON cv_term_deltas (relid, lexeme) INCLUDE (delta);

CREATE OR REPLACE FUNCTION cv_count_terms() RETURNS trigger LANGUAGE plpgsql AS $$
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
    ELSE  -- TRUNCATE
        DELETE FROM cv_term_deltas WHERE relid = TG_RELID;
        DELETE FROM cv_term_counts WHERE relid = TG_RELID;
        INSERT INTO cv_term_counts (relid, lexeme, n) VALUES (TG_RELID, '{ROW_COUNT}', 0);
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
    """Install the counting triggers on `data_<table>` and count its existing rows, once.

    Atomic: the table is locked against writes (SHARE ROW EXCLUSIVE; searches go on) while the triggers are created
    and the existing rows counted (`ts_stat`, one pass over the column), so no write falls between the two.
    Returns True when it counted (a table created before this module, or a new one), False when the triggers were
    already there. Also forgets the counts of dropped tables. `conn` must be in autocommit mode.
    """
    t = sql.Identifier(f"data_{table}")
    await conn.execute(SCHEMA)
    await conn.execute(
        """DELETE FROM cv_term_counts WHERE relid NOT IN (SELECT oid FROM pg_class);
           DELETE FROM cv_term_deltas WHERE relid NOT IN (SELECT oid FROM pg_class)"""
    )
    async with conn.transaction():
        if await _installed(conn, f"data_{table}"):
            return False
        await conn.execute(sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=t))
        if await _installed(conn, f"data_{table}"):  # another process won the race while we waited for the lock
            return False
        for event, name in TRIGGERS.items():
            transition = {
                "INSERT": "REFERENCING NEW TABLE AS cv_new_rows",
                "UPDATE": "REFERENCING OLD TABLE AS cv_old_rows NEW TABLE AS cv_new_rows",
                "DELETE": "REFERENCING OLD TABLE AS cv_old_rows",
                "TRUNCATE": "",
            }[event]
            await conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {n} ON {t}").format(n=sql.Identifier(name), t=t))
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


async def _installed(conn: psycopg.AsyncConnection[Any], relation: str) -> bool:
    row = await (
        await conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = ANY (%s)",
            (relation, list(TRIGGERS.values())),
        )
    ).fetchone()
    return bool(row and row[0] == len(TRIGGERS))


async def fold_term_deltas(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """Move every committed delta into `cv_term_counts`; the number of delta rows folded, None when another fold
    holds the lock (it does the same work). One transaction: a reader sees the deltas or their sum, never both
    or neither. Words no chunk holds any more are dropped (the row count stays, at 0 for an empty table)."""
    async with conn.transaction():
        row = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (FOLD_LOCK,))).fetchone()
        if not row or not row[0]:
            return None
        cur = await conn.execute(
            """WITH moved AS (DELETE FROM cv_term_deltas RETURNING relid, lexeme, delta),
                    upserted AS (
                        INSERT INTO cv_term_counts AS c (relid, lexeme, n)
                        SELECT relid, lexeme, sum(delta) FROM moved GROUP BY relid, lexeme
                        ON CONFLICT (relid, lexeme) DO UPDATE SET n = c.n + EXCLUDED.n
                    )
               SELECT count(*) FROM moved"""
        )
        folded = await cur.fetchone()
        await conn.execute("DELETE FROM cv_term_counts WHERE n = 0 AND lexeme <> %s", (ROW_COUNT,))
    return int(folded[0]) if folded and folded[0] is not None else 0
