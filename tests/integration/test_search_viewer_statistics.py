"""A person's word statistics (`app.search._VIEWER_STATISTICS`) must be a function of the rows they may read, and of
nothing else, whatever plan Postgres takes:

* a common word's document count is estimated from the readable rows of a fixed 1-in-16 sample
  (`app.db.sample_predicate`), a rare word's counted exactly; which branch a word takes must depend on the
  readable rows only, never on how many rows the person cannot read hold the word;
* two worlds differing only in pages Alice may not read give her identical results, score for score, even when
  in one of them the unreadable pages put a query word into enough sample rows to change its branch if they
  were counted;
* the sample count runs on its own partial index (else a common word reads every row holding it: the slowness
  that made person search 2.75x the service account's at 100k chunks, bench/permission_search.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from pgvector.psycopg import register_vector_async
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from app import access
from app.access import PageAccess, Restriction, SpaceAccess, person_principals
from app.chunking import chunk_page, embed_text
from app.db import sample_predicate, vector_index_names
from app.models import Page
from app.search import DF_CAP, N_CAP, SAMPLE_MIN, SAMPLE_SCALE, SearchMode, _hybrid_sql, search
from app.vector_store import VectorStore, metadata_hash
from tests.fakes import ollama

FILLER = "The quarterly planning notes list owners, dates and the review cadence for the platform team."
#: Enough board pages that their sample rows holding the secret word reach SAMPLE_MIN (asserted, not hoped).
SECRET_PAGES = 12 * SAMPLE_SCALE


class Embedder:
    async def aget_query_embedding(self, query: str) -> list[float]:
        return ollama.embed_text(query)


def _page(pid: str, text: str, title: str = "Notes") -> tuple[Page, str]:
    page = Page(
        id=pid,
        title=f"{title} {pid}",
        space_key="ENG",
        version=1,
        last_modified=datetime.now(UTC),
        url=f"https://wiki.example/wiki/spaces/ENG/pages/{pid}",
        body_storage="",
        space_name="Eng",
    )
    return page, f"# Notes\n\n{text}"


async def _world(pool: Any, secret_word: str | None, common_pages: int = 0) -> None:
    """Pages 1 and 2 open to staff (page 1 names foocorp in its title and text, page 2 zzuniq in its text);
    `common_pages` more open pages naming foocorp (so it is common among readable rows too); and, unless
    `secret_word` is None, board-only pages naming it."""
    async with pool.connection() as conn:
        for table in ("data_confluence", "cv_pages", "cv_page_access", "cv_restrictions", "cv_space_access"):
            await conn.execute(f"DELETE FROM {table}")
    store = VectorStore(pool, "confluence")
    pages = [
        _page("1", f"{FILLER} Mentions foocorp once.", "Foocorp notes"),
        _page("2", f"{FILLER} Mentions zzuniq once."),
    ]
    pages += [_page(str(10_000 + i), f"Open thread {i} about foocorp pricing.") for i in range(common_pages)]
    if secret_word is not None:
        pages += [_page(str(100 + i), f"Board minutes: {secret_word} acquisition. {i}") for i in range(SECRET_PAGES)]
    for page, markdown in pages:
        nodes = chunk_page(page, markdown, chunk_size=256, chunk_overlap=0, max_tokens=8192)
        vectors = {n.node_id: ollama.embed_text(embed_text(n)) for n in nodes}
        assert (await store.replace_page(page, nodes, vectors, page_meta_hash=metadata_hash({"v": 1}))).written
    async with pool.connection() as conn:
        await access.save_space(conn, SpaceAccess("ENG", frozenset({"group:staff"})))
        for page, _ in pages:
            secret = 100 <= int(page.id) < 10_000
            await access.save_page_access(conn, PageAccess(page.id, "ENG", (page.id,)))
            board = frozenset({"group:board"}) if secret else frozenset()
            await access.save_restrictions(conn, [Restriction(page.id, secret, board)])
        await conn.execute("ANALYZE data_confluence")


async def _sample_rows_holding(pool: Any, word: str, *, readable_only: bool) -> int:
    query = sql.SQL(
        "SELECT count(*) FROM data_confluence AS d WHERE d.cv_search_tsv @@ to_tsquery('simple', %s) AND {s}"
        + (" AND (d.metadata_ ->> 'ref_doc_id')::int NOT BETWEEN 100 AND 9999" if readable_only else "")
    ).format(s=sample_predicate("d"))
    async with pool.connection() as conn:
        row = await (await conn.execute(query, (word,))).fetchone()
    return int(row[0]) if row else 0


async def _answer(pool: Any, who: frozenset[str], query: str = "foocorp zzuniq") -> list[tuple[str, float]]:
    hits = await search(pool, Embedder(), "confluence", query, k=5, mode=SearchMode.HYBRID, principals=who)
    return [(h.page_id, round(h.score, 6)) for h in hits]


@pytest.fixture
async def exact_pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """Search without the HNSW index (exact nearest neighbours): two different tables have two different
    approximate graphs, and only exact search makes their answers comparable row for row."""

    async def configure(conn: AsyncConnection[Any]) -> None:
        await register_vector_async(conn)
        await conn.set_autocommit(True)
        await conn.execute("SET enable_indexscan = off")

    p = AsyncConnectionPool(db_url, min_size=1, max_size=2, configure=configure, open=False)
    await p.open()
    try:
        yield p
    finally:
        await p.close()


async def test_pages_a_person_cannot_read_never_change_their_answer(pool: Any) -> None:
    alice = person_principals("alice", ["staff"])  # not on the board: pages 1 and 2 only
    answers: dict[str, list[tuple[str, float]]] = {}
    for word in ("foocorp", "barcorp"):
        await _world(pool, word)
        if word == "foocorp":  # counted over every row, foocorp would be estimated from the sample ...
            assert await _sample_rows_holding(pool, "foocorp", readable_only=False) >= SAMPLE_MIN
            assert await _sample_rows_holding(pool, "foocorp", readable_only=True) < SAMPLE_MIN  # ... not for her
        answers[word] = await _answer(pool, alice)
        assert {page for page, _ in answers[word]} == {"1", "2"}
    assert answers["barcorp"][0][0] == "1"  # equal weights for her: the title breaks the tie
    assert answers["foocorp"] == answers["barcorp"]


async def test_a_person_is_answered_as_if_only_the_rows_they_may_read_existed(exact_pool: Any) -> None:
    """The definition, tested directly: Alice among board pages she cannot read gets exactly what Bob, who may
    read everything, gets in a world without those pages; with foocorp common among readable rows too (the
    sample branch) and rare (the exact branch)."""
    alice = person_principals("alice", ["staff"])
    bob = person_principals("bob", ["staff", "board"])
    pool = exact_pool
    for common_pages in (0, 12 * SAMPLE_SCALE):
        await _world(pool, "foocorp", common_pages)
        if common_pages:
            assert await _sample_rows_holding(pool, "foocorp", readable_only=True) >= SAMPLE_MIN
        hers = await _answer(pool, alice)
        await _world(pool, None, common_pages)
        assert await _answer(pool, bob) == hers, common_pages


async def _statement_and_params(conn: AsyncConnection[Any], query: str) -> tuple[sql.Composed, dict[str, Any]]:
    """Alice's hybrid statement and its parameters, as `app.search.search` binds them."""
    await register_vector_async(conn)
    alice = sorted(person_principals("alice", ["staff"]))
    cur = await conn.execute("SELECT cv_viewer_spaces(%s::text[]), cv_viewer_blocked(%s::text[])", (alice, alice))
    spaces, blocked = await cur.fetchone() or ([], [])
    params = {
        "embedding": np.asarray(ollama.embed_text(query), dtype=np.float32), "query": query, "k": 5,
        "candidates": 50, "space": None, "label": None, "principals": alice, "spaces": spaces, "blocked": blocked,
        "rrf_k": 20, "vector_weight": 0.2, "field_tie": 0.3, "df_cap": DF_CAP, "n_cap": N_CAP,
        "relation": "data_confluence", "floor": 0.5, "sample_cap": DF_CAP // SAMPLE_SCALE + 1,
        "sample_min": SAMPLE_MIN, "sample_scale": SAMPLE_SCALE,
    }  # fmt: skip
    return _hybrid_sql("confluence", space=None, label=None, principals=frozenset(alice)), params


