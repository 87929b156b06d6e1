"""Search quality with a real embedding model: our service against the stock LlamaIndex recipe, same pages, same model.

Set: `bench/quality` (44 pages of an imaginary company's wiki, 92 questions with the answering page, an answer
string, a type and a tune/test split). Model: WordLlama's packaged 256-dimension model behind the Ollama API
(`tests.fakes.wordllama_ollama`), for both sides.

Ours, through the real service path: the pages are served by the fake Confluence, a spawned process runs
`Runtime` + the procrastinate worker (fetch, storage → Markdown, heading-aware chunks, embed, COPY), and the
questions go through `app.search.search` in hybrid and vector mode.

The baseline a LlamaIndex user builds (`llama-index-readers-confluence`'s `ConfluenceReader.process_page`): the
page body through `html2text.HTML2Text().handle(...)` with default options into a `Document(text, doc_id,
extra_info={title, page_id, status, url})`; `SentenceSplitter()` defaults (1,024 tokens, 200 overlap); a stock
`PGVectorStore(hybrid_search=True, text_search_config="english")`; queried (1) in its default (vector) mode,
(2) in its hybrid mode, and (3) through `QueryFusionRetriever` with `relative_score` fusion of the vector and
the text-search retrievers (LlamaIndex's documented hybrid recipe). The reader asks Confluence for
`body.export_view` (rendered HTML); the fake serves storage format only, so `export_view()` below renders
what Confluence would (code macros as `<pre>`, links and Jira/status macros as their text, macro titles as
bold lines) before html2text runs.

Metrics (ranx, a maintained IR evaluation library): page-level hit@1, hit@5, MRR@10, nDCG@10 over the page
ranking (a page ranks where its first chunk does); chunk-level answer@5 = a top-5 chunk contains the answer
string; answer within the first 4,000 characters returned (`BUDGET`, equal reading budget whatever the chunk
size); stability = identical top-10 node ids for every question across a rerun after `ANALYZE`.

    python -m bench.retrieval_quality            # tune sweep, then every system on the test split
    BENCH_QUALITY_SWEEP=0 python -m bench ...     # skip the sweep (defaults only)
"""

from __future__ import annotations

import asyncio
import html
import multiprocessing
import os
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.common import console, fresh_database, machine, postgres, show
from bench.quality import TYPES, Question, contains_answer, load_questions

K = 10
BUDGET = 4000
MODEL = "wordllama-l2-supercat"
DIM = 256
METRICS = ("hit_rate@1", "hit_rate@5", "mrr@10", "ndcg@10")


@dataclass(frozen=True, slots=True)
class Hit:
    node_id: str
    page_id: str
    text: str


Retrieve = Callable[[str], Awaitable[list[Hit]]]


@dataclass
class Scores:
    """One system's figures on one set of questions."""

    overall: dict[str, float]
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)
    rankings: dict[str, list[str]] = field(default_factory=dict)


# --- the baseline's conversion -------------------------------------------------------------------------------
_CODE = re.compile(
    r'<ac:structured-macro ac:name="code">(.*?)<ac:plain-text-body><!\[CDATA\[(.*?)\]\]></ac:plain-text-body>'
    r"</ac:structured-macro>",
    re.DOTALL,
)
_TITLE = re.compile(r'<ac:parameter ac:name="title">(.*?)</ac:parameter>', re.DOTALL)
_JIRA = re.compile(r'<ac:structured-macro ac:name="jira">.*?<ac:parameter ac:name="key">(.*?)</ac:parameter>'
                   r"</ac:structured-macro>", re.DOTALL)
_STATUS = re.compile(r'<ac:structured-macro ac:name="status">.*?<ac:parameter ac:name="title">(.*?)</ac:parameter>'
                     r"</ac:structured-macro>", re.DOTALL)
_LINK = re.compile(r'<ac:link><ri:page ri:content-title="(.*?)" />(?:<ac:plain-text-link-body><!\[CDATA\[(.*?)\]\]>'
                   r"</ac:plain-text-link-body>)?</ac:link>", re.DOTALL)
