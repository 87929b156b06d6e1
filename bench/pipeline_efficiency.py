"""Pipeline efficiency: how close end-to-end indexing comes to pure embedding time.

Embedding is the bottleneck of the real system (Ollama on a GPU or CPU), so the question is whether the rest of
the pipeline (queue, fetch, convert, chunk, write) hides behind it. The fake Ollama runs as its own process with
a fixed cost of `PER_INPUT` seconds per input and no per-call cost, computing one request at a time
(`--parallel 1`, a single Ollama replica with OLLAMA_NUM_PARALLEL=1): its busy time, inputs × cost, is the
floor for any pipeline. The fake Confluence also runs as its own process, so neither fake takes the GIL from
the pipeline.

End to end: N pages are enqueued (`app.queue.enqueue_pages`), then a real procrastinate worker
(`app.tasks.run_worker`, WORKER_CONCURRENCY as configured) runs in this process until every page is indexed.
Pure embedding: the same texts (re-chunked from the pages) embedded with `OllamaBgeM3Embedding.aembed_many`
one page at a time. Efficiency = pure / end-to-end (target ≥ 0.9).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import multiprocessing
import os
import pstats
import subprocess
import sys
import time
from typing import Any

from bench.common import Timer, fresh_database, machine, postgres, show

N_PAGES = 150
PER_INPUT = 0.02
SECTIONS, PARAGRAPHS = 3, 8  # ~5 chunks per page at the default chunk size


def _body(i: int) -> str:
    from bench.embedding_economy import page_body

    return page_body(SECTIONS + i % 3, PARAGRAPHS, seed=f"p{i}")


def serve_confluence(n_pages: int, ready: Any, max_limit: int = 25) -> None:
    """Child process: a fake Confluence Cloud with `n_pages` multi-chunk pages in ENG; sends its base URL."""
    from tests.fakes.confluence import FakeConfluence

    fake = FakeConfluence("cloud")
    fake.max_limit = max_limit
    fake.add_space("ENG", "Engineering")
    fake.add_user("acc-1", "Ada Lovelace")
    fake.bulk_pages("ENG", n_pages, _body)
    fake.start()
    ready.put(fake.base_url)
    while True:
        time.sleep(3600)


class Fakes:
    """Fake Confluence (multiprocessing child) and fake Ollama (`python -m tests.fakes.ollama`) processes."""

    def __init__(self, n_pages: int, *, per_input: float, parallel: int | None, max_limit: int = 25) -> None:
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Queue()
        self.confluence = ctx.Process(target=serve_confluence, args=(n_pages, ready, max_limit), daemon=True)
        self.confluence.start()
        args = [sys.executable, "-m", "tests.fakes.ollama", "--per-input-delay", str(per_input)]
        if parallel:
            args += ["--parallel", str(parallel)]
        self.ollama = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.ollama.stdout is not None
        self.ollama_url = self.ollama.stdout.readline().strip()
        self.confluence_url: str = ready.get(timeout=120)

    def credentials(self) -> dict[str, str]:
        return {"confluence_email": "bot@example.com", "confluence_api_token": "cloud-token"}

    def close(self) -> None:
        self.ollama.terminate()
        self.ollama.wait(10)
        self.confluence.terminate()
        self.confluence.join(10)


def page_ids(n: int) -> list[str]:
    """`FakeConfluence.bulk_pages` numbers fresh pages from 100000."""
    return [str(100_000 + i) for i in range(n)]


async def _all_indexed(rt: Any, n: int) -> bool:
    async with rt.pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM cv_pages WHERE status = 'indexed'")).fetchone()
    return bool(row and row[0] >= n)


def run_end_to_end(url: str, fakes: Fakes, n: int, *, concurrency: int, profile: bool = False) -> dict[str, Any]:
    """One end-to-end run in a fresh (spawned) process, which keeps each run's measurements independent."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(
            _end_to_end_child,
            (url, fakes.confluence_url, fakes.ollama_url, fakes.credentials(), n, concurrency, profile),
        )


def _end_to_end_child(
    url: str,
    confluence_url: str,
    ollama_url: str,
    credentials: dict[str, str],
    n: int,
    concurrency: int,
    profile: bool,
) -> dict[str, Any]:
    return asyncio.run(
        end_to_end(url, confluence_url, ollama_url, credentials, n, concurrency=concurrency, profile=profile)
    )


