"""Retrieval: nearest chunks by embedding, optionally fused with a full-text ranking.

Two rankings, one statement, fused by weighted reciprocal rank (score = Σ wᵢ / (20 + rankᵢ), semantic 0.5,
lexical 0.5: `DEFAULT_TUNING`, chosen by measurement with a real model, bench/retrieval_quality.py):

* **semantic** — `ORDER BY embedding <=> q` on the HNSW index. A filter (space, label) is applied after the
  index hands up candidates, so a selective filter would leave fewer than k rows; pgvector ≥ 0.8's iterative
  scan (`hnsw.iterative_scan = relaxed_order`) keeps walking the graph until enough rows pass. Relaxed order
  is slightly out of distance order, so the candidates sit in a MATERIALIZED CTE and are re-sorted outside it
  (pgvector's documented pattern). A table of at most `EXACT_SCAN_ROWS` chunks is scanned exactly instead.
* **lexical** — catches what embeddings blur: error codes (`ERR-4711`), ticket keys (`OPS-123`), names. It
  ranks our own column `cv_search_tsv` (`app.db.SEARCH_DOCUMENT`): the page title (weight A) and heading path
  (B) beside the chunk text, all through the `english` configuration (stemming: "sentinels" finds
  "Sentinel"). A plain `websearch_to_tsquery` ANDs every word, so a question such as "what does ERR-4711
  mean" would match nothing; each query word counts separately instead, weighted by its rarity (an IDF): a
  rare code outweighs "error" and "mean". A chunk's weight is a dis-max over its two fields (its text, its
  title + headings): the better field plus `field_tie` of the other, so the title every chunk of a page
  carries names the page without letting a sibling chunk that matches one word of the text win.
  Document counts come from counts kept exact on every write (`app.term_counts`: one index probe per word, and
  a ranking that depends on the rows alone, not on when ANALYZE last ran). Words found in
  more than `DF_CAP` rows are dropped before matching, which also bounds the work on big tables; rows
  scoring under half the best are not lexical hits at all, so a chunk sharing only a common word with the
  query does not get fused credit. Ties go to rows matching the whole query (`ts_rank_cd` on
  `websearch_to_tsquery`, phrases included). For a person (`principals`), document counts are counted over
  the rows they may read instead and the table size is a constant (`_VIEWER_STATISTICS`): a statistic over
  every row would let a word in a page they cannot read move the scores of pages they can.

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

from app.db import SAMPLE_SCALE, SEARCH_COLUMN, TEXT_SEARCH_CONFIG, VECTOR_OPS, embedding_type, sample_predicate
from app.errors import DatabaseUnavailable
from app.term_counts import COUNTS_SQL, ROW_COUNT

log = logging.getLogger(__name__)

#: The RRF constant from Cormack et al.; 60 damps the difference between ranks 1 and 2 of one list.
RRF_K = 60
#: pgvector caps `hnsw.ef_search` at 1000.
MAX_EF_SEARCH = 1000
#: pgvector's default `hnsw.ef_search`; the floor of `ef_search_for` unless HNSW_EF_SEARCH raises it.
DEFAULT_EF_SEARCH = 40
#: A table of at most this many chunks (its exact count, `app.term_counts`) is searched by an exact scan, not the
#: HNSW index: left to the planner, the choice flipped with the statistics (no ANALYZE yet: the index, an
#: approximation; after it: an exact scan), and with it the answers (bench/retrieval_quality.py at 192 chunks: 1 to
#: 2 of 46 top-10 lists changed after ANALYZE). 2,000 is where the planner itself switches to the index with fresh
#: statistics; an exact scan there costs ~10 ms (measured, 1024 dimensions: 7.6 ms at 1,000 rows, 9.5 at 2,000, 36
#: at 5,000, against ~5 ms for the index), and it answers exactly.
EXACT_SCAN_ROWS = 2_000
#: The table's chunk count, as the third column of the search's set-up statement: NULL when no counts are kept.
_ROW_COUNT = f"""(SELECT sum(k.n) FROM (
        SELECT c.n FROM cv_term_counts AS c WHERE c.relid = %(relation)s::regclass AND c.lexeme = '{ROW_COUNT}'
        UNION ALL
        SELECT d.delta FROM cv_term_deltas AS d WHERE d.relid = %(relation)s::regclass AND d.lexeme = '{ROW_COUNT}'
    ) AS k)"""
#: A word matching at least this many rows is too common to identify anything; counting stops there.
DF_CAP = 1000
#: The table size used for IDF is the row count capped at this (IDF needs only a scale that is the same for every
#: word; a person's is this constant, `_VIEWER_STATISTICS`).
N_CAP = 20_000
#: A lexical hit must score at least this fraction of the best lexical score.
LEXICAL_FLOOR = 0.5
#: A person's document count of a common word is estimated from the fixed sample of one row in `SAMPLE_SCALE`
#: (`app.db.sample_predicate`, indexed on its own); with fewer readable sample rows than this holding the word,
#: it is counted exactly instead (an estimate from a handful of rows would be noise, and below ~8 × 16 = 128
#: rows the exact count is cheap).
SAMPLE_MIN = 8


class Fusion(StrEnum):
    """How the two rankings become one.

    * `relative` — relative-score fusion (LlamaIndex `QueryFusionRetriever(mode="relative_score")`, Weaviate's
      `relativeScoreFusion`): each list's scores min-max scaled to [0, 1], then a weighted sum. A chunk that
      one ranking scores far above the rest keeps that lead; under RRF only its rank counts, so chunks middling
      in both lists could overtake it (issue 14: a table's answer chunk fell out of the top 6).
    * `rrf` — weighted reciprocal rank fusion, Σ wᵢ / (k + rankᵢ) (Cormack et al. 2009), for comparison.
    """

    RELATIVE = "relative"
    RRF = "rrf"


@dataclass(frozen=True, slots=True)
class SearchTuning:
    """The hybrid ranking's knobs; `DEFAULT_TUNING` holds the values chosen on the tune half of the labelled set
    (bench/retrieval_quality.py; evidence in bench/RESULTS.md, section `search_defaults`): weighted RRF with
    k = 20; semantic / lexical 0.5 / 0.5, chosen on the 86-question tune half (hit@1 / MRR@10 0.698 / 0.760
    against 0.686 / 0.743 at 0.2 / 0.8, and 0.698 / 0.764 against 0.698 / 0.752 on a second indexing; the
    first 46 tune questions alone were saturated and had picked 0.2); then `field_tie` 0.3 (0.0 / 0.6 / 1.0:
    MRR@10 0.722 / 0.741 / 0.744 against 0.743 on the 86 questions, semantic 0.2; 0.6 lets a heading's
    "errors" outweigh the exact code in `test_exact_error_code_found_only_by_hybrid`)."""

    fusion: Fusion = Fusion.RRF
    #: Share of the semantic ranking in the fused score; the lexical ranking gets the rest.
    vector_weight: float = 0.5
    #: RRF's k: smaller lets the first ranks of a list count more against middling ranks in both lists.
    rrf_k: int = 20
    #: Dis-max over the two fields of the full-text document (Lucene's DisjunctionMaxQuery, Elasticsearch's
    #: `dis_max` / `best_fields` `tie_breaker`): a chunk's lexical weight is its better field (chunk text, or
    #: title + heading path) plus this share of the other. 1 would add them, and then the title, which every
    #: chunk of a page carries, lets a chunk matching one body word beat its sibling matching three.
    field_tie: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.vector_weight <= 1.0:
            raise ValueError("vector_weight must be within [0, 1]")
        if not 0.0 <= self.field_tie <= 1.0:
            raise ValueError("field_tie must be within [0, 1]")
        if self.rrf_k < 1:
            raise ValueError("rrf_k must be at least 1")


DEFAULT_TUNING = SearchTuning()


#: The SQL type names a query vector may be cast to (never user input: keys of `VECTOR_OPS`).
VECTOR_TYPE_NAMES = {name: name for name in VECTOR_OPS}


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


def ef_search_for(limit: int, *, filtered: bool = False, least: int = DEFAULT_EF_SEARCH) -> int:
    """`hnsw.ef_search` for a scan that must return `limit` rows.

    Unfiltered, no larger than needed: pgvector's cost estimate grows with `ef_search`, and on tables of tens
    of thousands of rows a planner shown `ef_search = 2 * limit` already prefers an exact sequential scan
    (measured: 160 ms instead of 5 ms at 20k rows of 1024 dimensions). Filtered, larger: an iterative scan
    with a small `ef_search` returns the first rows that pass the filter, not the nearest (measured at 100k
    rows with a 2% space filter: recall@10 0.68 at 40, 1.0 at 100), and the higher estimate lets the planner
    pick an exact scan through the filter's own index when the filter is selective, which is then faster too.

    `least` (setting HNSW_EF_SEARCH) raises both: on a table of a million chunks an HNSW graph walked with 40
    candidates misses true neighbours (bench/search_scale.py at 1M chunks, halfvec: recall@10 0.62 at 40, 0.92
    at 400, p99 28 → 53 ms). Capped at `MAX_EF_SEARCH`, pgvector's limit.
    """
    wanted = max(100, 2 * limit) if filtered else max(DEFAULT_EF_SEARCH, limit)
    return min(MAX_EF_SEARCH, max(least, wanted))


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
    tuning: SearchTuning = DEFAULT_TUNING,
    ef_search: int = DEFAULT_EF_SEARCH,
) -> list[SearchHit]:
    """The `k` best chunks of `data_<table>` for `query`, optionally only in `space` / with `label`.

    `principals`: the searcher's principal set (`app.access`); only chunks of pages they may read
    (`cv_may_read`) are considered, inside the scans themselves, so `k` stays filled. None searches as the
    service account (everything indexed): callers answering a person must never pass None.

    `tuning`: the hybrid fusion (benchmarks sweep it; the service uses `DEFAULT_TUNING`). Equal scores are
    ordered by `node_id`, which is derived from the chunk's content, so a ranking never depends on row ids or
    on the order rows were written.

    `ef_search`: the least `hnsw.ef_search` (setting HNSW_EF_SEARCH; see `ef_search_for`).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    query = query.strip()
    if not query:
        return []
    embedding = np.asarray(await embedder.aget_query_embedding(query), dtype=np.float32)
    try:
        vector_type = await _vector_type(pool, table)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise DatabaseUnavailable(f"search failed, Postgres is unavailable: {exc}") from exc

    def statement_for(exact: bool, hnsw: bool = True) -> sql.Composed:
        if mode is SearchMode.VECTOR:
            return _vector_sql(
                table,
                space=space,
                label=label,
                principals=principals,
                vector_type=vector_type,
                exact=exact,
                hnsw=hnsw,
            )
        return _hybrid_sql(
            table,
            space=space,
            label=label,
            principals=principals,
            fusion=tuning.fusion,
            vector_type=vector_type,
            exact=exact,
            hnsw=hnsw,
        )

    limit = k if mode is SearchMode.VECTOR else candidate_count(k)
    params: dict[str, Any] = {
        "embedding": embedding,
        "query": query,
        "k": k,
        "candidates": limit,
        "space": space,
        "label": label,
        "principals": sorted(principals) if principals is not None else None,
        "rrf_k": tuning.rrf_k,
        "vector_weight": tuning.vector_weight,
        "field_tie": tuning.field_tie,
        "df_cap": DF_CAP,
        "n_cap": N_CAP,
        "sample_cap": -(-DF_CAP // SAMPLE_SCALE),
        "sample_min": SAMPLE_MIN,
        "sample_scale": SAMPLE_SCALE,
        "relation": f"data_{table}",
        "floor": LEXICAL_FLOOR,
    }
    try:
        async with pool.connection() as conn, conn.transaction():
            # Both statements below see one snapshot of the access records. On a search standby the connection is
            # already in such a transaction, which read the heartbeat (app.replica); this one is a savepoint.
            if principals is not None and not getattr(pool, "in_repeatable_read", False):
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            # One round trip for the settings and, for a person, their spaces and the content that blocks them
            # (computed once per query). SET cannot take bind parameters; set_config(..., true) is SET LOCAL that
            # can. A person's filter alone keeps the unfiltered `ef_search`: most rows pass it, and the iterative
            # scan walks on until `limit` rows do (measured at 100k chunks, bench/permission_search.py: recall@10
            # 0.998 for vector and 1.000 for hybrid, as with 2.5x and 2x the value, at a third of the scan time).
            viewer = "" if principals is None else ", cv_viewer_spaces(%(p)s::text[]), cv_viewer_blocked(%(p)s::text[])"
            setup = await conn.execute(
                "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),"
                " set_config('hnsw.ef_search', %(ef)s, true), " + _ROW_COUNT + viewer,
                {
                    "ef": str(ef_search_for(limit, filtered=bool(space or label), least=ef_search)),
                    "p": params["principals"],
                    "relation": params["relation"],
                },
            )
            settings_row = (await setup.fetchone()) or ("", "", None, [], [])
            rows_in_table = settings_row[2]
            if principals is not None:
                params["spaces"], params["blocked"] = settings_row[3:5]
            statement = statement_for(exact=False, hnsw=rows_in_table is None or rows_in_table > EXACT_SCAN_ROWS)
            cur = conn.cursor(row_factory=dict_row)
            # Never a cached generic plan: the best plan depends on k and on how common the query words are.
            await cur.execute(statement, params, prepare=False)
            rows = await cur.fetchall()
            if principals is not None and (not rows or rows[0]["semantic_found"] < limit):
                # The HNSW iterative scan gives up after `hnsw.max_scan_tuples` rows (pgvector README, "Iterative
                # Index Scans"; 20,000 by default), and rows the person may not read count too: many of them near
                # the query would leave the person fewer nearest rows than the rows they may read hold, a
                # count that depends on what they cannot read. Whenever the scan came back short, the nearest
                # rows are taken exactly from the rows of their readable pages instead, in the same snapshot.
                # Also the path of a person who may read fewer than `limit` rows: costs in proportion to those.
                await conn.execute("SET LOCAL enable_indexscan = off")
                await cur.execute(statement_for(exact=True), params, prepare=False)
                rows = await cur.fetchall()
    except psycopg.errors.UndefinedFunction:
        # `halfvec <=> vector`: a reindex swapped in a table of the other type since we looked. Look again.
        _VECTOR_TYPES.pop(table, None)
        raise
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise DatabaseUnavailable(f"search failed, Postgres is unavailable: {exc}") from exc
    return [_hit(row) for row in rows]


#: `data_<table>.embedding`'s type per table, looked up once per process (a catalog query per search would cost
#: more than the index scan at small k); forgotten when a query fails on a type mismatch.
_VECTOR_TYPES: dict[str, str] = {}


async def _vector_type(pool: AsyncConnectionPool, table: str) -> str:
    """`vector` or `halfvec` (VECTOR_TYPE): the query vector is cast to it, so the HNSW index of that type is used."""
    if table not in _VECTOR_TYPES:
        async with pool.connection() as conn:
            found = await embedding_type(conn, table)
        if found is None:
            return "vector"  # no table yet: the statement fails as it always did, with the missing relation
        _VECTOR_TYPES[table] = found
    return _VECTOR_TYPES[table]


#: The permission rule for one row, the fast form of SQL `cv_may_read` (as `cv_page_visible`, which direct SQL
#: readers call): the row's page has an access record in one of the viewer's spaces (`%(spaces)s`) and no id
#: on its path is among the content that blocks the viewer (`%(blocked)s`, restricted without admitting them
#: or not established), both computed once per query. Written out here rather than calling
#: `cv_page_visible`: `path && blocked` compares every pair of elements, ~20 µs a row with the 182 blocked
#: ids of a typical person at 100k chunks (bench/permission_search.py), 18 ms per query word when counting a
#: word's readable rows; bound as a constant, `= ANY (blocked)` is hashed once by Postgres (14+), so each path
#: element costs a hash probe: ~4 µs a row. A scalar sub-select (one row at most: page_id is the key; none
#: is false), not EXISTS: the planner would turn an EXISTS into a semi-join or a hash of every page in the
#: viewer's spaces, work per query in proportion to the wiki (measured 6 ms at 5,000 pages) instead of to the
#: rows a scan touches.
_VISIBLE_TEMPLATE = """COALESCE((
            SELECT pa.space_key = ANY (%(spaces)s::text[])
                   AND NOT EXISTS (SELECT 1 FROM unnest(pa.path) AS x(id) WHERE x.id = ANY (%(blocked)s::text[]))
            FROM cv_page_access AS pa WHERE pa.page_id = {page}
        ), false)"""
#: For a page id expression (`{page}`).
_VISIBLE_PAGE = sql.SQL(_VISIBLE_TEMPLATE)
#: For a row of the vector table aliased `{a}`.
_VISIBLE = sql.SQL(_VISIBLE_TEMPLATE.replace("{page}", "{a}.metadata_ ->> 'ref_doc_id'"))


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
    if principals is not None:  # the permission rule per candidate row inside the scan (`_VISIBLE`)
        conditions.append(_VISIBLE.format(a=a))
    return sql.SQL(" AND ").join(conditions)


#: The pages the viewer may read, as a set (SQL `cv_viewer_pages`, equal to `_VISIBLE` page by page).
_READABLE_PAGES = sql.SQL("SELECT v.page FROM cv_viewer_pages(%(spaces)s::text[], %(blocked)s::text[]) AS v(page)")


def _nearest_cte(
    table: str,
    *,
    space: str | None,
    label: str | None,
    limit: str,
    principals: frozenset[str] | None = None,
    vector_type: str = "vector",
    exact: bool = False,
    hnsw: bool = True,
) -> sql.Composed:
    """The semantic ranking both modes start from: the HNSW scan, materialized and re-sorted by the caller
    (the iterative scan's relaxed order is only roughly by distance). `limit` names the bound parameter.

    `exact` (a person's search only, run with index scans off): the distances of the rows of the pages they may
    read (`cv_viewer_pages`), all of them; see `search` for when.

    Equal distances (the same chunk text on two pages: a template, a pasted paragraph) are ordered by `node_id`
    inside the scan, not only after it: ordered by distance alone, which of the tied rows fill the last places
    of the LIMIT depends on where they lie in the heap, so the answer changed with the physical order of rows,
    those a person may not read included. Postgres adds an Incremental Sort over the HNSW scan's distance order
    (the ties only are sorted), so the index is still used.

    `hnsw` False (a table of at most `EXACT_SCAN_ROWS` chunks): an exact scan, whatever the planner's statistics."""
    where = _filters("d", space=space, label=label, principals=None if exact else principals)
    if exact:
        where = sql.SQL("{w} AND d.metadata_ ->> 'ref_doc_id' IN ({pages})").format(w=where, pages=_READABLE_PAGES)
    return sql.SQL(
        """nearest AS MATERIALIZED (
            SELECT d.id, d.node_id, d.embedding <=> %(embedding)s::{vector_type} AS distance
            FROM {t} AS d
            WHERE {where}
            ORDER BY {order}, d.node_id
            LIMIT {limit}
        )"""
    ).format(
        # `+ 0` leaves the value as it is but no longer matches the HNSW index's operator: an exact scan.
        order=sql.SQL("distance" if hnsw else "(d.embedding <=> %(embedding)s::{vector_type}) + 0").format(
            vector_type=sql.SQL(VECTOR_TYPE_NAMES[vector_type])
        ),
        t=sql.Identifier(f"data_{table}"),
        where=where,
        limit=sql.Placeholder(limit),
        vector_type=sql.SQL(VECTOR_TYPE_NAMES[vector_type]),
    )


def _vector_sql(
    table: str,
    *,
    space: str | None,
    label: str | None,
    principals: frozenset[str] | None = None,
    vector_type: str = "vector",
    exact: bool = False,
    hnsw: bool = True,
) -> sql.Composed:
    return sql.SQL(
        """
        WITH {nearest}
        SELECT 1 - n.distance AS score, d.text, d.metadata_, d.node_id, {version_columns},
               (SELECT count(*) FROM nearest) AS semantic_found
        FROM nearest AS n JOIN {t} AS d ON d.id = n.id {version_join}
        ORDER BY n.distance, d.node_id
        """
    ).format(
        t=sql.Identifier(f"data_{table}"),
        nearest=_nearest_cte(
            table,
            space=space,
            label=label,
            limit="k",
            principals=principals,
            vector_type=vector_type,
            exact=exact,
            hnsw=hnsw,
        ),
        version_columns=_VERSION_COLUMNS,
        version_join=_VERSION_JOIN,
    )


#: Term statistics (table size `total.n`, document count per query word `terms.df`) over the whole table, for the
#: service account, which reads every row: exact counts kept on every write (`app.term_counts`), so a ranking
#: depends on the rows alone, never on when ANALYZE last ran (issue 14). A table whose counts are not kept
#: (no row count in `cv_term_counts`: never migrated, or counts lost until the worker's minute tick recounts) falls back
#: to counting on the GIN index, up to `DF_CAP` per word.
_TABLE_STATISTICS = """words AS MATERIALIZED (
            SELECT w.lexeme FROM unnest(tsvector_to_array(to_tsvector({config}, %(query)s))) AS w(lexeme)
        ),
        counted AS MATERIALIZED (
            {counts}
        ),
        tracked AS MATERIALIZED (
            SELECT EXISTS (SELECT 1 FROM cv_term_counts AS c
                           WHERE c.relid = %(relation)s::regclass AND c.lexeme = {row_count}) AS yes
        ),
        total AS (
            SELECT CASE WHEN (SELECT yes FROM tracked)
                        THEN least(COALESCE((SELECT n FROM counted WHERE lexeme = {row_count}), 0), %(n_cap)s)
                        ELSE (SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT %(n_cap)s) AS sample)
                   END::float8 AS n
        ),
        terms AS MATERIALIZED (
            SELECT phraseto_tsquery('simple', w.lexeme) AS tsq,
                   CASE WHEN (SELECT yes FROM tracked) THEN COALESCE(c.n, 0)
                        ELSE (SELECT count(*) FROM (
                                  SELECT 1 FROM {t} AS x
                                  WHERE x.{column} @@ phraseto_tsquery('simple', w.lexeme)
                                  LIMIT %(df_cap)s) AS hits)
                   END::float8 AS df
            FROM words AS w LEFT JOIN counted AS c ON c.lexeme = w.lexeme
        )"""

#: The same statistics over only the rows the viewer may read (`_VISIBLE`, the filter the scans use). Counted
#: over the whole table they would let a word in a page the viewer cannot read change the rarity weights, hence
#: the scores and order of pages they can read: anyone could test whether a restricted page contains a word
#: (issue 12: "results never reveal a page the person cannot read"). The table size is the constant `N_CAP`,
#: what the service account uses on any table past that size (IDF needs only a scale that is the same for
#: every word).
#:
#: A word's document count is a function of the readable rows alone, whatever plan Postgres picks:
#:
#: * `sampled`: the readable rows of the sample (`app.db.sample_predicate`, one row in 16, on its own partial GIN
#:   index) holding the word, counted up to DF_CAP / 16;
#: * with at least `SAMPLE_MIN` of them, the count is 16 × that, capped at `DF_CAP` (an estimate from the
#:   sample);
#: * with fewer, the word is rare among the rows the viewer reads: counted exactly, up to `DF_CAP`.
#:
#: Counting a common word exactly meant reading ~1,000 readable rows per word from the heap, each tested
#: against the viewer's readable pages (measured at 100k chunks, bench/permission_search.py: 36 of a 44 ms
#: person query); the sample reads at most 63 readable rows per word (~80 tested) and the exact count runs
#: only for words with fewer than ~128 readable rows.
_VIEWER_STATISTICS = """total AS (SELECT %(n_cap)s::float8 AS n),
        words AS MATERIALIZED (
            SELECT phraseto_tsquery('simple', w.lexeme) AS tsq
            FROM unnest(tsvector_to_array(to_tsvector({config}, %(query)s))) AS w(lexeme)
        ),
        sampled AS MATERIALIZED (
            SELECT w.tsq, (SELECT count(*) FROM (
                               SELECT 1 FROM {t} AS d WHERE d.{column} @@ w.tsq AND {sample} AND {visible}
                               LIMIT %(sample_cap)s) AS hits) AS hits
            FROM words AS w
        ),
        terms AS MATERIALIZED (
            SELECT s.tsq,
                   CASE WHEN s.hits >= %(sample_min)s THEN least(s.hits * %(sample_scale)s, %(df_cap)s)
                        ELSE (SELECT count(*) FROM (
                                 SELECT 1 FROM {t} AS d WHERE d.{column} @@ s.tsq AND {visible}
                                 LIMIT %(df_cap)s) AS hits)
                   END::float8 AS df
            FROM sampled AS s
        )"""


#: The lexical ranking is built in four steps (`_hybrid_sql`) so that a person's permission test runs on the
#: rows that can matter, not on every row holding a query word (a word in ~600 rows each, three such words:
#: 1,900 tests per query, measured at 100k chunks, bench/permission_search.py; now ~90):
#:
#: * `scored`: every row matching a query word, weighted, whatever the viewer may read (the words' IDFs summed in
#:   a fixed order: floating-point addition is not associative, and two chunks holding the same words must weigh
#:   exactly the same whatever order the plan meets them in, or their ranks flip with the plan);
#: * `ceiling`: the best weight among rows the viewer may read: rows in descending weight, tested until one passes;
#: * `matched`: rows within `LEXICAL_FLOOR` of that ceiling (only these get `ts_rank_cd`, the tie-break);
#: * `best`: of those, in rank order, the first `candidates` the viewer may read.
#:
#: The same rows, ranks and scores as testing every row first: the floor and the limit only keep a prefix of the
#: readable rows in weight order. `OFFSET 0` keeps Postgres from pushing the test below the sort (it would then
#: test every row again). Unreadable rows only decide how many tests run, never a value (README "Permissions",
#: last paragraph: the timing side channel this leaves).


def _hybrid_sql(
    table: str,
    *,
    space: str | None,
    label: str | None,
    principals: frozenset[str] | None = None,
    fusion: Fusion = Fusion.RELATIVE,
    vector_type: str = "vector",
    exact: bool = False,
    hnsw: bool = True,
) -> sql.Composed:
    return sql.SQL(
        """
        WITH {nearest},
        semantic AS (
            SELECT id, distance, row_number() OVER (ORDER BY distance, node_id) AS rank,
                   min(distance) OVER () AS lo, max(distance) OVER () AS hi
            FROM nearest
        ),
        {statistics},
        weighted AS (
            SELECT terms.tsq, ln(1 + total.n / terms.df) AS idf
            FROM terms, total
            WHERE terms.df > 0 AND terms.df < %(df_cap)s
        ),
        scored AS (
            SELECT b.id, b.node_id, b.page,
                   greatest(b.body, b.heading) + %(field_tie)s * least(b.body, b.heading) AS weight
            FROM (
                SELECT d.id, d.node_id, d.metadata_ ->> 'ref_doc_id' AS page,
                       COALESCE(sum(w.idf ORDER BY w.idf)
                                FILTER (WHERE ts_filter(d.{column}, '{{d}}') @@ w.tsq), 0) AS body,
                       COALESCE(sum(w.idf ORDER BY w.idf)
                                FILTER (WHERE ts_filter(d.{column}, '{{a,b}}') @@ w.tsq), 0) AS heading
                FROM weighted AS w JOIN {t} AS d ON d.{column} @@ w.tsq
                WHERE {where}
                GROUP BY d.id
            ) AS b
        ),
        ceiling AS MATERIALIZED (
            SELECT m.weight FROM (SELECT * FROM scored ORDER BY weight DESC OFFSET 0) AS m WHERE {readable} LIMIT 1
        ),
        matched AS (
            SELECT s.id, s.node_id, s.page, s.weight,
                   ts_rank_cd(d.{column}, websearch_to_tsquery({config}, %(query)s)) AS whole
            FROM scored AS s JOIN {t} AS d ON d.id = s.id
            WHERE s.weight >= %(floor)s * (SELECT c.weight FROM ceiling AS c)
        ),
        best AS MATERIALIZED (
            SELECT m.id, m.node_id, m.weight, m.whole
            FROM (SELECT * FROM matched ORDER BY weight DESC, whole DESC, node_id OFFSET 0) AS m
            WHERE {readable}
            ORDER BY m.weight DESC, m.whole DESC, m.node_id
            LIMIT %(candidates)s
        ),
        lexical AS (
            SELECT id, weight, row_number() OVER (ORDER BY weight DESC, whole DESC, node_id) AS rank,
                   min(weight) OVER () AS lo, max(weight) OVER () AS hi
            FROM best
            ORDER BY rank
        ),
        fused AS (
            SELECT COALESCE(s.id, l.id) AS id, {score} AS score,
                   l.rank AS lexical_rank, s.rank AS semantic_rank
            FROM semantic AS s FULL OUTER JOIN lexical AS l ON s.id = l.id
        )
        SELECT f.score, d.text, d.metadata_, d.node_id, {version_columns},
               (SELECT count(*) FROM nearest) AS semantic_found
        FROM fused AS f JOIN {t} AS d ON d.id = f.id {version_join}
        ORDER BY f.score DESC, f.lexical_rank NULLS LAST, f.semantic_rank NULLS LAST, d.node_id
        LIMIT %(k)s
        """
    ).format(
        t=sql.Identifier(f"data_{table}"),
        column=sql.Identifier(SEARCH_COLUMN),
        config=sql.Literal(TEXT_SEARCH_CONFIG),
        statistics=_statistics(table, principals),
        score=_FUSED_SCORE[fusion],
        where=_filters("d", space=space, label=label),
        readable=sql.SQL("true") if principals is None else _VISIBLE_PAGE.format(page=sql.SQL("m.page")),
        nearest=_nearest_cte(
            table,
            space=space,
            label=label,
            limit="candidates",
            principals=principals,
            vector_type=vector_type,
            exact=exact,
            hnsw=hnsw,
        ),
        version_columns=_VERSION_COLUMNS,
        version_join=_VERSION_JOIN,
    )


def _statistics(table: str, principals: frozenset[str] | None) -> sql.Composed:
    """The `total` and `terms` CTEs of the hybrid statement: over the table for the service account, over the
    viewer's readable rows for a person (`_VIEWER_STATISTICS` says why)."""
    t = sql.Identifier(f"data_{table}")
    column = sql.Identifier(SEARCH_COLUMN)
    config = sql.Literal(TEXT_SEARCH_CONFIG)
    if principals is None:
        return sql.SQL(_TABLE_STATISTICS).format(
            t=t,
            column=column,
            config=config,
            row_count=sql.Literal(ROW_COUNT),
            counts=sql.SQL(COUNTS_SQL.replace("%(lexemes)s::text[]", "(SELECT array_agg(lexeme) FROM words)")),
        )
    visible = _filters("d", space=None, label=None, principals=principals)
    return sql.SQL(_VIEWER_STATISTICS).format(
        t=t, column=column, config=config, visible=visible, sample=sample_predicate("d")
    )


#: The fused score of a row of `semantic` (s) FULL JOIN `lexical` (l); a ranking that did not find the row adds 0.
#: Relative: the semantic list min-max scaled (its best 1, its 50th 0: cosine similarities of one query sit in a
#: narrow band, and only their spread says anything), as LlamaIndex's `_relative_score_fusion` does; the lexical
#: score as a fraction of the best one. Not min-max there: the lexical list keeps only rows within
#: `LEXICAL_FLOOR` of the best, so min-max would give 0 to a row matching most of the query (measured: the
#: answer chunk of "restore a postgres database backup" scored 0 lexically and lost to its neighbour).
_FUSED_SCORE: dict[Fusion, sql.Composable] = {
    Fusion.RELATIVE: sql.SQL(
        """%(vector_weight)s * CASE WHEN s.id IS NULL THEN 0.0
                                    WHEN s.hi > s.lo THEN (s.hi - s.distance) / (s.hi - s.lo) ELSE 1.0 END
           + (1 - %(vector_weight)s) * CASE WHEN l.id IS NULL OR l.hi <= 0 THEN 0.0
                                            ELSE l.weight / l.hi END"""
    ),
    Fusion.RRF: sql.SQL(
        """COALESCE(%(vector_weight)s / (%(rrf_k)s + s.rank), 0.0)
           + COALESCE((1 - %(vector_weight)s) / (%(rrf_k)s + l.rank), 0.0)"""
    ),
}


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