_PARAM = re.compile(r"<ac:parameter[^>]*>.*?</ac:parameter>", re.DOTALL)
_AC_TAG = re.compile(r"</?ac:[^>]*>|<ri:[^>]*/>")


def export_view(storage: str) -> str:
    """Roughly what Confluence's `body.export_view` is for our storage bodies: rendered HTML, no `ac:` tags."""

    def code(m: re.Match[str]) -> str:
        title = _TITLE.search(m[1])
        head = f"<p><b>{title[1]}</b></p>" if title else ""
        return f"{head}<pre><code>{html.escape(m[2])}</code></pre>"

    out = _CODE.sub(code, storage)
    out = _JIRA.sub(lambda m: f'<a href="https://jira.example/browse/{m[1]}">{m[1]}</a>', out)
    out = _STATUS.sub(lambda m: f"<span>{m[1].upper()}</span>", out)
    out = _LINK.sub(lambda m: f'<a href="/wiki/x">{m[2] or m[1]}</a>', out)
    out = _TITLE.sub(lambda m: f"<p><b>{m[1]}</b></p>", out)
    out = _PARAM.sub("", out)
    return _AC_TAG.sub("", out)


def reader_document(page: Any, base_url: str) -> Any:
    """`ConfluenceReader.process_page` for one page: html2text with default options, its metadata keys."""
    import html2text
    from llama_index.core import Document

    text_maker = html2text.HTML2Text()
    return Document(
        text=text_maker.handle(export_view(page.body)),
        doc_id=page.id,
        extra_info={"title": page.title, "page_id": page.id, "status": "current",
                    "url": f"{base_url}/spaces/{page.space}/pages/{page.id}"},
    )


# --- metrics -----------------------------------------------------------------------------------------------
def page_ranking(hits: Sequence[Hit]) -> list[str]:
    """Pages in the order their first chunk appears."""
    seen: list[str] = []
    for hit in hits:
        if hit.page_id not in seen:
            seen.append(hit.page_id)
    return seen


def budget_text(hits: Sequence[Hit], budget: int = BUDGET) -> str:
    """What a reader (or an LLM prompt) of `budget` characters sees: the chunks in order, cut at the budget."""
    out, used = [], 0
    for hit in hits:
        if used >= budget:
            break
        piece = hit.text[: budget - used]
        out.append(piece)
        used += len(piece)
    return "\n".join(out)


def evaluate(questions: Sequence[Question], results: dict[str, list[Hit]], all_chunks: dict[str, str]) -> Scores:
    """ranx metrics over page rankings and chunk answer hits, overall and per question type.

    `all_chunks` (node id → text) is the system's whole table: a question's relevant chunks are every chunk
    holding its answer string, so answer@5 is ranx's hit rate over those.
    """
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    def scores_for(subset: Sequence[Question]) -> dict[str, float]:
        page_qrels = Qrels({q.id: {q.page: 1} for q in subset})
        page_run = Run({q.id: _ranked(page_ranking(results[q.id])) for q in subset})
        figures = {m: float(v) for m, v in ranx_evaluate(page_qrels, page_run, list(METRICS)).items()}
        chunk_qrels = Qrels({q.id: {n: 1 for n, t in all_chunks.items() if contains_answer(t, q.answer)}
                             or {"-none-": 1} for q in subset})
        chunk_run = Run({q.id: _ranked([h.node_id for h in results[q.id]]) for q in subset})
        figures["answer@5"] = float(ranx_evaluate(chunk_qrels, chunk_run, "hit_rate@5"))
        figures["budget"] = statistics.mean(
            contains_answer(budget_text(results[q.id]), q.answer) for q in subset
        )
        return figures

    scores = Scores(overall=scores_for(questions))
    for kind in TYPES:
        subset = [q for q in questions if q.type == kind]
        if subset:
            scores.by_type[kind] = scores_for(subset)
    scores.rankings = {q.id: [h.node_id for h in results[q.id]] for q in questions}
    return scores


def _ranked(ids: Sequence[str]) -> dict[str, float]:
    """A ranx run entry: strictly decreasing scores so ranx keeps our order (ties would be reordered)."""
    return {node: 1.0 / (rank + 1) for rank, node in enumerate(ids)} or {"-empty-": 0.0}


