"""Retrieval: nearest chunks by embedding, optionally fused with a full-text ranking.

Two rankings, one statement, fused by reciprocal rank (score = Σ 1/(60 + rank)):

* **semantic** — `ORDER BY embedding <=> q` on the HNSW index. A filter (space, label) is applied after the
  index hands up candidates, so a selective filter would leave fewer than k rows; pgvector ≥ 0.8's iterative
  scan (`hnsw.iterative_scan = relaxed_order`) keeps walking the graph until enough rows pass. Relaxed order
  is slightly out of distance order, so the candidates sit in a MATERIALIZED CTE and are re-sorted outside it
  (pgvector's documented pattern).
* **lexical** — catches what embeddings blur: error codes (`ERR-4711`), ticket keys (`OPS-123`), names. The
  `simple` text-search configuration is used because a wiki mixes languages and no stemmer fits all. A plain
  `websearch_to_tsquery` ANDs every word, and with `simple` (no stop words) a question such as "what does
  ERR-4711 mean" then matches nothing, so each query word counts separately, weighted by its rarity (an
  IDF): a rare code outweighs "what" and "does". Document counts of common words come from the planner's
  statistics on the tsvector column (`pg_stats.most_common_elems`, kept by ANALYZE) because counting them on
  the GIN index builds a bitmap of every matching row (measured: 3.4 ms per common word at 100k rows, half the
  query); rarer words, absent from those statistics, are counted on the index up to `DF_CAP`. Words found in
  more than `DF_CAP` rows are dropped before matching, which also bounds the work on big tables; rows
  scoring under half the best are not lexical hits at all, so a chunk sharing only a common word with the
  query does not get fused credit. Ties go to rows matching the whole query (`ts_rank_cd` on
  `websearch_to_tsquery`, phrases included).

Values travel as bound parameters only; the table name as an `Identifier`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

#: The RRF constant from Cormack et al.; 60 damps the difference between ranks 1 and 2 of one list.
RRF_K = 60
#: pgvector caps `hnsw.ef_search` at 1000.
MAX_EF_SEARCH = 1000
#: A word matching at least this many rows is too common to identify anything; counting stops there.
DF_CAP = 1000
#: The table size used for IDF: the planner's estimate, or before the first ANALYZE a count up to this many
#: rows (exact enough, and bounded in cost).
N_CAP = 20_000
#: A lexical hit must score at least this fraction of the best lexical score.
LEXICAL_FLOOR = 0.5


class QueryEmbedder(Protocol):
    """All search needs from an embedder (LlamaIndex's `BaseEmbedding` satisfies it)."""

    async def aget_query_embedding(self, query: str) -> list[float]: ...


class SearchMode(StrEnum):
    HYBRID = "hybrid"
    VECTOR = "vector"


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One chunk found. `score` is 1 - cosine distance (vector) or the fused RRF score (hybrid)."""

    score: float
    text: str
    page_id: str
    title: str
    url: str
    space_key: str
    header_path: str
    version: int | None
    last_modified: str | None
    node_id: str


def candidate_count(k: int) -> int:
    """How deep each ranking goes before fusion: deep enough that a chunk ranked modestly by both lists can
    still beat one ranked first by a single list."""
    return max(50, 5 * k)


def ef_search_for(limit: int, *, filtered: bool = False) -> int:
    """`hnsw.ef_search` for a scan that must return `limit` rows.

    Unfiltered, no larger than needed: pgvector's cost estimate grows with `ef_search`, and on tables of tens
    of thousands of rows a planner shown `ef_search = 2 * limit` already prefers an exact sequential scan
    (measured: 160 ms instead of 5 ms at 20k rows of 1024 dimensions). Filtered, larger: an iterative scan
    with a small `ef_search` returns the first rows that pass the filter, not the nearest (measured at 100k
    rows with a 2% space filter: recall@10 0.68 at 40, 1.0 at 100), and the higher estimate lets the planner
    pick an exact scan through the filter's own index when the filter is selective, which is then faster too.
    """
    wanted = max(100, 2 * limit) if filtered else max(40, limit)
    return min(MAX_EF_SEARCH, wanted)


async def search(
    pool: AsyncConnectionPool,
    embedder: QueryEmbedder,
    table: str,
    query: str,
    *,
    k: int = 10,
    space: str | None = None,
    label: str | None = None,
    mode: SearchMode = SearchMode.HYBRID,
    principals: frozenset[str] | None = None,
) -> list[SearchHit]:
    """The `k` best chunks of `data_<table>` for `query`, optionally only in `space` / with `label`.

    `principals`: the searcher's principal set (`app.access`); only chunks of pages they may read
    (`cv_may_read`) are considered, inside the scans themselves, so `k` stays filled. None searches as the
    service account (everything indexed): callers answering a person must never pass None.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    query = query.strip()
    if not query:
        return []
    embedding = np.asarray(await embedder.aget_query_embedding(query), dtype=np.float32)
    if mode is SearchMode.VECTOR:
        statement = _vector_sql(table, space=space, label=label, principals=principals)
        limit = k
    else:
        statement = _hybrid_sql(table, space=space, label=label, principals=principals)
        limit = candidate_count(k)
    params: dict[str, Any] = {
        "embedding": embedding,
        "query": query,
        "k": k,
        "candidates": limit,
        "space": space,
        "label": label,
        "principals": sorted(principals) if principals is not None else None,
        "rrf_k": RRF_K,
        "df_cap": DF_CAP,
        "n_cap": N_CAP,
        "relation": f"data_{table}",
        "floor": LEXICAL_FLOOR,
    }
    try:
        async with pool.connection() as conn, conn.transaction():
            # SET cannot take bind parameters; set_config(..., true) is SET LOCAL that can.
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            await conn.execute(
                "SELECT set_config('hnsw.ef_search', %s, true)",
                (str(ef_search_for(limit, filtered=bool(space or label or principals is not None))),),
            )
            cur = conn.cursor(row_factory=dict_row)
            # Never a cached generic plan: the best plan depends on k and on how common the query words are.
            await cur.execute(statement, params, prepare=False)
            rows = await cur.fetchall()
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise DatabaseUnavailable(f"search failed, Postgres is unavailable: {exc}") from exc
    return [_hit(row) for row in rows]


def _filters(
    alias: str, *, space: str | None, label: str | None, principals: frozenset[str] | None = None
) -> sql.Composable:
    """WHERE conditions for the filters actually given. Composed rather than `(%s IS NULL OR ...)` so that a
    cached generic plan can still use the `space_key` index."""
    a = sql.Identifier(alias)
    conditions: list[sql.Composable] = [sql.SQL("{a}.embedding IS NOT NULL").format(a=a)]
    if space is not None:
        conditions.append(sql.SQL("{a}.metadata_ ->> 'space_key' = %(space)s").format(a=a))
    if label is not None:
        conditions.append(sql.SQL("{a}.metadata_ -> 'labels' ? %(label)s").format(a=a))
    if principals is not None:  # the permission rule, evaluated per candidate row inside the scan
        conditions.append(sql.SQL("cv_may_read(%(principals)s::text[], {a}.metadata_ ->> 'ref_doc_id')").format(a=a))
    return sql.SQL(" AND ").join(conditions)


def _nearest_cte(
    table: str, *, space: str | None, label: str | None, limit: str, principals: frozenset[str] | None = None
) -> sql.Composed:
    """The semantic ranking both modes start from: the HNSW scan, materialized and re-sorted by the caller
    (the iterative scan's relaxed order is only roughly by distance). `limit` names the bound parameter."""
    return sql.SQL(
        """nearest AS MATERIALIZED (
            SELECT d.id, d.embedding <=> %(embedding)s AS distance
            FROM {t} AS d
            WHERE {where}
            ORDER BY distance
            LIMIT {limit}
        )"""
    ).format(
        t=sql.Identifier(f"data_{table}"),
        where=_filters("d", space=space, label=label, principals=principals),
        limit=sql.Placeholder(limit),
    )


def _vector_sql(
    table: str, *, space: str | None, label: str | None, principals: frozenset[str] | None = None
) -> sql.Composed:
    return sql.SQL(
        """
        WITH {nearest}
        SELECT 1 - n.distance AS score, d.text, d.metadata_, d.node_id, {version_columns}
        FROM nearest AS n JOIN {t} AS d ON d.id = n.id {version_join}
        ORDER BY n.distance, d.id
        """
    ).format(
        t=sql.Identifier(f"data_{table}"),
        nearest=_nearest_cte(table, space=space, label=label, limit="k", principals=principals),
        version_columns=_VERSION_COLUMNS,
        version_join=_VERSION_JOIN,
    )


def _hybrid_sql(
    table: str, *, space: str | None, label: str | None, principals: frozenset[str] | None = None
) -> sql.Composed:
    return sql.SQL(
        """
        WITH {nearest},
        semantic AS (
            SELECT id, row_number() OVER (ORDER BY distance, id) AS rank FROM nearest
        ),
        total AS (
            SELECT CASE WHEN c.reltuples > 0 THEN least(c.reltuples, %(n_cap)s)::float8
                        ELSE (SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT %(n_cap)s) AS sample)::float8
                   END AS n
            FROM pg_class AS c WHERE c.oid = %(relation)s::regclass
        ),
        common AS (
            SELECT s.most_common_elems::text::text[] AS elems, s.most_common_elem_freqs AS freqs,
                   c.reltuples::float8 AS n
            FROM pg_stats AS s JOIN pg_class AS c ON c.oid = %(relation)s::regclass
            JOIN pg_namespace AS ns ON ns.oid = c.relnamespace
            WHERE s.schemaname = ns.nspname AND s.tablename = c.relname AND s.attname = 'text_search_tsv'
              AND c.reltuples > 0
        ),
        terms AS MATERIALIZED (
            SELECT phraseto_tsquery('simple', lexeme) AS tsq,
                   COALESCE(
                       (SELECT common.freqs[array_position(common.elems, lexeme)] * common.n FROM common
                        WHERE array_position(common.elems, lexeme) IS NOT NULL),
                       (SELECT count(*) FROM (
                            SELECT 1 FROM {t} AS x
                            WHERE x.text_search_tsv @@ phraseto_tsquery('simple', lexeme)
                            LIMIT %(df_cap)s) AS hits
                       )
                   )::float8 AS df
            FROM unnest(tsvector_to_array(to_tsvector('simple', %(query)s))) AS lexeme
        ),
        weighted AS (
            SELECT terms.tsq, ln(1 + total.n / terms.df) AS idf
            FROM terms, total
            WHERE terms.df > 0 AND terms.df < %(df_cap)s
        ),
        matched AS (
            SELECT d.id, sum(w.idf) AS weight,
                   ts_rank_cd(d.text_search_tsv, websearch_to_tsquery('simple', %(query)s)) AS whole
            FROM weighted AS w JOIN {t} AS d ON d.text_search_tsv @@ w.tsq
            WHERE {where}
            GROUP BY d.id
        ),
        lexical AS (
            SELECT id, row_number() OVER (ORDER BY weight DESC, whole DESC, id) AS rank
            FROM matched
            WHERE weight >= %(floor)s * (SELECT max(weight) FROM matched)
            ORDER BY rank
            LIMIT %(candidates)s
        ),
        fused AS (
            SELECT COALESCE(s.id, l.id) AS id,
                   COALESCE(1.0 / (%(rrf_k)s + s.rank), 0.0) + COALESCE(1.0 / (%(rrf_k)s + l.rank), 0.0) AS score,
                   l.rank AS lexical_rank, s.rank AS semantic_rank
            FROM semantic AS s FULL OUTER JOIN lexical AS l ON s.id = l.id
        )
        SELECT f.score, d.text, d.metadata_, d.node_id, {version_columns}
        FROM fused AS f JOIN {t} AS d ON d.id = f.id {version_join}
        ORDER BY f.score DESC, f.lexical_rank NULLS LAST, f.semantic_rank NULLS LAST
        LIMIT %(k)s
        """
    ).format(
        t=sql.Identifier(f"data_{table}"),
        where=_filters("d", space=space, label=label, principals=principals),
        nearest=_nearest_cte(table, space=space, label=label, limit="candidates", principals=principals),
        version_columns=_VERSION_COLUMNS,
        version_join=_VERSION_JOIN,
    )


#: Per-version fields live once per page in `cv_pages`, not in the chunk rows (see `app.chunking.version_metadata`);
#: rows written before that still carry them in `metadata_`, the fallback in `_hit`.
_VERSION_COLUMNS = sql.SQL("p.version AS page_version, p.last_modified AS page_last_modified")
_VERSION_JOIN = sql.SQL("LEFT JOIN cv_pages AS p ON p.page_id = d.metadata_ ->> 'ref_doc_id'")


def _hit(row: dict[str, Any]) -> SearchHit:
    meta: dict[str, Any] = row["metadata_"] or {}
    version = row.get("page_version") if row.get("page_version") is not None else meta.get("version")
    modified = row.get("page_last_modified")
    last_modified = modified.astimezone(UTC).isoformat() if modified is not None else meta.get("last_modified")
    return SearchHit(
        score=float(row["score"]),
        text=row["text"],
        page_id=str(meta.get("page_id") or meta.get("ref_doc_id") or meta.get("doc_id") or ""),
        title=str(meta.get("title") or ""),
        url=str(meta.get("url") or ""),
        space_key=str(meta.get("space_key") or ""),
        header_path=str(meta.get("header_path") or ""),
        version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        last_modified=str(last_modified) if last_modified is not None else None,
        node_id=str(row["node_id"]),
    )
