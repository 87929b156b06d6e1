"""What the MCP server costs and saves: context per answer, protocol overhead, page rebuild fidelity.

One run, one machine, side by side:
* a long runbook (200 sections) indexed by the real write path; `get_page` returns it in slices, so the
  context one call costs is a slice, not the page: ratio slice / whole page;
* a naive concatenation of its chunks repeats every overlap: ratio naive / rebuilt characters, and whether the
  rebuilt page equals the Markdown the chunker was given;
* the SDK's protocol machinery (in-process client, no network) around `search` and `get_page`: p50 through
  MCP / p50 of the same function called directly.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

from app.chunking import chunk_page, embed_text
from app.config import Settings
from app.db import make_pool, migrate
from app.mcp_server import DEFAULT_PAGE_CHARS, build_server, load_page, page_slice
from app.page_text import Chunk, assemble
from app.search import SearchMode, search
from app.vector_store import VectorStore, metadata_hash
from bench.common import fresh_database, postgres, show
from tests.e2e.test_mcp import _page
from tests.fakes import ollama
from tests.unit.test_page_text import runbook

ROUNDS = 30
CHUNK_SIZE, CHUNK_OVERLAP = 512, 64


@dataclass
class _Runtime:
    pool: Any
    settings: Settings
    embedder: Any


class _Embedder:
    async def aget_query_embedding(self, query: str) -> list[float]:
        return ollama.embed_text(query)


async def _p50(call: Any) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def run(url: str) -> list[list[str]]:
    from mcp import Client

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url,
        chunk_size=CHUNK_SIZE,
        chunk_overlap=CHUNK_OVERLAP,
        search_service_identity="service-account",
    )
    await migrate(url, settings)
    pool = make_pool(url, max_size=4)
    await pool.open()
    try:
        page = _page("9000", "OPS", "Two hundred section runbook", 1)
        markdown = runbook(11, sections=200)
        nodes = chunk_page(page, markdown, chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP, max_tokens=8192)
        vectors = {n.node_id: ollama.embed_text(embed_text(n)) for n in nodes}
        store = VectorStore(pool, settings.vector_table)
        await store.replace_page(page, nodes, vectors, page_meta_hash=metadata_hash({"v": 1}))
        rt = _Runtime(pool, settings, _Embedder())
        _, text = await load_page(rt, page.id, None)  # type: ignore[arg-type]
        naive = sum(len(n.text) for n in nodes) + 2 * (len(nodes) - 1)
        from_chunks = assemble([Chunk(n.text, n.metadata["header_path"]) for n in nodes], overlap=True).text
        query = "restore the database backup and restart the service"

        async def direct_search() -> None:
            await search(pool, rt.embedder, settings.vector_table, query, k=8, mode=SearchMode.HYBRID)

        async def direct_page() -> None:
            loaded, rebuilt = await load_page(rt, page.id, None)  # type: ignore[arg-type]
            page_slice(loaded, rebuilt, None, None, DEFAULT_PAGE_CHARS)

        async with Client(build_server(lambda: rt)) as client:  # type: ignore[arg-type, return-value]

            async def mcp_search() -> None:
                assert not (await client.call_tool("search", {"query": query, "k": 8})).is_error

            async def mcp_page() -> None:
                assert not (await client.call_tool("get_page", {"page": page.id})).is_error

            slices = 0
            cursor: str | None = None
            while True:
                args = {"page": page.id} | ({"cursor": cursor} if cursor else {})
                result = (await client.call_tool("get_page", args)).structured_content or {}
                slices += 1
                cursor = result.get("next_cursor")
                if cursor is None:
                    break
            search_direct, search_mcp = await _p50(direct_search), await _p50(mcp_search)
            page_direct, page_mcp = await _p50(direct_page), await _p50(mcp_page)
    finally:
        await pool.close()
    return [
        ["page: chunks / characters", f"{len(nodes)} / {len(text.text):,}"],
        ["get_page slice / whole page (characters)", f"{DEFAULT_PAGE_CHARS / len(text.text):.3f} ({slices} slices)"],
        ["naive chunk concatenation / rebuilt page", f"{naive / len(text.text):.3f}"],
        ["rebuilt page == chunker input", str(from_chunks == markdown and text.text == markdown)],
        [
            "search p50: MCP / direct",
            f"{search_mcp / search_direct:.2f}x ({search_mcp * 1e3:.1f} / {search_direct * 1e3:.1f} ms)",
        ],
        [
            "get_page p50: MCP / direct",
            f"{page_mcp / page_direct:.2f}x ({page_mcp * 1e3:.1f} / {page_direct * 1e3:.1f} ms)",
        ],
    ]


def main() -> str:
    with postgres() as server:
        rows = asyncio.run(run(fresh_database(server, "bench_mcp")))
    return show(
        "MCP: context per call, rebuild fidelity, protocol overhead",
        ["what", "measured"],
        rows,
        note=f"{ROUNDS} rounds each; in-process MCP client (no network); fake hashing embedder (no Ollama).",
    )


if __name__ == "__main__":
    main()
