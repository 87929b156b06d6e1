"""Search latency and recall@10 at 100k chunks: `app.search.search`, vector and hybrid, with and without a filter.

Data: `ROWS` 1024-dim unit vectors in `CLUSTERS` clusters (row = centroid + noise, cosine to its centroid ≈ 0.78,
so each query's ten nearest rows are near-ties inside one cluster: a hard case for an ANN index, as real
embeddings of one topic are). Texts are drawn from a Zipf-like vocabulary with one rare code per row, so the
hybrid mode's lexical ranking has common words (dropped above `DF_CAP`) and rare ones. Rows are spread evenly
over `SPACES` spaces, independently of their cluster, so a space filter keeps 2% of rows scattered across the
graph (the iterative scan's worst case).

Load: binary COPY into the service's own table (`app.db.migrate`) with its HNSW and GIN indexes dropped, then
both rebuilt after the load (much faster than index maintenance during 100k inserts, and the resulting graph
is the same kind: same `m`/`ef_construction` as `app/db.py`). The load and build times are reported.

Exact answers come from the very same SQL (`app.search.search`) on a pool whose sessions run with
`enable_indexscan = off`: the HNSW index is only usable as an index scan, so the planner must compute every
distance (a sequential scan, or the `space_key` btree as a bitmap scan with a filter). Recall@10 = overlap of
the two top-10 node-id sets / 10. Latency is wall time of `search()` calls, one at a time, after a warm-up,
query embedding excluded (a canned vector: the fake embedder answers at once).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from bench.common import Timer, fresh_database, machine, postgres, show

DIM = 1024
ROWS = int(os.environ.get("BENCH_SEARCH_ROWS", "100000"))
CLUSTERS = 2000
SPACES = 50  # each holds 2% of rows
FILTER_SPACE = "S07"
QUERIES = int(os.environ.get("BENCH_SEARCH_QUERIES", "200"))
EXACT_QUERIES = 50  # per mode and filter: an unfiltered exact query scans all 100k vectors (~0.5 s)
VOCAB = 20_000
WORDS_PER_ROW = 60
NOISE = 0.8


@dataclass(frozen=True)
class Corpus:
    centroids: np.ndarray
    vocab: list[str]
    rng: np.random.Generator


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _words(rng: np.random.Generator, vocab: list[str], n: int) -> list[str]:
    ranks = np.minimum(rng.zipf(1.15, size=n), len(vocab)) - 1
    return [vocab[i] for i in ranks]


class CannedEmbedder:
    """`app.search.QueryEmbedder` answering from a dict: the benchmark measures search, not embedding."""

    def __init__(self) -> None:
        self.vectors: dict[str, list[float]] = {}

    async def aget_query_embedding(self, query: str) -> list[float]:
        return self.vectors[query]


async def load(url: str, corpus: Corpus) -> dict[str, float]:
    """Schema via `migrate`, drop the two big indexes, binary COPY `ROWS` rows, rebuild the indexes."""
    from app.db import migrate, vector_index_names
    from tests.conftest import make_settings

    await migrate(url, make_settings())
    names = vector_index_names("confluence")
    rng = corpus.rng
    timings: dict[str, float] = {}
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        await conn.execute(f'DROP INDEX "{names["embedding"]}"')
        await conn.execute(f'DROP INDEX "{names["tsv"]}"')
        await conn.execute(f'DROP INDEX "{names["search"]}"')
        with Timer() as t:
            block = 10_000
            async with conn.cursor().copy(
                "COPY data_confluence (text, metadata_, node_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["varchar", "jsonb", "varchar", "vector"])
                for start in range(0, ROWS, block):
                    n = min(block, ROWS - start)
                    cluster = rng.integers(0, CLUSTERS, size=n)
                    vectors = _unit(corpus.centroids[cluster] + NOISE * _unit(rng.standard_normal((n, DIM))))
                    words = _words(rng, corpus.vocab, n * WORDS_PER_ROW)
                    for i in range(n):
                        row = start + i
                        page = row // 20
                        text = " ".join(words[i * WORDS_PER_ROW : (i + 1) * WORDS_PER_ROW])
                        text += f" ERR-{row:06d} topic{cluster[i]}"
                        meta = {
                            "page_id": str(page),
                            "ref_doc_id": str(page),
                            "doc_id": str(page),
                            "title": f"Page {page}",
                            "url": f"https://wiki/{page}",
                            "space_key": f"S{page % SPACES:02d}",
                            "header_path": f"Section {row % 20}",
                            "version": 1,
                            "labels": [],
                        }
                        await copy.write_row((text, Jsonb(meta), f"n{row}", vectors[i]))
        timings["copy"] = t.seconds
        await conn.execute("SET maintenance_work_mem = '2GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 1")  # 2 cores: leader + 1 worker
        with Timer() as t:
            await conn.execute(
                f'CREATE INDEX "{names["embedding"]}" ON data_confluence '
                "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
            )
        timings["hnsw"] = t.seconds
        with Timer() as t:
            await conn.execute(f'CREATE INDEX "{names["tsv"]}" ON data_confluence USING gin (text_search_tsv)')
            await conn.execute(f'CREATE INDEX "{names["search"]}" ON data_confluence USING gin (cv_search_tsv)')
            await conn.execute("VACUUM ANALYZE data_confluence")
        timings["gin"] = t.seconds
    return timings


def _queries(corpus: Corpus, embedder: CannedEmbedder, n: int) -> list[str]:
    """Query texts (two vocabulary words, a topic word, a code) each bound to a vector near one centroid."""
    rng = np.random.default_rng(7)
    out = []
    for q in range(n):
        cluster = int(rng.integers(0, CLUSTERS))
        vector = _unit(corpus.centroids[cluster] + NOISE * _unit(rng.standard_normal(DIM)))
        words = _words(rng, corpus.vocab, 2)
        text = f"{words[0]} {words[1]} topic{cluster} ERR-{int(rng.integers(0, ROWS)):06d} q{q}"
        embedder.vectors[text] = vector.tolist()
        out.append(text)
    return out


async def _exact_configure(conn: AsyncConnection[Any]) -> None:
    from pgvector.psycopg import register_vector_async

    await register_vector_async(conn)
    await conn.set_autocommit(True)
    await conn.execute("SET enable_indexscan = off")  # HNSW is index-scan only: exact distances


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(url: str, corpus: Corpus) -> list[list[str]]:
    from app.db import make_pool
    from app.search import SearchMode, ef_search_for, search

    embedder = CannedEmbedder()
    queries = _queries(corpus, embedder, QUERIES)
    pool = make_pool(url, max_size=2)
    await pool.open()
    exact_pool = AsyncConnectionPool(url, min_size=1, max_size=1, configure=_exact_configure, open=False)
    await exact_pool.open()
    rows = []
    try:
        for mode in (SearchMode.VECTOR, SearchMode.HYBRID):
            for space in (None, FILTER_SPACE):
                for q in queries[:20]:  # warm-up: caches, plans
                    await search(pool, embedder, "confluence", q, k=10, space=space, mode=mode)
                latencies, found = [], {}
                for q in queries:
                    started = time.perf_counter()
                    hits = await search(pool, embedder, "confluence", q, k=10, space=space, mode=mode)
                    latencies.append((time.perf_counter() - started) * 1000)
                    found[q] = {h.node_id for h in hits}
                recalls, short = [], 0
                for q in queries[:EXACT_QUERIES]:
                    exact = await search(exact_pool, embedder, "confluence", q, k=10, space=space, mode=mode)
                    truth = {h.node_id for h in exact}
                    recalls.append(len(found[q] & truth) / max(1, len(truth)))
                    short += len(found[q]) < 10
                limit = 10 if mode is SearchMode.VECTOR else 50
                rows.append(
                    [
                        mode.value,
                        space or "none",
                        f"{statistics.median(latencies):.1f}",
                        f"{_pct(latencies, 99):.1f}",
                        f"{statistics.mean(recalls):.3f}",
                        f"{min(recalls):.1f}",
                        str(short),
                        str(ef_search_for(limit, filtered=space is not None)),
                    ]
                )
    finally:
        await pool.close()
        await exact_pool.close()
    return rows


def main() -> str:
    rng = np.random.default_rng(0)
    corpus = Corpus(
        centroids=_unit(rng.standard_normal((CLUSTERS, DIM))),
        vocab=[f"w{i}" for i in range(VOCAB)],
        rng=rng,
    )
    with postgres() as server:
        url = fresh_database(server, "b_search")
        timings = asyncio.run(load(url, corpus))
        rows = asyncio.run(measure(url, corpus))
    for row in rows:
        row.insert(2, f"{QUERIES}")
    note = (
        f"{machine()}. {ROWS:,} rows × {DIM}-dim in {CLUSTERS} clusters, {SPACES} spaces (filter = one space, "
        f"2% of rows, uncorrelated with clusters). Load: binary COPY {timings['copy']:.0f} s, then HNSW "
        f"(m=16, ef_construction=64, as app/db.py; maintenance_work_mem=2GB, 1 parallel worker) built after the "
        f"load in {timings['hnsw']:.0f} s, GIN + ANALYZE {timings['gin']:.0f} s. Latency: sequential "
        f"`app.search.search` calls after 20 warm-ups, query embedding excluded. Recall@10 vs the same SQL with "
        f"enable_indexscan=off (exact), over the first {EXACT_QUERIES} queries; `short` = queries returning "
        "fewer than 10 hits. Targets: p99 < 50 ms, recall@10 ≥ 0.95."
    )
    return show(
        f"Search at {ROWS:,} chunks: latency and recall@10",
        ["mode", "space filter", "queries", "p50 ms", "p99 ms", "recall@10", "worst recall", "short", "ef_search"],
        rows,
        note=note,
    )


if __name__ == "__main__":
    main()
