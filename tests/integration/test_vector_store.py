"""The write path on real Postgres: exact replace, diffs, version guard, and LlamaIndex can read it."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from app.models import Page
from app.vector_store import VectorStore, llamaindex_store, metadata_hash

DIM = 1024


def make_page(version: int = 1, *, space: str = "ENG", page_id: str = "42") -> Page:
    return Page(
        id=page_id,
        title="Deploy guide",
        space_key=space,
        version=version,
        last_modified=datetime(2026, 1, version, tzinfo=UTC),
        url=f"https://example.atlassian.net/wiki/spaces/{space}/pages/{page_id}",
        body_storage="",
    )


def make_nodes(page: Page, texts: list[str]) -> list[TextNode]:
    nodes = []
    for text in texts:
        node = TextNode(
            id_=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{page.id}:{text}")),
            text=text,
            metadata={
                "page_id": page.id,
                "space_key": page.space_key,
                "version": page.version,
                "title": page.title,
            },
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=page.id)
        nodes.append(node)
    return nodes


def vec(text: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
    v = np.random.default_rng(seed).standard_normal(DIM)
    return list(v / np.linalg.norm(v))


async def write(store: VectorStore, page: Page, texts: list[str]):
    nodes = make_nodes(page, texts)
    have = await store.node_ids(page.id)
    embeddings = {n.node_id: vec(n.text) for n in nodes if n.node_id not in have}
    meta = {"space_key": page.space_key, "version": page.version}
    return await store.replace_page(page, nodes, embeddings, page_meta_hash=metadata_hash(meta)), embeddings


async def test_replace_is_exact_and_diffs(pool) -> None:
    store = VectorStore(pool, "confluence")
    result, embedded = await write(store, make_page(1), ["alpha", "beta", "gamma"])
    assert (result.inserted, result.deleted, len(embedded)) == (3, 0, 3)
    assert await store.count_rows("42") == 3

    # Edit: one chunk changed, one removed, one added → only the new ones are embedded and inserted.
    result, embedded = await write(store, make_page(2), ["alpha", "beta prime", "delta"])
    assert len(embedded) == 2
    assert (result.inserted, result.deleted, result.kept) == (2, 2, 1)
    assert await store.count_rows("42") == 3

    # Shrink: the page loses its extra rows.
    result, _ = await write(store, make_page(3), ["alpha"])
    assert await store.count_rows("42") == 1
    state = await store.page_state("42")
    assert state is not None and state.version == 3 and state.chunk_count == 1 and state.status == "indexed"


async def test_older_version_never_overwrites_newer(pool) -> None:
    store = VectorStore(pool, "confluence")
    await write(store, make_page(6), ["six"])
    result, _ = await write(store, make_page(5), ["five"])
    assert not result.written
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT text FROM data_confluence")).fetchall()
    assert [r[0] for r in rows] == ["six"]


async def test_move_refreshes_metadata_of_kept_rows(pool) -> None:
    store = VectorStore(pool, "confluence")
    await write(store, make_page(1, space="ENG"), ["alpha", "beta"])
    result, embedded = await write(store, make_page(1, space="OPS"), ["alpha", "beta"])
    assert embedded == {} and result.inserted == 0 and result.metadata_updated == 2
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT DISTINCT metadata_->>'space_key' FROM data_confluence")).fetchall()
    assert rows == [("OPS",)]


async def test_delete_page_removes_rows_and_records_status(pool) -> None:
    store = VectorStore(pool, "confluence")
    await write(store, make_page(1), ["alpha", "beta"])
    removed = await store.delete_page("42", status="deleted", reason="404")
    assert removed == 2 and await store.count_rows() == 0
    state = await store.page_state("42")
    assert state is not None and state.status == "deleted" and state.reason == "404"


async def test_duplicate_node_ids_rejected(pool) -> None:
    store = VectorStore(pool, "confluence")
    page = make_page(1)
    nodes = make_nodes(page, ["same", "same"])
    with pytest.raises(ValueError):
        await store.replace_page(page, nodes, {n.node_id: vec("x") for n in nodes}, page_meta_hash="h")


async def test_stock_pgvectorstore_reads_our_rows(pool, db_url: str) -> None:
    """LlamaIndex's own PGVectorStore + VectorStoreIndex retrieve our nodes with text and metadata."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.vector_stores.types import VectorStoreQuery

    store = VectorStore(pool, "confluence")
    await write(store, make_page(1), ["alpha release notes", "beta rollout plan"])

    pg = llamaindex_store(db_url, "confluence", DIM)
    result = pg.query(VectorStoreQuery(query_embedding=vec("beta rollout plan"), similarity_top_k=1))
    assert result.nodes and result.nodes[0].get_content() == "beta rollout plan"
    assert result.nodes[0].metadata["space_key"] == "ENG"
    assert result.nodes[0].ref_doc_id == "42"

    index = VectorStoreIndex.from_vector_store(pg, embed_model=MockEmbedding(embed_dim=DIM))
    retrieved = index.as_retriever(similarity_top_k=2).retrieve("anything")
    assert {n.node.get_content() for n in retrieved} == {"alpha release notes", "beta rollout plan"}


