"""A person's hybrid search must not depend on text they may not read (issue 12: results never reveal a page
the person cannot read). The word-rarity weights of the lexical ranking were counted over every row, so the
scores of two pages Alice can read moved when restricted pages she cannot read mentioned one of her words:
anyone could test whether a restricted page contains a word. Two worlds differing only in the text of pages
Alice may not read must give her identical results, score for score."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app import access
from app.access import PageAccess, Restriction, SpaceAccess, person_principals
from app.chunking import chunk_page, embed_text
from app.models import Page
from app.search import SearchMode, search
from app.vector_store import VectorStore, metadata_hash
from tests.fakes import ollama

FILLER = "The quarterly planning notes list owners, dates and the review cadence for the platform team."


class Embedder:
    async def aget_query_embedding(self, query: str) -> list[float]:
        return ollama.embed_text(query)


def _page(pid: str, text: str) -> tuple[Page, str]:
    page = Page(
        id=pid, title=f"Notes {pid}", space_key="ENG", version=1, last_modified=datetime.now(UTC),
        url=f"https://wiki.example/wiki/spaces/ENG/pages/{pid}", body_storage="", space_name="Eng",
    )
    return page, f"# Notes\n\n{text}"


async def _world(pool: Any, secret_word: str) -> None:
    """Pages 1 and 2 open to staff; six board-only pages whose text names `secret_word`."""
    async with pool.connection() as conn:
        for table in ("data_confluence", "cv_pages", "cv_page_access", "cv_restrictions", "cv_space_access"):
            await conn.execute(f"DELETE FROM {table}")
    store = VectorStore(pool, "confluence")
    pages = [_page("1", f"{FILLER} Mentions foocorp once."), _page("2", f"{FILLER} Mentions zzuniq once.")]
    pages += [_page(str(100 + i), f"Board minutes: acquisition of {secret_word} approved. {i}") for i in range(6)]
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


async def test_hybrid_scores_do_not_depend_on_pages_the_person_cannot_read(pool: Any) -> None:
    alice = person_principals("alice", ["staff"])  # not on the board: pages 1 and 2 only
    answers: dict[str, list[tuple[str, float]]] = {}
    for word in ("foocorp", "barcorp"):
        await _world(pool, word)
        hits = await search(pool, Embedder(), "confluence", "foocorp zzuniq", k=5, mode=SearchMode.HYBRID,
                            principals=alice)
        assert {h.page_id for h in hits} == {"1", "2"}
        answers[word] = [(h.page_id, round(h.score, 6)) for h in hits]
    assert answers["foocorp"] == answers["barcorp"]
