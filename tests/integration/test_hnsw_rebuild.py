"""HNSW build parameters (HNSW_M, HNSW_EF_CONSTRUCTION) and `rebuild-hnsw-index` on real Postgres + pgvector.

What a user relies on: a new table gets the configured parameters; a start-up says when the index has others;
the rebuild applies them without blocking writes or searches, keeps the index's name (stock `PGVectorStore`
and `reindex` know it by name), answers as before, and takes over whatever an interrupted run left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector_async

from app.db import hnsw_parameters, migrate, vector_index_names
from app.hnsw import HnswRebuildFailed, VectorTableMissing, rebuild_hnsw_index, rebuild_name
from app.reindex import REINDEX_LOCK, ReindexInProgress
from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(180)

DIM = 1024
TABLE = "data_confluence"
INDEX = vector_index_names("confluence")["embedding"]


def _unit(rows: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await register_vector_async(conn)
    return conn


async def _insert(conn: psycopg.AsyncConnection[Any], vectors: np.ndarray, prefix: str) -> None:
    async with conn.cursor() as cur:
        await cur.executemany(
            f"INSERT INTO {TABLE} (text, node_id, metadata_, embedding) VALUES (%s, %s, '{{}}', %s)",
            [(f"{prefix} {i}", f"{prefix}-{i}", v) for i, v in enumerate(vectors)],
        )


async def _nearest(conn: psycopg.AsyncConnection[Any], query: np.ndarray, *, exact: bool) -> list[str]:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL enable_indexscan = {'off' if exact else 'on'}")
        await conn.execute(f"SET LOCAL enable_seqscan = {'on' if exact else 'off'}")
        await conn.execute("SET LOCAL hnsw.ef_search = 1000")
        cur = await conn.execute(
            f"SELECT node_id FROM {TABLE} ORDER BY embedding <=> %s LIMIT 10", (query,), prepare=False
        )
        return [row[0] for row in await cur.fetchall()]


async def _hnsw_indexes(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, bool]]:
    cur = await conn.execute(
        """SELECT c.relname, i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
           JOIN pg_am AS a ON a.oid = c.relam WHERE i.indrelid = %s::regclass AND a.amname = 'hnsw'""",
        (TABLE,),
    )
    return sorted((str(name), bool(valid)) for name, valid in await cur.fetchall())


async def _table_oid(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute("SELECT %s::regclass::oid", (TABLE,))).fetchone()
    assert row is not None
    return int(row[0])


async def _leftover_index(conn: psycopg.AsyncConnection[Any], m: int, ef_construction: int) -> tuple[str, Any]:
    """An index under the rebuild's own name, as an interrupted run leaves it; returns its name and oid."""
    name = rebuild_name(await _table_oid(conn))
    await conn.execute(
        f"CREATE INDEX {name} ON {TABLE} USING hnsw (embedding vector_cosine_ops)"
        f" WITH (m = {m}, ef_construction = {ef_construction})"
    )
    row = await (await conn.execute("SELECT %s::regclass::oid", (name,))).fetchone()
    assert row is not None
    return name, row[0]


async def _wait_for_build(url: str, phase_prefix: str = "") -> None:
    """Until `pg_stat_progress_create_index` shows the table's build in a phase starting with `phase_prefix`
    (polled, 30 s at most)."""
    async with await _connect(url) as watcher:
        for _ in range(600):
            row = await (
                await watcher.execute(
                    "SELECT phase FROM pg_stat_progress_create_index WHERE relid = %s::regclass", (TABLE,)
                )
            ).fetchone()
            if row is not None and str(row[0]).startswith(phase_prefix):
                return
            await asyncio.sleep(0.05)
    pytest.fail(f"the build never reached {phase_prefix or 'any phase'!r}")


