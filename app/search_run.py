"""A search as the service runs it for a caller: the query embedded once, then ranked on the database
`app.replica` chooses (the primary, or a standby fresh enough). `/search`, MCP `search` and the CLI's `search` all
come through here, so where a search runs and how it is embedded is decided in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.replica import precompute
from app.search import SearchHit, SearchMode, search

if TYPE_CHECKING:
    from app.runtime import Runtime


async def run_search(
    rt: Runtime,
    query: str,
    principals: frozenset[str] | None,
    *,
    k: int,
    space: str | None,
    label: str | None,
    mode: SearchMode,
) -> list[SearchHit]:
    """The `k` best chunks for `query` that `principals` may read (None: the service account's unfiltered view).

    Raises what `app.search.search` and the embedder raise (EmbeddingError, DatabaseUnavailable...)."""
    embedder = await precompute(rt.embedder, query)  # once, before choosing where to search
    return await rt.search_db.run(
        lambda pool: search(
            pool,
            embedder,
            rt.settings.vector_table,
            query,
            k=k,
            space=space,
            label=label,
            mode=mode,
            principals=principals,
            ef_search=rt.settings.hnsw_ef_search,
        )
    )
