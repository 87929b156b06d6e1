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
        rows = await (
            await conn.execute("SELECT DISTINCT metadata_->>'space_key' FROM data_confluence")
        ).fetchall()
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