def test_settings_refuse_what_pgvector_would_refuse() -> None:
    with pytest.raises(ValueError, match=r"HNSW_EF_CONSTRUCTION \(30\) must be at least 2 x HNSW_M \(16\)"):
        make_settings(hnsw_ef_construction=30)
    with pytest.raises(ValueError, match="hnsw_m"):
        make_settings(hnsw_m=101, hnsw_ef_construction=1000)
    with pytest.raises(ValueError, match="hnsw_ef_construction"):
        make_settings(hnsw_ef_construction=1001)


async def test_a_new_table_is_built_with_the_configured_parameters(db_url: str) -> None:
    await migrate(db_url, make_settings(vector_table="tuned", hnsw_m=8, hnsw_ef_construction=40))
    async with await _connect(db_url) as conn:
        assert await hnsw_parameters(conn, "tuned") == (8, 40)
        assert await hnsw_parameters(conn, "confluence") == (16, 64)  # the template's, pgvector's defaults
        assert await hnsw_parameters(conn, "absent") is None


async def test_a_start_says_when_the_index_was_built_with_other_parameters(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.db"):
        await migrate(db_url, make_settings(hnsw_m=24, hnsw_ef_construction=200))
    messages = [r.getMessage() for r in caplog.records if r.name == "app.db"]
    assert any(
        "built with m=16, ef_construction=64" in m and "m=24, ef_construction=200" in m and "rebuild-hnsw-index" in m
        for m in messages
    ), messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.db"):
        await migrate(db_url, make_settings())
    assert not [r for r in caplog.records if r.name == "app.db"], "no warning when they agree"


async def test_the_rebuild_applies_the_settings_keeps_the_name_and_the_answers(db_url: str) -> None:
    vectors = _unit(300, seed=1)
    queries = _unit(5, seed=2)
    async with await _connect(db_url) as conn:
        await _insert(conn, vectors, "row")
        exact = [await _nearest(conn, q, exact=True) for q in queries]
    report = await rebuild_hnsw_index(
        make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40), maintenance_work_mem="256MB"
    )
    assert (report.before, report.after, report.rebuilt) == ((16, 64), (8, 40), True)
    assert report.index_bytes > 0
    async with await _connect(db_url) as conn:
        assert await _hnsw_indexes(conn) == [(INDEX, True)], "one valid index, under its own name"
        assert await hnsw_parameters(conn, "confluence") == (8, 40)
        # ef_search 1,000 over 300 rows: the walk reaches every row, so the index answers exactly.
        assert [await _nearest(conn, q, exact=False) for q in queries] == exact
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")  # 300 rows: a scan would be cheaper
            plan = await (
                await conn.execute(f"EXPLAIN SELECT id FROM {TABLE} ORDER BY embedding <=> %s LIMIT 10", (queries[0],))
            ).fetchall()
        assert any(INDEX in str(row[0]) for row in plan), "the rebuilt index answers under the index's name"


async def test_the_same_parameters_rebuild_nothing_unless_forced(db_url: str) -> None:
    settings = make_settings(database_url=db_url)
    report = await rebuild_hnsw_index(settings)
    assert (report.before, report.after, report.rebuilt) == ((16, 64), (16, 64), False)
    async with await _connect(db_url) as conn:
        before = await (await conn.execute("SELECT %s::regclass::oid", (INDEX,))).fetchone()
    forced = await rebuild_hnsw_index(settings, force=True)
    assert forced.rebuilt
    async with await _connect(db_url) as conn:
        after = await (await conn.execute("SELECT %s::regclass::oid", (INDEX,))).fetchone()
        assert after != before, "--force built a new index"
        assert await _hnsw_indexes(conn) == [(INDEX, True)]


