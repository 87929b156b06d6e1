"""Reindex on real Postgres: names at the identifier limit, one reindex at a time, a bad page is reported."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from app.db import ensure_vector_table, vector_index_names
from app.reindex import (
    MAX_TABLE_NAME,
    REINDEX_LOCK,
    ReindexInProgress,
    _rename,
    reindex,
    shadow_table,
)
from tests.conftest import make_settings
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama

LONGEST = "t" * MAX_TABLE_NAME


async def relation_names(conn: psycopg.AsyncConnection, table: str) -> set[str]:
    cur = await conn.execute(
        """SELECT c.relname FROM pg_class AS c
           WHERE c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass)
              OR c.oid = pg_get_serial_sequence(%s, 'id')::regclass""",
        (f"data_{table}", f"data_{table}"),
    )
    return {row[0] for row in await cur.fetchall()}


async def test_the_swap_renames_every_relation_at_the_longest_table_name(db_url: str) -> None:
    shadow = shadow_table(LONGEST)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await ensure_vector_table(conn, LONGEST, 8)
        await ensure_vector_table(conn, shadow, 8)
        live = await relation_names(conn, LONGEST)
        staged = await relation_names(conn, shadow)
        # Postgres created exactly the names we compute: none was truncated behind our back.
        assert set(vector_index_names(LONGEST).values()) <= live
        assert set(vector_index_names(shadow).values()) <= staged
        assert len(staged) == len(live) == len(vector_index_names(LONGEST)) + 2  # and the primary key, sequence
        await conn.execute(f'INSERT INTO "data_{shadow}" (text, node_id) VALUES (%s, %s)', ("rebuilt", "n1"))
        async with conn.transaction():
            await _rename(conn, LONGEST, shadow)
        assert await relation_names(conn, LONGEST) == live
        row = await (await conn.execute(f'SELECT text FROM "data_{LONGEST}"')).fetchone()
        assert row == ("rebuilt",)
        gone = await (await conn.execute("SELECT to_regclass(%s)", (f'"data_{shadow}"',))).fetchone()
        assert gone == (None,)


async def test_a_second_reindex_refuses_while_one_runs(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as running:
        await running.execute("SELECT pg_advisory_lock(%s)", (REINDEX_LOCK,))
        with pytest.raises(ReindexInProgress, match="Another reindex is running"):
            await reindex(make_settings(database_url=db_url))
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            shadow = await (await conn.execute("SELECT to_regclass('data_confluence_reindex')")).fetchone()
        assert shadow == (None,)  # refused before touching anything


@pytest.fixture()
def fakes() -> Iterator[tuple[FakeConfluence, FakeOllama, FakeOllama]]:
    with (
        FakeConfluence("cloud") as confluence,
        FakeOllama(dim=1024) as old,
        FakeOllama(dim=384, model="all-minilm") as new,
    ):
        yield confluence, old, new


async def test_one_bad_page_is_reported_and_requeued_and_the_rest_swapped_in(
    db_url: str, fakes: tuple[FakeConfluence, FakeOllama, FakeOllama]
) -> None:
    from app.pipeline import process_page
    from app.runtime import Runtime

    confluence, old, new = fakes
    base = dict(database_url=db_url, confluence_base_url=confluence.base_url, **confluence.credentials)
    rt = await Runtime.open(make_settings(ollama_base_url=old.base_url, **base))
    try:
        for page_id in ("501", "502", "503"):
            confluence.put_page(page_id, title=f"Page {page_id}", body=f"<p>Text of page {page_id}.</p>")
            assert (await process_page(rt, page_id)).action == "indexed"
    finally:
        await rt.close()

    confluence.fail_next(20, status=400, path_contains="/pages/502")  # permanent for the client: no retry
    settings = make_settings(ollama_base_url=new.base_url, embed_model="all-minilm", embed_dim=384, **base)
    report = await reindex(settings)

    assert report.pages == 2 and len(report.failed) == 1 and report.failed[0].startswith("502: ")
    assert report.requeued == 1
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT metadata_ ->> 'ref_doc_id', vector_dims(embedding) FROM data_confluence ORDER BY 1"
            )
        ).fetchall()
        state = await (
            await conn.execute("SELECT status, content_hash, last_error FROM cv_pages WHERE page_id = '502'")
        ).fetchone()
        jobs = await (
            await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND args ->> 'page_id' = '502'"
            )
        ).fetchone()
    assert rows == [("501", 384), ("503", 384)]
    assert state is not None and state[1] is None and state[2].startswith("reindex: ")
    assert jobs == (1,)  # the worker (with the new model) will index it


async def test_catch_up_rounds_redo_what_the_live_worker_changed_during_the_bulk_load(
    db_url: str, fakes: tuple[FakeConfluence, FakeOllama, FakeOllama], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SETTLED=0 every change goes through a catch-up round (not only the locked swap): the rebuild is held
    on its last page while the old-model pipeline edits, creates and deletes pages it has already rebuilt."""
    import asyncio
    import time

    import app.reindex
    from app.pipeline import process_page
    from app.runtime import Runtime

    monkeypatch.setattr(app.reindex, "SETTLED", 0)
    confluence, old, new = fakes
    base = dict(database_url=db_url, confluence_base_url=confluence.base_url, **confluence.credentials)
    live = await Runtime.open(make_settings(ollama_base_url=old.base_url, **base))
    try:
        for page_id in ("601", "602", "603", "609"):
            confluence.put_page(page_id, title=f"Page {page_id}", body=f"<p>Text of page {page_id}.</p>")
            await process_page(live, page_id)

        new.hold_on = "Text of page 609"
        settings = make_settings(ollama_base_url=new.base_url, embed_model="all-minilm", embed_dim=384, **base)
        rebuild = asyncio.create_task(reindex(settings))
        deadline = time.monotonic() + 60
        while new.held == 0:
            assert time.monotonic() < deadline and not rebuild.done(), "the rebuild never reached its last page"
            await asyncio.sleep(0.05)
        confluence.put_page("601", title="Page 601", body="<p>Edited while the rebuild ran.</p>")
        confluence.put_page("604", title="Page 604", body="<p>Created while the rebuild ran.</p>")
        confluence.delete_page("602")
        for page_id in ("601", "604", "602"):
            await process_page(live, page_id)
        new.release()
        report = await asyncio.wait_for(rebuild, 120)
    finally:
        new.release()
        await live.close()

    assert report.rounds >= 1 and report.caught_up >= 3 and not report.failed
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        rows = await (
            await conn.execute("SELECT metadata_ ->> 'ref_doc_id', text FROM data_confluence ORDER BY 1")
        ).fetchall()
        states = await (await conn.execute("SELECT page_id, status, version FROM cv_pages ORDER BY 1")).fetchall()
    texts = {page_id: text for page_id, text in rows}
    assert sorted(texts) == ["601", "603", "604", "609"]
    assert "Edited while the rebuild ran." in texts["601"] and "Created while the rebuild ran." in texts["604"]
    assert ("601", "indexed", 2) in states and states[1][:2] == ("602", "deleted")
