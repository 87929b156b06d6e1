"""A person's word statistics may be taken by two plans (`app.search._VIEWER_STATISTICS`), chosen by the
planner's statistics over the whole table, pages the person cannot read included: a word in at least
`DENSE_SHARE` of all rows is counted by reading rows in table order, any other on the GIN index. The choice
must never show in the answer. Two worlds differ only in pages Alice may not read: in one, a query word is in
nearly every row (dense plan), in the other in one row of twelve (index plan); her results must be identical,
score for score."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app import access
from app.access import PageAccess, Restriction, SpaceAccess, person_principals
from app.chunking import chunk_page, embed_text
from app.models import Page
from app.search import DENSE_SHARE, SearchMode, search
from app.vector_store import VectorStore, metadata_hash
from tests.fakes import ollama

FILLER = "The quarterly planning notes list owners, dates and the review cadence for the platform team."
SECRET_PAGES = 30


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


async def _world(pool: Any, secret_word: str) -> float:
    """Pages 1 and 2 open to staff; board-only pages naming `secret_word`. Page 1 names foocorp in its title
    and text, page 2 zzuniq in its text: with equal word weights page 1 leads (its title adds `field_tie` of
    the weight), with 'foocorp' weighted as common as the board's pages make it, page 2 does.
    Returns the share of all rows holding 'foocorp' in the planner's statistics after ANALYZE."""
    async with pool.connection() as conn:
        for table in ("data_confluence", "cv_pages", "cv_page_access", "cv_restrictions", "cv_space_access"):
            await conn.execute(f"DELETE FROM {table}")
    store = VectorStore(pool, "confluence")
    pages = [
        _page("1", f"{FILLER} Mentions foocorp once.", "Foocorp notes"),
        _page("2", f"{FILLER} Mentions zzuniq once."),
    ]
    pages += [
        _page(str(100 + i), f"Board minutes: {secret_word} acquisition approved. {i}") for i in range(SECRET_PAGES)
    ]
    for page, markdown in pages:
        nodes = chunk_page(page, markdown, chunk_size=256, chunk_overlap=0, max_tokens=8192)
        vectors = {n.node_id: ollama.embed_text(embed_text(n)) for n in nodes}
        assert (await store.replace_page(page, nodes, vectors, page_meta_hash=metadata_hash({"v": 1}))).written
    async with pool.connection() as conn:
        await access.save_space(conn, SpaceAccess("ENG", frozenset({"group:staff"})))
        for page, _ in pages:
            secret = int(page.id) >= 100
            await access.save_page_access(conn, PageAccess(page.id, "ENG", (page.id,)))
            board = frozenset({"group:board"}) if secret else frozenset()
            await access.save_restrictions(conn, [Restriction(page.id, secret, board)])
        await conn.execute("ANALYZE data_confluence")
        cur = await conn.execute(
            """SELECT e.share FROM pg_stats AS s,
                   unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(elem, share)
               WHERE s.tablename = 'data_confluence' AND s.attname = 'cv_search_tsv' AND e.elem = 'foocorp'"""
        )
        row = await cur.fetchone()
    return float(row[0]) if row is not None else 0.0


async def test_dense_and_index_plans_give_a_person_the_same_answer(pool: Any) -> None:
    alice = person_principals("alice", ["staff"])  # not on the board: pages 1 and 2 only
    answers: dict[str, list[tuple[str, float]]] = {}
    shares: dict[str, float] = {}
    for word in ("foocorp", "barcorp"):
        shares[word] = await _world(pool, word)
        hits = await search(pool, Embedder(), "confluence", "foocorp zzuniq", k=5, mode=SearchMode.HYBRID,
                            principals=alice)  # fmt: skip
        assert {h.page_id for h in hits} == {"1", "2"}
        answers[word] = [(h.page_id, round(h.score, 6)) for h in hits]
    assert answers["barcorp"][0][0] == "1"  # equal weights for her: the title breaks the tie
    # The two worlds really take the two plans for 'foocorp' ...
    assert shares["foocorp"] >= DENSE_SHARE > shares["barcorp"], shares
    # ... and Alice cannot tell them apart.
    assert answers["foocorp"] == answers["barcorp"]