# --- write economy: an edit writes the rows of the chunks it changed, nothing more ----------------------------
def runbook(sections: int = 15, paragraphs: int = 12, *, edit: tuple[int, int] | None = None) -> str:
    """Storage XHTML of a ~40-chunk page (at CHUNK_SIZE=512); `edit=(s, p)` rewrites one paragraph."""
    parts = []
    for s in range(sections):
        parts.append(f"<h2>Section {s}</h2>")
        for p in range(paragraphs):
            text = (
                f"Paragraph {p} of section {s}: the deploy pipeline runs canary checks, then promotes the build "
                f"to region {s}-{p} once the error budget allows it, and pages the on-call engineer if latency "
                f"in region {s}-{p} regresses."
            )
            if edit == (s, p):
                text = f"Edited paragraph {p} of section {s}: rollbacks now need two approvals and a ticket."
            parts.append(f"<p>{text}</p>")
    return "".join(parts)


async def row_versions(pool, page_id: str) -> dict[str, int]:
    """node_id -> xmin of the row's live version: an UPDATE (even of metadata only) writes a new xmin."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT node_id, xmin::text::bigint FROM data_confluence WHERE metadata_ ->> 'ref_doc_id' = %s",
            (page_id,),
        )
        return {row[0]: int(row[1]) for row in await cur.fetchall()}


def touched(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Rows inserted, updated (same node, new row version) and deleted between two snapshots."""
    return {
        "inserted": len(after.keys() - before.keys()),
        "updated": sum(1 for node, xmin in after.items() if node in before and before[node] != xmin),
        "deleted": len(before.keys() - after.keys()),
    }


@pytest.fixture()
async def live(db_url: str):
    """A runtime on the fake Confluence and Ollama at the service's default chunk size."""
    from app.runtime import Runtime
    from tests.conftest import make_settings
    from tests.fakes.confluence import FakeConfluence
    from tests.fakes.ollama import FakeOllama

    with FakeConfluence("cloud") as confluence, FakeOllama(dim=DIM) as ollama:
        settings = make_settings(
            database_url=db_url,
            confluence_base_url=confluence.base_url,
            ollama_base_url=ollama.base_url,
            chunk_size=512,
            chunk_overlap=64,
            **confluence.credentials,
        )
        rt = await Runtime.open(settings)
        try:
            yield rt, confluence, ollama
        finally:
            await rt.close()


async def test_one_paragraph_edit_of_a_40_chunk_page_writes_a_handful_of_rows(live) -> None:
    from app.pipeline import process_page

    rt, confluence, ollama = live
    confluence.put_page("900", title="Deploy runbook", body=runbook(), space_key="ENG")
    await process_page(rt, "900")
    before = await row_versions(rt.pool, "900")
    assert len(before) >= 35

    confluence.put_page("900", title="Deploy runbook", body=runbook(edit=(7, 6)), space_key="ENG", author_id="acc-2")
    ollama.reset()
    outcome = await process_page(rt, "900")
    after = await row_versions(rt.pool, "900")
    counts = touched(before, after)
    assert outcome.action == "indexed" and outcome.version == 2
    assert counts["updated"] == 0, counts  # per-version fields are not in the rows: kept rows stay as they are
    assert counts["inserted"] + counts["deleted"] <= 6 and counts["inserted"] == ollama.inputs, counts
    state = await rt.store.page_state("900")
    assert state is not None and state.version == 2