# --- the set served by a fake Confluence ---------------------------------------------------------------------
def start_confluence() -> Any:
    from bench.quality.pages import PAGES
    from tests.fakes.confluence import FakeConfluence

    fake = FakeConfluence("cloud")
    fake.add_user("acc-1", "Ada Lovelace")
    for pg in PAGES:
        fake.put_page(pg.id, title=pg.title, body=pg.body, space_key=pg.space, labels=pg.labels)
    return fake.start()


# --- ours -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Indexing:
    chunk_size: int = 512
    chunk_overlap: int = 64


def index_ours(url: str, confluence: Any, ollama_url: str, indexing: Indexing) -> float:
    """Index every page through the service (spawned process: procrastinate's app is built once per process)."""
    from bench.quality.pages import PAGES

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return float(pool.apply(_index_child, (url, confluence.base_url, confluence.credentials, ollama_url,
                                                indexing, [pg.id for pg in PAGES])))


def _index_child(url: str, confluence_url: str, credentials: dict[str, str], ollama_url: str, indexing: Indexing,
                 page_ids: list[str]) -> float:
    return asyncio.run(_index(url, confluence_url, credentials, ollama_url, indexing, page_ids))


def service_settings(url: str, confluence_url: str, credentials: dict[str, str], ollama_url: str,
                     indexing: Indexing) -> Any:
    from tests.conftest import make_settings

    return make_settings(
        database_url=url, confluence_base_url=confluence_url, ollama_base_url=ollama_url, embed_model=MODEL,
        embed_dim=DIM, chunk_size=indexing.chunk_size, chunk_overlap=indexing.chunk_overlap, reconcile_interval=0,
        log_level="WARNING", **credentials,
    )


async def _index(url: str, confluence_url: str, credentials: dict[str, str], ollama_url: str, indexing: Indexing,
                 page_ids: list[str]) -> float:
    from app.queue import PageJobRequest, enqueue_pages
    from app.runtime import Runtime
    from app.tasks import run_worker

    settings = service_settings(url, confluence_url, credentials, ollama_url, indexing)
    rt = await Runtime.open(settings)
    started = time.perf_counter()
    try:
        await enqueue_pages(rt.pool, [PageJobRequest(pid, "page", "bench") for pid in page_ids])
        worker = asyncio.create_task(run_worker(rt, name="quality"))
        deadline = time.monotonic() + 600
        while True:
            async with rt.pool.connection() as conn:
                row = await (await conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'indexed'), count(*) FILTER (WHERE status = 'failed') "
                    "FROM cv_pages")).fetchone()
            assert row is not None
            if row[1]:
                raise RuntimeError(f"{row[1]} pages failed to index")
            if row[0] >= len(page_ids):
                break
            if worker.done():
                worker.result()
            if time.monotonic() > deadline:
                raise TimeoutError("indexing did not finish in 10 minutes")
            await asyncio.sleep(0.1)
        seconds = time.perf_counter() - started
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    finally:
        await rt.close()
    return seconds


async def table_chunks(pool: Any, table: str) -> dict[str, str]:
    async with pool.connection() as conn:
        rows = await (await conn.execute(f'SELECT node_id, text FROM "data_{table}"')).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def ours(pool: Any, embedder: Any, mode: str, tuning: Any = None) -> Retrieve:
    from app.search import SearchMode, search

    async def retrieve(query: str) -> list[Hit]:
        kwargs = {"tuning": tuning} if tuning is not None else {}
        hits = await search(pool, embedder, "confluence", query, k=K, mode=SearchMode(mode), **kwargs)
        return [Hit(h.node_id, h.page_id, h.text) for h in hits]

    return retrieve


# --- the LlamaIndex recipe ---------------------------------------------------------------------------------------
def build_baseline(url: str, embed: Any, base_url: str) -> tuple[Any, Any]:
    """Documents → SentenceSplitter() → stock PGVectorStore (hybrid, english) → VectorStoreIndex."""
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.vector_stores.postgres import PGVectorStore

    from app.vector_store import sqlalchemy_urls
    from bench.quality.pages import PAGES

    sync_url, async_url = sqlalchemy_urls(url)
    store = PGVectorStore.from_params(
        connection_string=sync_url, async_connection_string=async_url, table_name="baseline", embed_dim=DIM,
        hybrid_search=True, text_search_config="english",
    )
    documents = [reader_document(pg, base_url) for pg in PAGES]
    nodes = SentenceSplitter().get_nodes_from_documents(documents)
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store),
                             embed_model=embed)
    return index, store