async def test_common_words_are_counted_on_the_sample_index(pool: Any) -> None:
    await _world(pool, "foocorp", 12 * SAMPLE_SCALE)
    async with pool.connection() as conn:
        statement, params = await _statement_and_params(conn, "foocorp zzuniq")
        await conn.execute("SET enable_seqscan = off")  # a table this small would otherwise be read whole
        plan = "\n".join(r[0] for r in await (await conn.execute(sql.SQL("EXPLAIN ") + statement, params)).fetchall())
    assert vector_index_names("confluence")["search_sample"] in plan, plan


def _loops_on(node: dict[str, Any], relation: str) -> int:
    """Executions of scans of `relation` in a JSON plan subtree (EXPLAIN ANALYZE's "Actual Loops")."""
    own = int(node.get("Actual Loops", 0)) if node.get("Index Name", "").startswith(relation) else 0
    return own + sum(_loops_on(child, relation) for child in node.get("Plans", []))


async def test_the_lexical_ranking_tests_permission_only_on_rows_that_can_reach_the_answer(pool: Any) -> None:
    """Hundreds of rows hold 'foocorp' (half of them restricted), but only the rows near the top of the lexical
    ranking can reach the answer: the permission test runs on those (`_hybrid_sql`, steps `ceiling` and `best`),
    not once per matching row (it ran ~1,900 times per query at 100k chunks)."""
    await _world(pool, "foocorp", 12 * SAMPLE_SCALE)
    async with pool.connection() as conn:
        statement, params = await _statement_and_params(conn, "foocorp")
        cur = await conn.execute("SELECT count(*) FROM data_confluence WHERE cv_search_tsv @@ 'foocorp'::tsquery")
        holding = await cur.fetchone()
        plan = await (await conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + statement, params)).fetchone()
    assert plan is not None and holding is not None
    root = plan[0][0]["Plan"]
    ranking = [n for n in root.get("Plans", []) if n.get("Subplan Name") in ("CTE ceiling", "CTE best")]
    assert len(ranking) == 2
    tests = sum(_loops_on(n, "cv_page_access_pkey") for n in ranking)
    assert holding[0] >= 2 * 12 * SAMPLE_SCALE  # readable and restricted rows hold the word ...
    # ... but only rows up to the 50th readable candidate are tested: half the rows are restricted, so ~2 x 50
    # (before: every row holding the word, restricted or not, at least 384 here)
    assert 0 < tests <= 2 * 50 + 10 < holding[0], (tests, holding[0])
