"""`vector` against `halfvec` storage (VECTOR_TYPE): table and index size, HNSW build time, search p99, recall@10.

The same rows (1024-dim unit vectors in clusters, Zipf-like texts with one rare code each: the generator of
bench/search_latency.py) go into two databases migrated by the service itself (`app.db.migrate` with
`VECTOR_TYPE=vector` and `halfvec`), by binary COPY with the HNSW and full-text GIN indexes dropped and
rebuilt afterwards, exactly as `app/db.py` defines them (m=16; ef_construction 64, or
BENCH_SCALE_EF_CONSTRUCTION as the setting HNSW_EF_CONSTRUCTION would; `vector_cosine_ops` or
`halfvec_cosine_ops`). Then `app.search.search` runs the same queries on both, vector and hybrid mode.

Recall@10 is against exact float32 search: the same SQL on the `vector` table with `enable_indexscan = off`
(HNSW is only usable as an index scan), so halfvec's rounding counts against it too.

    python -m bench.search_scale                             # 100,000 rows (minutes)
    BENCH_SCALE_ROWS=1000000 python -m bench.search_scale    # the 1M x 1024 run (opt-in: hours on 2 cores)
    BENCH_SCALE_ROWS=1000000 BENCH_SCALE_EF_CONSTRUCTION=200 python -m bench.search_scale   # the 1M graph
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import numpy as np
from pgvector import HalfVector
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from bench.common import Timer, fresh_database, machine, postgres, show
from bench.search_latency import CLUSTERS, NOISE, SPACES, VOCAB, WORDS_PER_ROW, CannedEmbedder, _pct, _unit, _words

DIM = int(os.environ.get("BENCH_SCALE_DIM", "1024"))
ROWS = int(os.environ.get("BENCH_SCALE_ROWS", "100000"))
QUERIES = int(os.environ.get("BENCH_SCALE_QUERIES", "200"))
EXACT_QUERIES = 50
#: `hnsw.ef_search` floors (setting HNSW_EF_SEARCH) measured in vector mode: recall against latency.
EF_VALUES = (40, 100, 200, 400, 800)
#: The HNSW build's ef_construction (setting HNSW_EF_CONSTRUCTION; pgvector's default 64): at 1M rows, 64 leaves
#: some true neighbours unreachable whatever ef_search (bench/RESULTS.md, search_scale).
EF_CONSTRUCTION = int(os.environ.get("BENCH_SCALE_EF_CONSTRUCTION", "64"))
TYPES = ("vector", "halfvec")


def maintenance_mib(vector_type: str) -> int:
    """`maintenance_work_mem` for the HNSW build: at least 2 GB, and enough for the whole graph (the vectors
    plus ~40% for m=16 neighbour lists), since pgvector's build slows to on-disk inserts once the graph no
    longer fits ("hnsw graph no longer fits into maintenance_work_mem", pgvector README, Index Build Time).
    At 1M x 1024 that is ~5.5 GB for `vector`, ~2.8 GB for `halfvec`."""
    per_value = 2 if vector_type == "halfvec" else 4
    return max(2048, int(ROWS * DIM * per_value * 1.4 / 2**20))


def _centroids() -> np.ndarray:
    return _unit(np.random.default_rng(0).standard_normal((CLUSTERS, DIM)))


async def load(url: str, vector_type: str, centroids: np.ndarray) -> dict[str, float]:
    """Migrate with `vector_type`, drop the big indexes, COPY `ROWS` rows (seeded: identical for both types),
    rebuild and measure. Returns seconds and bytes."""
    from pgvector.psycopg import register_vector_async
    from psycopg import sql

    from app.db import hnsw_index_sql, migrate, vector_index_names
    from tests.conftest import make_settings

    settings = make_settings(embed_dim=DIM, vector_type=vector_type, hnsw_ef_construction=EF_CONSTRUCTION)
    await migrate(url, settings)
    names = vector_index_names("confluence")
    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(VOCAB)]
    out: dict[str, float] = {}
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await register_vector_async(conn)
        for role in ("embedding", "tsv", "search"):
            await conn.execute(sql.SQL("DROP INDEX {i}").format(i=sql.Identifier(names[role])))
        with Timer() as t:
            async with conn.cursor().copy(
                "COPY data_confluence (text, metadata_, node_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["varchar", "jsonb", "varchar", vector_type])
                block = 10_000
                for start in range(0, ROWS, block):
                    n = min(block, ROWS - start)
                    cluster = rng.integers(0, CLUSTERS, size=n)
                    vectors = _unit(centroids[cluster] + NOISE * _unit(rng.standard_normal((n, DIM))))
                    words = _words(rng, vocab, n * WORDS_PER_ROW)
                    for i in range(n):
                        row = start + i
                        page = row // 20
                        text = " ".join(words[i * WORDS_PER_ROW : (i + 1) * WORDS_PER_ROW])
                        text += f" ERR-{row:07d} topic{cluster[i]}"
                        meta = {
                            "page_id": str(page),
                            "ref_doc_id": str(page),
                            "title": f"Page {page}",
                            "space_key": f"S{page % SPACES:02d}",
                            "header_path": f"Section {row % 20}",
                        }
                        value = HalfVector(vectors[i]) if vector_type == "halfvec" else vectors[i]
                        await copy.write_row((text, Jsonb(meta), f"n{row}", value))
        out["copy_s"] = t.seconds
        await conn.execute(f"SET maintenance_work_mem = '{maintenance_mib(vector_type)}MB'")
        await conn.execute("SET max_parallel_maintenance_workers = 1")  # 2 cores: leader + 1 worker
        with Timer() as t:
            await conn.execute(
                hnsw_index_sql(
                    "confluence", vector_type, m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction
                )
            )
        out["hnsw_s"] = t.seconds
        await conn.execute(
            sql.SQL("CREATE INDEX {i} ON data_confluence USING gin (text_search_tsv)").format(
                i=sql.Identifier(names["tsv"])
            )
        )
        await conn.execute(
            sql.SQL("CREATE INDEX {i} ON data_confluence USING gin (cv_search_tsv)").format(
                i=sql.Identifier(names["search"])
            )
        )
        await conn.execute("VACUUM ANALYZE data_confluence")
        row = await (
            await conn.execute(
                "SELECT pg_table_size('data_confluence'), pg_relation_size(%s::regclass)", (f'"{names["embedding"]}"',)
            )
        ).fetchone()
        assert row is not None
        out["table_bytes"], out["hnsw_bytes"] = float(row[0]), float(row[1])
    return out


def queries(centroids: np.ndarray, embedder: CannedEmbedder) -> list[str]:
    rng = np.random.default_rng(7)
    vocab = [f"w{i}" for i in range(VOCAB)]
    out = []
    for q in range(QUERIES):
        cluster = int(rng.integers(0, CLUSTERS))
        vector = _unit(centroids[cluster] + NOISE * _unit(rng.standard_normal(DIM)))
        words = _words(rng, vocab, 2)
        text = f"{words[0]} {words[1]} topic{cluster} ERR-{int(rng.integers(0, ROWS)):07d} q{q}"
        embedder.vectors[text] = vector.tolist()
        out.append(text)
    return out


async def _exact_configure(conn: AsyncConnection[Any]) -> None:
    from pgvector.psycopg import register_vector_async

    await register_vector_async(conn)
    await conn.set_autocommit(True)
    await conn.execute("SET enable_indexscan = off")


#: ann-benchmarks' "epsilon recall": a returned row counts when its distance is within (1 + ε) of the true k-th
#: nearest row's (Aumüller et al., ANN-Benchmarks, 2020; their plots use ε = 0.01). Where many rows tie with the
#: k-th (this generator: the 10th and 11th differ by 0.0003 in cosine distance), plain recall@k counts a row
#: as wrong for being 0.0001 farther; ε-recall tells that apart from a walk that missed the neighbourhood.
EPSILON = 0.01


async def exact_truth(
    url: str, embedder: CannedEmbedder, texts: list[str]
) -> tuple[dict[tuple[str, str], set[str]], dict[str, float]]:
    """Top-10 node ids by exact float32 search on the `vector` table, per (mode, query); and per query the cosine
    distance of its exact 10th nearest row (for ε-recall)."""
    from app.search import SearchMode, search

    pool = AsyncConnectionPool(url, min_size=1, max_size=1, configure=_exact_configure, open=False)
    await pool.open()
    truth: dict[tuple[str, str], set[str]] = {}
    kth: dict[str, float] = {}
    try:
        for mode in SearchMode:
            for q in texts[:EXACT_QUERIES]:
                hits = await search(pool, embedder, "confluence", q, k=10, mode=mode)
                truth[(mode.value, q)] = {h.node_id for h in hits}
                if mode is SearchMode.VECTOR and hits:
                    kth[q] = 1 - hits[-1].score  # vector mode: score = 1 - cosine distance
    finally:
        await pool.close()
    return truth, kth


def epsilon_recall(hits: list[Any], kth_distance: float, k: int = 10) -> float:
    """Share of the k asked for whose distance is within (1 + `EPSILON`) of the true k-th (vector-mode hits)."""
    return sum(1 for h in hits if 1 - h.score <= kth_distance * (1 + EPSILON)) / k


async def latency(
    url: str,
    embedder: CannedEmbedder,
    texts: list[str],
    truth: dict[tuple[str, str], set[str]],
    kth: dict[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    from app.db import make_pool
    from app.search import SearchMode, search

    pool = make_pool(url, max_size=2)
    await pool.open()
    out: dict[str, dict[str, float]] = {}
    try:
        for mode in SearchMode:
            for q in texts[:20]:
                await search(pool, embedder, "confluence", q, k=10, mode=mode)
            times, found = [], {}
            for q in texts:
                started = time.perf_counter()
                hits = await search(pool, embedder, "confluence", q, k=10, mode=mode)
                times.append((time.perf_counter() - started) * 1000)
                found[q] = {h.node_id for h in hits}
            recall = [
                len(found[q] & truth[(mode.value, q)]) / max(1, len(truth[(mode.value, q)]))
                for q in texts[:EXACT_QUERIES]
            ]
            out[mode.value] = {
                "p50": statistics.median(times),
                "p99": _pct(times, 99),
                "recall": statistics.mean(recall),
            }
        for ef in EF_VALUES:  # vector mode, the HNSW walk widened by HNSW_EF_SEARCH
            times, recall, eps = [], [], []
            for i, q in enumerate(texts):
                started = time.perf_counter()
                hits = await search(pool, embedder, "confluence", q, k=10, mode=SearchMode.VECTOR, ef_search=ef)
                times.append((time.perf_counter() - started) * 1000)
                if i < EXACT_QUERIES:
                    truth_ids = truth[(SearchMode.VECTOR.value, q)]
                    recall.append(len({h.node_id for h in hits} & truth_ids) / max(1, len(truth_ids)))
                    if kth is not None and q in kth:
                        eps.append(epsilon_recall(hits, kth[q]))
            out[f"ef{ef}"] = {
                "p50": statistics.median(times),
                "p99": _pct(times, 99),
                "recall": statistics.mean(recall),
                **({"eps_recall": statistics.mean(eps)} if eps else {}),
            }
    finally:
        await pool.close()
    return out


async def measure(server: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    centroids = _centroids()
    embedder = CannedEmbedder()
    texts = queries(centroids, embedder)
    loads, searches = {}, {}
    urls = {t: fresh_database(server, f"b_scale_{t}") for t in TYPES}
    for vector_type in TYPES:
        loads[vector_type] = await load(urls[vector_type], vector_type, centroids)
    truth, kth = await exact_truth(urls["vector"], embedder, texts)
    for vector_type in TYPES:
        searches[vector_type] = await latency(urls[vector_type], embedder, texts, truth, kth)
    return loads, searches


def main() -> str:
    with postgres() as server:
        loads, searches = asyncio.run(measure(server))
    return render(loads, searches)


def render(loads: dict[str, dict[str, float]], searches: dict[str, dict[str, dict[str, float]]]) -> str:
    """The table of `measure`'s figures (also used to record a run made in pieces, e.g. the 1M run resumed
    on a persistent server)."""
    mib = 1024 * 1024
    rows = []
    for vector_type in TYPES:
        ld, sr = loads[vector_type], searches[vector_type]
        rows.append(
            [
                vector_type,
                f"{ld['table_bytes'] / mib:,.0f}",
                f"{ld['hnsw_bytes'] / mib:,.0f}",
                f"{ld['hnsw_s']:.0f}",
                f"{sr['vector']['p50']:.1f}",
                f"{sr['vector']['p99']:.1f}",
                f"{sr['vector']['recall']:.3f}",
                f"{sr['hybrid']['p50']:.1f}",
                f"{sr['hybrid']['p99']:.1f}",
                f"{sr['hybrid']['recall']:.3f}",
            ]
        )
    v, h = loads["vector"], loads["halfvec"]
    rows.append(
        [
            "halfvec / vector",
            f"{h['table_bytes'] / v['table_bytes']:.2f}x",
            f"{h['hnsw_bytes'] / v['hnsw_bytes']:.2f}x",
            f"{h['hnsw_s'] / v['hnsw_s']:.2f}x",
            *[
                f"{searches['halfvec'][m][x] / searches['vector'][m][x]:.2f}x"
                for m in ("vector", "hybrid")
                for x in ("p50", "p99", "recall")
            ],
        ]
    )
    note = (
        f"{machine()}. {ROWS:,} rows × {DIM} dimensions, one run, both types loaded from the same seeded "
        f"generator. HNSW m=16, ef_construction={EF_CONSTRUCTION}, "
        f"maintenance_work_mem {maintenance_mib('vector'):,} / "
        f"{maintenance_mib('halfvec'):,} MB (vector / halfvec: the whole graph in memory), 1 parallel worker. "
        "Latency: "
        f"{QUERIES} sequential `app.search.search` calls (k=10) after 20 warm-ups, query embedding excluded; "
        f"recall@10 against exact float32 search on the vector table, first {EXACT_QUERIES} queries. "
        "Targets (issue 14, at 1M): p99 < 50 ms, recall@10 ≥ 0.95, halfvec index ≈ half."
    )
    out = show(
        f"vector vs halfvec at {ROWS:,} chunks × {DIM}",
        [
            "type",
            "table MiB",
            "HNSW MiB",
            "HNSW build s",
            "vector p50 ms",
            "vector p99 ms",
            "vector recall@10",
            "hybrid p50 ms",
            "hybrid p99 ms",
            "hybrid recall@10",
        ],
        rows,
        note=note,
    )
    measured = [ef for ef in EF_VALUES if all(f"ef{ef}" in searches[t] for t in TYPES)]
    columns = ["p50", "p99", "recall"]
    if measured and all("eps_recall" in searches[t][f"ef{ef}"] for t in TYPES for ef in measured):
        columns.append("eps_recall")  # runs recorded before ε-recall existed lack it
    names = {"p50": "p50 ms", "p99": "p99 ms", "recall": "recall@10", "eps_recall": f"ε-recall@10 (ε={EPSILON})"}
    ef_rows = [
        [
            str(ef),
            *(
                f"{searches[t][f'ef{ef}'][x]:.1f}" if x in ("p50", "p99") else f"{searches[t][f'ef{ef}'][x]:.3f}"
                for t in TYPES
                for x in columns
            ),
        ]
        for ef in measured
    ]
    if ef_rows:
        out += show(
            f"hnsw.ef_search (HNSW_EF_SEARCH) at {ROWS:,} chunks, vector mode, k=10",
            ["ef_search", *(f"{t} {names[x]}" for t in TYPES for x in columns)],
            ef_rows,
            note=(
                f"Same queries and exact truth as above; {QUERIES} timed searches per value. ε-recall "
                f"(ann-benchmarks): a returned row counts when its distance is within {1 + EPSILON} times the "
                "exact 10th neighbour's."
            ),
        )
    return out


if __name__ == "__main__":
    main()