def baseline(index: Any, kind: str) -> Retrieve:
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.retrievers.fusion_retriever import FUSION_MODES
    from llama_index.core.vector_stores.types import VectorStoreQueryMode

    if kind == "default":
        retriever = index.as_retriever(similarity_top_k=K)
    elif kind == "hybrid":
        retriever = index.as_retriever(similarity_top_k=K, sparse_top_k=K,
                                       vector_store_query_mode=VectorStoreQueryMode.HYBRID)
    else:
        retriever = QueryFusionRetriever(
            [index.as_retriever(similarity_top_k=K),
             index.as_retriever(similarity_top_k=K, vector_store_query_mode=VectorStoreQueryMode.TEXT_SEARCH)],
            mode=FUSION_MODES.RELATIVE_SCORE, similarity_top_k=K, num_queries=1, use_async=False,
            llm=MockLLM(),  # num_queries=1: the original query only, no LLM query generation
        )

    async def retrieve(query: str) -> list[Hit]:
        nodes = await asyncio.to_thread(retriever.retrieve, query)
        return [Hit(n.node.node_id, str(n.node.ref_doc_id), n.node.get_content()) for n in nodes[:K]]

    return retrieve


# --- running ----------------------------------------------------------------------------------------------------
async def run_questions(retrieve: Retrieve, questions: Sequence[Question]) -> dict[str, list[Hit]]:
    return {q.id: await retrieve(q.q) for q in questions}


async def analyze(url: str, tables: Sequence[str]) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table in tables:
            await conn.execute(f'ANALYZE "data_{table}"')


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