async def test_writes_and_searches_go_on_while_the_index_is_built(db_url: str) -> None:
    """A transaction that has written to the table and stays open holds the concurrent build at its first wait
    ("waiting for writers", PostgreSQL docs, Building Indexes Concurrently); meanwhile another writer and a
    search get through at once (a lock_timeout turns any wait into a failure)."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(50, seed=3), "before")
    holder = await _connect(db_url)
    await holder.set_autocommit(False)
    await _insert(holder, _unit(1, seed=4), "open")  # uncommitted: the build must wait for it
    build = asyncio.create_task(
        rebuild_hnsw_index(make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40))
    )
    try:
        await _wait_for_build(db_url, "waiting for writers")  # held by the open writer
        async with await _connect(db_url) as other:
            await other.execute("SET lock_timeout = '2s'")
            await _insert(other, _unit(3, seed=5), "during")
            found = await _nearest(other, _unit(1, seed=5)[0], exact=True)
            assert found[0] == "during-0"
        assert not build.done()
        await holder.commit()
        report = await asyncio.wait_for(build, timeout=120)
    finally:
        await holder.close()
    assert report.after == (8, 40)
    async with await _connect(db_url) as conn:
        count = await (await conn.execute(f"SELECT count(*) FROM {TABLE}")).fetchone()
        assert count == (54,)
        assert (await _nearest(conn, _unit(1, seed=4)[0], exact=False))[0] == "open-0", "the index holds it"


async def test_a_half_built_index_left_by_an_interrupted_run_is_dropped_and_built_again(db_url: str) -> None:
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(40, seed=6), "row")
        leftover, _ = await _leftover_index(conn, 4, 8)
        await conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", (leftover,))
    report = await rebuild_hnsw_index(make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40))
    assert report.rebuilt and report.after == (8, 40)
    async with await _connect(db_url) as conn:
        assert await _hnsw_indexes(conn) == [(INDEX, True)]


async def test_a_finished_index_that_lost_its_old_one_only_takes_the_name(db_url: str) -> None:
    """Interrupted between the drop and the rename: the table's only HNSW index has the rebuild's name."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(40, seed=7), "row")
        _, built = await _leftover_index(conn, 8, 40)
        await conn.execute(f"DROP INDEX {INDEX}")
    report = await rebuild_hnsw_index(make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40))
    assert (report.before, report.rebuilt) == ((8, 40), False), "named, not built again"
    async with await _connect(db_url) as conn:
        assert await _hnsw_indexes(conn) == [(INDEX, True)]
        kept = await (await conn.execute("SELECT %s::regclass::oid", (INDEX,))).fetchone()
        assert kept == (built,)


async def test_one_at_a_time_with_reindex(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as running:
        await running.execute("SELECT pg_advisory_lock(%s)", (REINDEX_LOCK,))
        with pytest.raises(ReindexInProgress, match="reindex or another HNSW rebuild"):
            await rebuild_hnsw_index(make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40))
    async with await _connect(db_url) as conn:
        assert await hnsw_parameters(conn, "confluence") == (16, 64)


async def test_a_refused_build_is_a_clear_error_and_keeps_the_old_index(db_url: str) -> None:
    with pytest.raises(HnswRebuildFailed, match="maintenance_work_mem"):
        await rebuild_hnsw_index(
            make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40), maintenance_work_mem="lots"
        )
    async with await _connect(db_url) as conn:
        assert await _hnsw_indexes(conn) == [(INDEX, True)]
        assert await hnsw_parameters(conn, "confluence") == (16, 64)
    with pytest.raises(VectorTableMissing, match="data_elsewhere"):
        await rebuild_hnsw_index(make_settings(database_url=db_url, vector_table="elsewhere"))


