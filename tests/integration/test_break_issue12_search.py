"""Issue 12 break attempt: person-scoped `app.search.search` over random permission worlds, on real Postgres.

Random trees, restrictions at any level (some not established), space grants (some not established, some
anonymous), group memberships (`tests.unit.test_access_rule.worlds`; ids "1" and "12" are prefixes of one
another), every page indexed with words drawn from a small vocabulary (so a word may be common only in pages a
person cannot read), plus rows of a page without any access record. For random queries (hostile ones
included: tsquery syntax, SQL-looking text, stop words only, one character, 500 words), both modes, k from 1
to 100, with and without a space or label filter:

* every hit is a page the brute-force oracle lets the person read (a leak otherwise);
* the person's answer, score for score, is the same when the rows of every page they cannot read are
  deleted (the side channel: a word in an unreadable page must not move what they see).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.access import person_principals
from app.chunking import chunk_page, embed_text
from app.db import make_pool
from app.models import Page
from app.search import SearchHit, SearchMode, search
from app.vector_store import VectorStore, metadata_hash
from tests.fakes import ollama
from tests.unit.test_access_rule import USERS, World, _store, worlds

VOCAB = ["alpha", "beta", "gamma", "delta", "secret", "merger", "runbook", "incident"]
HOSTILE = [
    "secret & merger",
    "secret | !alpha",
    "!secret",
    "secr:*",
    "merger:* & secret:A",
    "' OR 1=1 --",
    "'); DROP TABLE cv_page_access; --",
    "%(blocked)s {t}",
    "the of and a",
    "x",
    " ".join(VOCAB[i % len(VOCAB)] for i in range(500)),
    "",
]
LABEL = "ops"


class Embedder:
    async def aget_query_embedding(self, query: str) -> list[float]:
        return ollama.embed_text(query)


def _page(pid: str, space: str, words: list[str], labelled: bool) -> tuple[Page, str]:
    page = Page(
        id=pid,
        title=f"Page {pid}",
        space_key=space,
        version=1,
        last_modified=datetime.now(UTC),
        url=f"https://wiki.example/wiki/spaces/{space}/pages/{pid}",
        body_storage="",
        space_name=space,
        labels=(LABEL,) if labelled else (),
    )
    return page, "# Notes\n\n" + " ".join(words)


async def _index(url: str, pages: list[tuple[Page, str]]) -> None:
    pool = make_pool(url, max_size=2)
    await pool.open()
    try:
        store = VectorStore(pool, "confluence")
        for page, markdown in pages:
            nodes = chunk_page(page, markdown, chunk_size=256, chunk_overlap=0, max_tokens=8192)
            vectors = {n.node_id: ollama.embed_text(embed_text(n)) for n in nodes}
            assert (await store.replace_page(page, nodes, vectors, page_meta_hash=metadata_hash({"v": 1}))).written
    finally:
        await pool.close()


async def _search(url: str, query: str, **kwargs: object) -> list[SearchHit]:
    pool = make_pool(url, max_size=2)
    await pool.open()
    try:
        return await search(pool, Embedder(), "confluence", query, **kwargs)  # type: ignore[arg-type]
    finally:
        await pool.close()


queries = st.one_of(
    st.lists(st.sampled_from(VOCAB), min_size=1, max_size=4).map(" ".join),
    st.sampled_from(HOSTILE),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=worlds(),
    texts=st.lists(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=6), min_size=14, max_size=14),
    labelled=st.lists(st.booleans(), min_size=15, max_size=15),
    query=queries,
    mode=st.sampled_from(list(SearchMode)),
    k=st.integers(1, 100),
    space=st.sampled_from([None, "A", "B"]),
    label=st.sampled_from([None, LABEL]),
    user=st.sampled_from(USERS),
)
def test_person_search_never_leaks_and_ignores_unreadable_pages(
    db_url: str,
    world: World,
    texts: list[list[str]],
    labelled: list[bool],
    query: str,
    mode: SearchMode,
    k: int,
    space: str | None,
    label: str | None,
    user: str,
) -> None:
    n = len(world.parents)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM data_confluence")
        conn.execute("DELETE FROM cv_pages")
        _store(conn, world)
    pages = [_page(str(i), world.space(i), texts[i], labelled[i]) for i in range(n)]
    # rows of a page with no access record at all (indexed, access never recorded): nobody may see it
    pages.append(_page("orphan", "A", ["secret", "merger", "alpha"], labelled[n]))
    asyncio.run(_index(db_url, pages))
    principals = person_principals(user, world.groups_of(user))
    readable = {str(i) for i in range(n) if world.oracle(user, i)}
    kwargs: dict[str, object] = {"k": k, "mode": mode, "space": space, "label": label, "principals": principals}

    hits = asyncio.run(_search(db_url, query, **kwargs))
    event(f"hits: {'some' if hits else 'none'}; readable pages: {'some' if readable else 'none'}")
    leaked = {h.page_id for h in hits} - readable
    assert not leaked, (user, leaked, world)

    with psycopg.connect(db_url, autocommit=True) as conn:  # the pages they cannot read vanish
        conn.execute(
            "DELETE FROM data_confluence WHERE NOT (metadata_ ->> 'ref_doc_id' = ANY (%s))", (sorted(readable),)
        )
        conn.execute("ANALYZE data_confluence")
    alone = asyncio.run(_search(db_url, query, **kwargs))
    assert [(h.page_id, h.node_id) for h in hits] == [(h.page_id, h.node_id) for h in alone], (query, world)
    for before, after in zip(hits, alone, strict=True):
        assert abs(before.score - after.score) <= 1e-9, (query, before, after)


def test_thousands_of_blocked_ids_and_prefix_ids(db_url: str) -> None:
    """A blocked list far past any hash bucket or array threshold (3,000 restricted pages, each on its own path
    id) and ids that are prefixes of one another: '12' restricted to the board, '1', '123' and '1234' open (the
    last under a folder '12x'). Eve sees exactly the open ones, in both modes, with every k."""
    restricted = [str(10_000 + i) for i in range(3000)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO cv_space_access (space_key, principals) VALUES ('A', ARRAY['group:staff'])")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO cv_restrictions (content_id, restricted, principals) VALUES (%s, %s, %s)",
                [(r, True, ["group:board"]) for r in [*restricted, "12"]]
                + [(r, False, []) for r in ("1", "123", "12x", "1234")],
            )
            cur.executemany(
                "INSERT INTO cv_page_access (page_id, space_key, path) VALUES (%s, 'A', %s)",
                [(r, [r]) for r in [*restricted[:200], "12", "1", "123"]] + [("1234", ["12x", "1234"])],
            )
    pages = [_page(r, "A", ["secret", "merger"], False) for r in [*restricted[:200], "12"]]
    pages += [_page(r, "A", ["secret", "alpha"], False) for r in ("1", "123", "1234")]
    asyncio.run(_index(db_url, pages))
    eve = person_principals("eve", ["staff"])
    for mode in SearchMode:
        for k in (1, 3, 10, 100):
            hits = asyncio.run(_search(db_url, "secret merger", k=k, mode=mode, principals=eve))
            assert {h.page_id for h in hits} <= {"1", "123", "1234"}, (mode, k)
            assert len({h.page_id for h in hits}) == min(k, 3), (mode, k, hits)
    nobody = person_principals("mallory", [])  # reads nothing at all
    for mode in SearchMode:
        assert asyncio.run(_search(db_url, "secret merger", k=100, mode=mode, principals=nobody)) == []