async def measure(server: str, confluence: Any, ollama_url: str, sweep: bool) -> str:
    from app.db import make_pool
    from app.embeddings import OllamaBgeM3Embedding

    url = fresh_database(server, "b_quality")
    questions = load_questions()
    tune = [q for q in questions if q.split == "tune"]
    test = [q for q in questions if q.split == "test"]
    embedder = OllamaBgeM3Embedding(base_url=ollama_url, model_name=MODEL, dimension=DIM)
    out: list[str] = []

    # The baseline, built once.
    started = time.perf_counter()
    index, store = await asyncio.to_thread(build_baseline, url, embedder, confluence.base_url)
    baseline_seconds = time.perf_counter() - started
    pool = make_pool(url, max_size=2)
    await pool.open()
    try:
        baseline_chunks = await table_chunks(pool, "baseline")
        systems: dict[str, tuple[Retrieve, dict[str, str]]] = {
            f"LlamaIndex {kind}": (baseline(index, kind), baseline_chunks)
            for kind in ("default", "hybrid", "fusion")
        }

        # Ours, with the service's defaults (and, for the sweep, other chunk sizes indexed into fresh tables).
        index_seconds = await asyncio.to_thread(index_ours, url, confluence, ollama_url, Indexing())
        our_chunks = await table_chunks(pool, "confluence")
        systems["ours hybrid"] = (ours(pool, embedder, "hybrid"), our_chunks)
        systems["ours vector"] = (ours(pool, embedder, "vector"), our_chunks)

        if sweep:
            out.append(await tune_sweep(pool, embedder, tune, our_chunks))
            if os.environ.get("BENCH_QUALITY_CHUNKS", "1") != "0":  # five more indexings through the worker
                out.append(await chunk_sweep(server, confluence, ollama_url, embedder, tune))

        first: dict[str, Scores] = {}
        for name, (retrieve, chunks) in systems.items():
            first[name] = evaluate(test, await run_questions(retrieve, test), chunks)
        await analyze(url, ["confluence", "baseline"])
        stable: dict[str, float] = {}
        for name, (retrieve, chunks) in systems.items():
            again = evaluate(test, await run_questions(retrieve, test), chunks)
            same = [first[name].rankings[q.id] == again.rankings[q.id] for q in test]
            stable[name] = sum(same) / len(same)
        tune_scores = {name: evaluate(tune, await run_questions(r, tune), c) for name, (r, c) in systems.items()}
    finally:
        await pool.close()
        await store.close()
        await embedder.aclose()

    columns = ["system", "chunks", *METRICS, "answer@5", f"answer in {BUDGET:,} chars", "same after ANALYZE"]
    rows = []
    for name, scores in first.items():
        n_chunks = len(our_chunks) if name.startswith("ours") else len(baseline_chunks)
        rows.append([name, str(n_chunks), *(_fmt(scores.overall[m]) for m in (*METRICS, "answer@5", "budget")),
                     f"{stable[name]:.2f}"])
    note = (f"{machine()}. Test split: {len(test)} of {len(questions)} questions over 44 pages; model WordLlama "
            f"l2_supercat {DIM}-dim behind the Ollama API for both sides. Indexing ours through the worker "
            f"{index_seconds:.1f} s, the LlamaIndex recipe {baseline_seconds:.1f} s.")
    out.append(show("Retrieval quality on the test split", columns, rows, note=note))

    best = max((n for n in first if n.startswith("LlamaIndex")),
               key=lambda n: (first[n].overall["mrr@10"], first[n].overall["hit_rate@1"]))
    ours_h = first["ours hybrid"].overall
    ratio_rows = []
    for metric in (*METRICS, "answer@5", "budget"):
        b = first[best].overall[metric]
        goal = b + (1 - b) / 2
        ratio_rows.append([metric, _fmt(ours_h[metric]), _fmt(b), _ratio(ours_h[metric], b), _fmt(goal),
                           "yes" if ours_h[metric] >= goal - 1e-9 else "no"])
    out.append(show(f"Ours (hybrid) / best baseline ({best}), test split",
                    ["metric", "ours", "baseline", "ratio", "goal (half the error)", "met"], ratio_rows))

    type_rows = []
    for kind in TYPES:
        o, b = first["ours hybrid"].by_type.get(kind), first[best].by_type.get(kind)
        if not o or not b:
            continue
        n = sum(q.type == kind for q in test)
        type_rows.append([kind, str(n), *(f"{_fmt(o[m])} / {_fmt(b[m])}" for m in ("hit_rate@1", "mrr@10",
                                                                                  "budget"))])
    out.append(show(f"Per question type, test split: ours hybrid / {best}",
                    ["type", "questions", "hit@1", "MRR@10", f"answer in {BUDGET:,} chars"], type_rows))

    tune_rows = [[name, *(_fmt(s.overall[m]) for m in (*METRICS, "answer@5", "budget"))]
                 for name, s in tune_scores.items()]
    out.append(show("The same systems on the tune split (defaults chosen here)",
                    ["system", *METRICS, "answer@5", "budget"], tune_rows))
    return "\n".join(out)


async def tune_sweep(pool: Any, embedder: Any, tune: Sequence[Question], chunks: dict[str, str]) -> str:
    """Fusion method, vector weight and field tie-breaker on the tune split, every candidate over one table."""
    from app.search import DEFAULT_TUNING, Fusion

    candidates = [replace(DEFAULT_TUNING, fusion=Fusion.RELATIVE, vector_weight=w) for w in (0.5, 0.7)]
    candidates += [replace(DEFAULT_TUNING, fusion=Fusion.RRF, vector_weight=w, rrf_k=k)
                   for k in (10, 20, 60) for w in (0.1, 0.2, 0.3, 0.5)]
    candidates += [replace(DEFAULT_TUNING, field_tie=w) for w in (0.0, 0.3, 0.6, 1.0)]
    candidates = list(dict.fromkeys(candidates))  # the default appears once
    rows = []
    for tuning in candidates:
        scores = evaluate(tune, await run_questions(ours(pool, embedder, "hybrid", tuning), tune), chunks)
        fusion = tuning.fusion.value + (f" k={tuning.rrf_k}" if tuning.fusion is Fusion.RRF else "")
        rows.append([fusion, f"{tuning.vector_weight:.1f}", f"{tuning.field_tie:.2f}",
                     *(_fmt(scores.overall[m]) for m in ("hit_rate@1", "mrr@10", "answer@5", "budget")),
                     _fmt(scores.by_type["paraphrase"]["hit_rate@1"]),
                     "default" if tuning == DEFAULT_TUNING else ""])
    out = show("Tune split: fusion, vector weight, field tie-breaker (ours hybrid)",
               ["fusion", "vector weight", "field tie", "hit@1", "MRR@10", "answer@5", "budget",
                "paraphrase hit@1", ""], rows)
    return out + await depth_sweep(pool, embedder, tune, chunks)