def test_the_command_reports_what_it_did(db_url: str) -> None:
    """`confluence-vectors rebuild-hnsw-index`, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFLUENCE_", "HNSW_", "DATABASE_"))}
    env.update(
        DATABASE_URL=db_url,
        CONFLUENCE_BASE_URL="http://127.0.0.1:9/wiki",
        HNSW_M="8",
        HNSW_EF_CONSTRUCTION="40",
        LOG_FORMAT="text",
    )
    command = [sys.executable, "-m", "app.cli", "rebuild-hnsw-index", "--maintenance-work-mem", "256MB"]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "m=16, ef_construction=64 -> m=8, ef_construction=40" in " ".join(first.stdout.split())
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in " ".join(again.stdout.split())
    bad = subprocess.run([*command[:-1], "lots", "--force"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "maintenance_work_mem" in " ".join(bad.stderr.split()), bad.stderr


async def test_a_service_start_during_the_build_does_not_wait_for_it(db_url: str) -> None:
    """`migrate` runs at every start; CREATE INDEX IF NOT EXISTS takes a SHARE lock on the table before it looks,
    which would queue every start (and, behind it, every write) for the whole concurrent build (an hour at 1M
    chunks). A start only creates what is missing."""
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(20, seed=8), "row")
    holder = await _connect(db_url)
    await holder.set_autocommit(False)
    await _insert(holder, _unit(1, seed=9), "open")  # holds the build mid-way ("waiting for writers")
    settings = make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40)
    build = asyncio.create_task(rebuild_hnsw_index(settings))
    try:
        await _wait_for_build(db_url)
        await asyncio.wait_for(migrate(db_url, settings), timeout=15)
        assert not build.done()
        await holder.commit()
        await asyncio.wait_for(build, timeout=120)
    finally:
        await holder.close()


async def test_a_finished_build_left_by_an_interrupted_run_is_swapped_in_not_built_again(db_url: str) -> None:
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(40, seed=10), "row")
        _, built = await _leftover_index(conn, 8, 40)
    report = await rebuild_hnsw_index(make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40))
    assert (report.before, report.rebuilt) == ((8, 40), False)
    async with await _connect(db_url) as conn:
        assert await _hnsw_indexes(conn) == [(INDEX, True)]
        kept = await (await conn.execute("SELECT %s::regclass::oid", (INDEX,))).fetchone()
        assert kept == (built,), "the finished build is the index now"


async def test_an_old_index_held_by_an_idle_transaction_is_left_for_the_next_run_with_a_clear_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drop of the old index waits for every transaction using the table; an idle one could hold it forever.
    After `DROP_WAIT_SECONDS` the command stops and says the new index is in place; the next run drops the old."""
    import app.hnsw

    monkeypatch.setattr(app.hnsw, "DROP_WAIT_SECONDS", 1)
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(30, seed=11), "row")
    reader = await _connect(db_url)
    await reader.set_autocommit(False)
    await reader.execute(f"SELECT id FROM {TABLE} LIMIT 1")
    settings = make_settings(database_url=db_url, hnsw_m=8, hnsw_ef_construction=40)
    try:
        dropped = r"answers searches, but cv_hnsw_retired_\d+, .*could not be dropped"
        with pytest.raises(HnswRebuildFailed, match=dropped):
            await asyncio.wait_for(rebuild_hnsw_index(settings), timeout=120)
        async with await _connect(db_url) as conn:
            assert await hnsw_parameters(conn, "confluence") == (8, 40), "the new index answers under the name"
    finally:
        await reader.close()
    report = await rebuild_hnsw_index(settings)
    assert not report.rebuilt
    async with await _connect(db_url) as conn:
        assert await _hnsw_indexes(conn) == [(INDEX, True)]


async def test_a_start_advises_a_wider_graph_once_the_table_is_large(
    db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `LARGE_TABLE_ROWS` chunks pgvector's default ef_construction leaves neighbours unreachable (measured
    at 1M: recall@10 0.62 against 0.96): a start says what to set and run, and stops saying it once it is done."""
    import app.db

    monkeypatch.setattr(app.db, "LARGE_TABLE_ROWS", 30)
    async with await _connect(db_url) as conn:
        await _insert(conn, _unit(40, seed=12), "row")
    with caplog.at_level(logging.WARNING, logger="app.db"):
        await migrate(db_url, make_settings())
    advice = [r.getMessage() for r in caplog.records if "holds 40 chunks" in r.getMessage()]
    assert advice and "HNSW_EF_CONSTRUCTION=200" in advice[0] and "rebuild-hnsw-index" in advice[0], advice
    settings = make_settings(database_url=db_url, hnsw_ef_construction=200)
    await rebuild_hnsw_index(settings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.db"):
        await migrate(db_url, settings)
    assert not [r for r in caplog.records if r.name == "app.db"], "nothing left to advise"