async def test_a_new_version_with_the_same_chunks_writes_no_row_but_records_the_version(live) -> None:
    """An edit that leaves every chunk as it was (here: only the last editor changes) is a new version: the
    state row and search must say so, and no vector row is touched."""
    from app.pipeline import process_page
    from app.search import search

    rt, confluence, ollama = live
    confluence.put_page("901", title="Deploy runbook", body=runbook(2, 2), space_key="ENG")
    await process_page(rt, "901")
    before = await row_versions(rt.pool, "901")
    edited = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    confluence.put_page(
        "901", title="Deploy runbook", body=runbook(2, 2), space_key="ENG", author_id="acc-9", last_modified=edited
    )
    ollama.reset()
    outcome = await process_page(rt, "901")
    assert outcome.version == 2 and ollama.inputs == 0
    assert touched(before, await row_versions(rt.pool, "901")) == {"inserted": 0, "updated": 0, "deleted": 0}
    async with rt.pool.connection() as conn:
        row = await (await conn.execute("SELECT version, author FROM cv_pages WHERE page_id = '901'")).fetchone()
    assert row == (2, "User acc-9")
    hits = await search(rt.pool, rt.embedder, "confluence", "deploy pipeline canary checks", k=1)
    assert hits[0].version == 2 and hits[0].last_modified == "2026-03-01T12:30:00+00:00"


async def test_a_move_rewrites_metadata_only_and_rows_carry_no_per_version_field(live) -> None:
    from app.chunking import VERSION_KEYS
    from app.pipeline import process_page

    rt, confluence, ollama = live
    confluence.put_page("902", title="Deploy runbook", body=runbook(3, 3), space_key="ENG")
    await process_page(rt, "902")
    before = await row_versions(rt.pool, "902")
    confluence.move_page("902", space_key="OPS")
    ollama.reset()
    await process_page(rt, "902")
    assert ollama.inputs == 0
    assert touched(before, await row_versions(rt.pool, "902")) == {"inserted": 0, "updated": len(before), "deleted": 0}
    async with rt.pool.connection() as conn:
        metas = [r[0] for r in await (await conn.execute("SELECT metadata_ FROM data_confluence")).fetchall()]
    assert {m["space_key"] for m in metas} == {"OPS"}
    assert not any(key in meta or key in meta["_node_content"] for meta in metas for key in VERSION_KEYS)


async def test_llamaindex_readers_get_versions_from_cv_pages(live, db_url: str) -> None:
    """A stock `PGVectorStore` retriever plus the `PageVersions` postprocessor sees the indexed version."""
    from llama_index.core import VectorStoreIndex

    from app.page_versions import PageVersions
    from app.pipeline import process_page

    rt, confluence, _ = live
    confluence.put_page("903", title="Deploy runbook", body=runbook(2, 2), space_key="ENG")
    confluence.put_page(
        "903", title="Deploy runbook", body=runbook(2, 2, edit=(0, 0)), space_key="ENG",
        last_modified=datetime(2026, 3, 2, 8, 0, tzinfo=UTC),
    )  # fmt: skip
    await process_page(rt, "903")
    pg = llamaindex_store(db_url, "confluence", DIM)
    index = VectorStoreIndex.from_vector_store(pg, embed_model=rt.embedder)
    retriever = index.as_retriever(similarity_top_k=2)
    plain = retriever.retrieve("rollbacks need two approvals")
    assert plain and all("version" not in hit.node.metadata for hit in plain)
    hits = PageVersions(database_url=db_url).postprocess_nodes(plain)
    versions = {(h.node.metadata["version"], h.node.metadata["last_modified"]) for h in hits}
    assert versions == {(2, "2026-03-02T08:00:00+00:00")}
    assert {h.node.metadata["author"] for h in hits} == {"User acc-1"}