async def end_to_end(
    url: str,
    confluence_url: str,
    ollama_url: str,
    credentials: dict[str, str],
    n: int,
    *,
    concurrency: int,
    profile: bool = False,
) -> dict[str, Any]:
    from app.queue import PageJobRequest, enqueue_pages
    from app.runtime import Runtime
    from app.tasks import run_worker
    from tests.conftest import make_settings

    settings = make_settings(
        database_url=url,
        confluence_base_url=confluence_url,
        ollama_base_url=ollama_url,
        chunk_size=512,
        chunk_overlap=64,
        worker_concurrency=concurrency,
        reconcile_interval=0,
        log_level="WARNING",
        **credentials,
    )
    rt = await Runtime.open(settings)
    try:
        await enqueue_pages(rt.pool, [PageJobRequest(page_id, "page", "bench") for page_id in page_ids(n)])
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        started = time.perf_counter()
        worker = asyncio.create_task(run_worker(rt, name="bench"))
        while not await _all_indexed(rt, n):
            if worker.done():
                worker.result()
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        if profiler:
            profiler.disable()
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        stages = {
            name: rt.metrics.stage_seconds.labels(name)._sum.get()  # type: ignore[attr-defined]
            for name in ("fetch", "embed", "write")
        }
        inputs = rt.embedder.inputs
        prof = ""
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
            prof = out.getvalue()
    finally:
        await rt.close()
    return {"seconds": seconds, "inputs": inputs, "stages": stages, "profile": prof}


async def pure_embedding(url: str, fakes: Fakes, n: int) -> tuple[float, int]:
    """Re-chunk the pages, then time embedding exactly those texts, page by page, with our embedder."""
    from app.chunking import chunk_page, embed_text
    from app.confluence import ConfluenceClient
    from app.convert import storage_to_markdown, user_refs
    from app.embeddings import OllamaBgeM3Embedding
    from tests.conftest import make_settings

    settings = make_settings(
        confluence_base_url=fakes.confluence_url,
        ollama_base_url=fakes.ollama_url,
        chunk_size=512,
        chunk_overlap=64,
        **fakes.credentials(),
    )
    texts: list[list[str]] = []
    async with ConfluenceClient(settings) as client:
        for page_id in page_ids(n):
            page = await client.get_page(page_id, "page")
            users = await client.resolve_users(user_refs(page.body_storage))
            md = storage_to_markdown(page.body_storage, users=users, title=page.title)
            nodes = chunk_page(page, md, chunk_size=512, chunk_overlap=64, max_tokens=settings.embed_max_tokens)
            texts.append([embed_text(node) for node in nodes])
    embedder = OllamaBgeM3Embedding.from_settings(settings)
    with Timer() as t:
        for page_texts in texts:
            await embedder.aembed_many(page_texts)
    await embedder.aclose()
    return t.seconds, sum(len(x) for x in texts)


def main() -> str:
    n = int(os.environ.get("BENCH_PIPELINE_PAGES", N_PAGES))
    rows = []
    notes = []
    fakes = Fakes(n, per_input=PER_INPUT, parallel=1)
    try:
        with postgres() as server:
            pure, inputs = asyncio.run(pure_embedding(server, fakes, n))
            floor = inputs * PER_INPUT
            rows.append(
                ["pure embedding (same texts, page by page)", f"{inputs}", f"{pure:.1f}", f"{floor / pure:.2f}"]
            )
            for concurrency in (1, 2, 4):
                result = run_end_to_end(
                    fresh_database(server, f"b_pipe_{concurrency}"), fakes, n, concurrency=concurrency
                )
                e2e = result["seconds"]
                st = result["stages"]
                rows.append(
                    [
                        f"end to end, worker concurrency {concurrency}",
                        str(result["inputs"]),
                        f"{e2e:.1f}",
                        f"{floor / e2e:.2f}",
                    ]
                )
                notes.append(
                    f"concurrency {concurrency}: summed stage time fetch {st['fetch']:.1f} s, embed "
                    f"{st['embed']:.1f} s, write {st['write']:.1f} s"
                )
    finally:
        fakes.close()
    return show(
        f"Pipeline efficiency: {n} pages, fake Ollama {PER_INPUT * 1000:.0f} ms/input, one request at a time",
        ["run", "inputs", "seconds", "efficiency (inputs × cost / seconds)"],
        rows,
        note=(
            f"{machine()}. Floor = inputs × {PER_INPUT * 1000:.0f} ms = {floor:.1f} s (the fake Ollama's busy "
            "time). End to end = enqueue all, then a real procrastinate worker in process until every page is "
            "indexed (queue, fetch from the fake Confluence process, convert, chunk, embed, write). "
            + "; ".join(notes)
            + ". Target ≥ 0.90."
        ),
    )


if __name__ == "__main__":
    main()