async def depth_sweep(pool: Any, embedder: Any, tune: Sequence[Question], chunks: dict[str, str]) -> str:
    """`LEXICAL_FLOOR` and the candidate depth of each ranking (`candidate_count`) on the tune split, the
    default tuning otherwise: module constants of `app.search`, set for the measurement and put back."""
    import app.search as search_module

    default_floor, default_count = search_module.LEXICAL_FLOOR, search_module.candidate_count
    settings: list[tuple[float, int]] = [(f, 50) for f in (0.0, 0.25, 0.5, 0.75)] + [(0.5, 20), (0.5, 100)]
    rows = []
    try:
        for floor, depth in settings:
            search_module.LEXICAL_FLOOR = floor
            search_module.candidate_count = lambda k, depth=depth: max(depth, 5 * k)  # type: ignore[misc]
            scores = evaluate(tune, await run_questions(ours(pool, embedder, "hybrid"), tune), chunks)
            rows.append([f"{floor:.2f}", str(depth),
                         *(_fmt(scores.overall[m]) for m in ("hit_rate@1", "mrr@10", "answer@5", "budget")),
                         _fmt(scores.by_type["paraphrase"]["hit_rate@1"]),
                         "default" if (floor, depth) == (default_floor, default_count(K)) else ""])
    finally:
        search_module.LEXICAL_FLOOR, search_module.candidate_count = default_floor, default_count
    return show("Tune split: lexical floor and candidate depth (ours hybrid, default fusion)",
                ["lexical floor", "candidates per ranking (k=10)", "hit@1", "MRR@10", "answer@5", "budget",
                 "paraphrase hit@1", ""], rows)


async def chunk_sweep(server: str, confluence: Any, ollama_url: str, embedder: Any,
                      tune: Sequence[Question]) -> str:
    """Chunk size and overlap on the tune split: each indexed through the worker into its own database."""
    from app.db import make_pool

    rows = []
    for size, overlap in ((256, 32), (384, 48), (512, 64), (768, 96), (1024, 128)):
        url = fresh_database(server, f"b_quality_{size}")
        await asyncio.to_thread(index_ours, url, confluence, ollama_url, Indexing(size, overlap))
        pool = make_pool(url, max_size=2)
        await pool.open()
        try:
            chunks = await table_chunks(pool, "confluence")
            for mode in ("hybrid", "vector"):
                s = evaluate(tune, await run_questions(ours(pool, embedder, mode), tune), chunks)
                rows.append([str(size), str(overlap), mode, str(len(chunks)),
                             *(_fmt(s.overall[m]) for m in ("hit_rate@1", "mrr@10", "answer@5", "budget")),
                             "default" if (size, overlap) == (Indexing().chunk_size, Indexing().chunk_overlap)
                             else ""])
        finally:
            await pool.close()
    return show("Tune split: chunk size and overlap (tokens), ours",
                ["chunk size", "overlap", "mode", "chunks", "hit@1", "MRR@10", "answer@5", "budget", ""], rows)


def main() -> str:
    import logging

    from tests.fakes.wordllama_ollama import WordLlamaOllama

    logging.getLogger("httpx").setLevel(logging.WARNING)

    sweep = os.environ.get("BENCH_QUALITY_SWEEP", "1") != "0"
    confluence = start_confluence()
    try:
        with WordLlamaOllama() as ollama, postgres() as server:
            return asyncio.run(measure(server, confluence, ollama.base_url, sweep))
    finally:
        confluence.stop()
        console.print("")


if __name__ == "__main__":
    main()
