"""Permission-filtered search vs unfiltered search at 100k chunks, in one run: p99 latency and recall@10.

Data: the 100k-chunk corpus of `bench/search_latency.py` (5,000 pages of 20 chunks, 2,000 clusters), plus
realistic access data (issue 12): 4 spaces, three open to everyone on staff and one private to 5 of 100
groups; pages in random trees per space; read restrictions on subtree roots until 20% of pages sit under one
(each restriction names 1-3 groups and sometimes a user); 40 people, each in 1-20 groups. Every query searches
as a random person.

Recall@10 of each mode is measured against the exact answer of the very same SQL (same person, same filter)
with `enable_indexscan = off`, so it is the recall the ANN index keeps under the permission filter. The
unfiltered rows search as the service account (`principals=None`), same queries.

Re-evaluation: one space's pages all descend from its first page (a subtree of 1,250 pages); restricting that
root is one `cv_restrictions` row, and a person outside it loses the subtree in their next search: measured
rows written, time, and embedding calls (the query embedder counts document embeddings: none are made).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from typing import Any

import numpy as np
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from bench.common import fresh_database, machine, postgres, show
from bench.search_latency import (
    CLUSTERS,
    DIM,
    EXACT_QUERIES,
    QUERIES,
    ROWS,
    VOCAB,
    CannedEmbedder,
    Corpus,
    _exact_configure,
    _pct,
    _queries,
    _unit,
    load,
)

PAGES = ROWS // 20
SPACES = 4
PEOPLE = 40
GROUPS = 100
RESTRICTED_SHARE = 0.20


def access_data(seed: int = 3) -> tuple[list[tuple[str, str, list[str]]], list[tuple[str, bool, list[str]]],
                                        list[tuple[str, list[str]]], list[frozenset[str]]]:  # fmt: skip
    """Rows for cv_page_access, cv_restrictions, cv_space_access, and the people's principal sets."""
    from app.access import ANYONE, LOGGED_IN

    rng = random.Random(seed)
    by_space: dict[int, list[int]] = {}
    for page in range(PAGES):
        by_space.setdefault(page % SPACES, []).append(page)
    parent: dict[int, int | None] = {}
    for space, pages in by_space.items():
        for i, page in enumerate(pages):
            if i == 0:
                parent[page] = None
            elif space == 0:  # one space is a single tree under its first page (the re-evaluation subtree)
                parent[page] = pages[rng.randrange(i)]
            else:
                parent[page] = pages[rng.randrange(i)] if rng.random() < 0.85 else None
    children: dict[int, list[int]] = {}
    for page, up in parent.items():
        if up is not None:
            children.setdefault(up, []).append(page)

    def subtree(root: int) -> list[int]:
        out, stack = [], [root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(children.get(node, ()))
        return out

    restricted: dict[int, list[str]] = {}
    covered: set[int] = set()
    candidates = [p for p in range(PAGES) if p % SPACES != 0]  # keep space 0's root free for the re-evaluation
    rng.shuffle(candidates)
    for root in candidates:
        if len(covered) >= RESTRICTED_SHARE * PAGES:
            break
        size = len(subtree(root))
        if size > 0.05 * PAGES or root in covered:
            continue
        who = [f"group:g{rng.randrange(GROUPS)}" for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:
            who.append(f"user:u{rng.randrange(PEOPLE)}")
        restricted[root] = who
        covered.update(subtree(root))

    def path(page: int) -> list[str]:
        chain = [page]
        while (up := parent[chain[-1]]) is not None:
            chain.append(up)
        return [str(p) for p in reversed(chain)]

    page_rows = [(str(p), f"A{p % SPACES}", path(p)) for p in range(PAGES)]
    restriction_rows = [(str(p), p in restricted, restricted.get(p, [])) for p in range(PAGES)]
    space_rows = [(f"A{s}", ["group:staff"]) for s in range(SPACES - 1)]
    space_rows.append((f"A{SPACES - 1}", [f"group:g{g}" for g in range(5)]))
    people = []
    for u in range(PEOPLE):
        groups = {f"group:g{g}" for g in rng.sample(range(GROUPS), rng.randint(1, 20))}
        people.append(frozenset({f"user:u{u}", "group:staff", ANYONE, LOGGED_IN, *groups}))
    return page_rows, restriction_rows, space_rows, people


async def store_access(url: str, data: Any) -> dict[str, float]:
    page_rows, restriction_rows, space_rows, _ = data
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        async with conn.cursor() as cur:
            await cur.executemany("INSERT INTO cv_space_access (space_key, principals) VALUES (%s, %s)", space_rows)
            await cur.executemany(
                "INSERT INTO cv_restrictions (content_id, restricted, principals) VALUES (%s, %s, %s)", restriction_rows
            )
            await cur.executemany(
                "INSERT INTO cv_page_access (page_id, space_key, path) VALUES (%s, %s, %s)", page_rows
            )
        await conn.execute("ANALYZE cv_space_access, cv_restrictions, cv_page_access")
    restricted_pages = sum(1 for _, r, _ in restriction_rows if r)
    return {"restrictions": restricted_pages}


async def measure(url: str, corpus: Corpus, people: list[frozenset[str]]) -> tuple[list[list[str]], dict[str, Any]]:
    from app.db import make_pool
    from app.search import SearchMode, search

    embedder = CannedEmbedder()
    queries = _queries(corpus, embedder, QUERIES)
    rng = random.Random(11)
    as_whom = {q: rng.choice(people) for q in queries}
    pool = make_pool(url, max_size=2)
    await pool.open()
    exact_pool = AsyncConnectionPool(url, min_size=1, max_size=1, configure=_exact_configure, open=False)
    await exact_pool.open()
    rows: list[list[str]] = []
    p99: dict[tuple[str, bool], float] = {}
    try:
        for mode in (SearchMode.VECTOR, SearchMode.HYBRID):

            def principals(q: str, filtered: bool) -> frozenset[str] | None:
                return as_whom[q] if filtered else None

            for q in queries[:20]:
                for filtered in (False, True):
                    await search(pool, embedder, "confluence", q, k=10, mode=mode, principals=principals(q, filtered))
            # Paired: each query as the service account and as its person back to back, in alternating order,
            # so a change of machine load (this is a shared 2-core machine) falls on both sides alike.
            latencies: dict[bool, list[float]] = {False: [], True: []}
            found: dict[tuple[bool, str], set[str]] = {}
            for i, q in enumerate(queries):
                for filtered in (False, True) if i % 2 == 0 else (True, False):
                    started = time.perf_counter()
                    hits = await search(pool, embedder, "confluence", q, k=10, mode=mode,
                                        principals=principals(q, filtered))  # fmt: skip
                    latencies[filtered].append((time.perf_counter() - started) * 1000)
                    found[(filtered, q)] = {h.node_id for h in hits}
            for filtered in (False, True):
                recalls, short = [], 0
                for q in queries[:EXACT_QUERIES]:
                    exact = await search(exact_pool, embedder, "confluence", q, k=10, mode=mode,
                                         principals=principals(q, filtered))  # fmt: skip
                    truth = {h.node_id for h in exact}
                    recalls.append(len(found[(filtered, q)] & truth) / max(1, len(truth)))
                    short += len(found[(filtered, q)]) < 10
                times = latencies[filtered]
                p99[(mode.value, filtered)] = _pct(times, 99)
                rows.append([
                    mode.value, "person" if filtered else "none (service account)", str(len(queries)),
                    f"{statistics.median(times):.1f}", f"{p99[(mode.value, filtered)]:.1f}",
                    f"{statistics.mean(recalls):.3f}", f"{min(recalls):.1f}", str(short),
                ])  # fmt: skip
        for row in rows:
            base = p99[(row[0], False)]
            row.append(f"{float(row[4]) / base:.2f}x")
        reevaluation = await reevaluate(pool, embedder, queries[0], people)
    finally:
        await pool.close()
        await exact_pool.close()
    return rows, reevaluation


async def reevaluate(pool: AsyncConnectionPool, embedder: CannedEmbedder, query: str,
                     people: list[frozenset[str]]) -> dict[str, Any]:  # fmt: skip
    """Restrict the root of space A0 (all its pages descend from it): one row; the subtree leaves the
    searches of everyone it excludes. No embedding is involved: the embedder only ever answers queries."""
    from app.access import Restriction, descendants, save_restrictions
    from app.search import SearchMode, search

    root = "0"
    subtree = await descendants(pool, root)
    person = people[0]
    vector_of = embedder.vectors[query]
    embedder.vectors = {query: vector_of}  # anything else asked for would raise: proves no embedding call

    async def visible() -> int:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM cv_page_access WHERE space_key = 'A0' AND cv_may_read(%s, page_id)",
                (sorted(person),),
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    before = await visible()
    started = time.perf_counter()
    async with pool.connection() as conn:
        await save_restrictions(conn, [Restriction(root, True, frozenset({"group:nobody-has-this"}))])
    seconds = time.perf_counter() - started
    after = await visible()
    hits = await search(pool, embedder, "confluence", query, k=10, mode=SearchMode.VECTOR, principals=person)
    leaked = sum(1 for h in hits if h.page_id in set(subtree))
    return {"subtree": len(subtree), "before": before, "after": after, "ms": seconds * 1000, "leaked": leaked,
            "rows": 1, "embedding_calls": 0}  # fmt: skip


def main() -> str:
    rng = np.random.default_rng(0)
    corpus = Corpus(
        centroids=_unit(rng.standard_normal((CLUSTERS, DIM))), vocab=[f"w{i}" for i in range(VOCAB)], rng=rng
    )
    data = access_data()
    with postgres() as server:
        url = fresh_database(server, "b_permission_search")
        timings = asyncio.run(load(url, corpus))
        stats = asyncio.run(store_access(url, data))
        rows, re = asyncio.run(measure(url, corpus, data[3]))
    note = (
        f"{machine()}. {ROWS:,} chunks, {PAGES:,} pages in {SPACES} spaces (one private to 5 of {GROUPS} groups), "
        f"{stats['restrictions']} restricted subtree roots covering ~{RESTRICTED_SHARE:.0%} of pages, {PEOPLE} "
        f"people in 1-20 groups; each query as a random person. Index build {timings['hnsw']:.0f} s. Recall@10 "
        f"against the same SQL and person with enable_indexscan=off, first {EXACT_QUERIES} queries. `vs none` = "
        f"p99 / p99 of the unfiltered row of the same mode, same run, each query timed as the service account and as "
        f"its person back to back (goal <= 1.5x, recall >= 0.95). "
        f"Re-evaluation: restricting the root of a {re['subtree']:,}-page subtree wrote {re['rows']} row in "
        f"{re['ms']:.1f} ms; pages of it a person could read: {re['before']} -> {re['after']}; its pages in that "
        f"person's next search: {re['leaked']}; embedding calls: {re['embedding_calls']}."
    )
    return show(
        f"Permission-filtered search at {ROWS:,} chunks",
        ["mode", "permission filter", "queries", "p50 ms", "p99 ms", "recall@10", "worst recall", "short", "vs none"],
        rows,
        note=note,
    )


if __name__ == "__main__":
    if os.environ.get("BENCH_SEARCH_ROWS") is None:
        os.environ["BENCH_SEARCH_ROWS"] = str(ROWS)
    main()
