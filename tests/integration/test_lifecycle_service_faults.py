"""A service fault (the embedding model missing, a proxy's 401, Confluence refusing our token) is not the page's
fault: the page keeps its rows while it lasts and indexes its latest version by itself once the fault is fixed.

Before the fix these faults were plain `PermanentError`s: the first failed job recorded the page `failed`,
deleted its rows and deferred nothing, and reconciliation only re-checks failed pages that still hold rows, so
the page stayed `failed` with no rows for ever. Real Postgres, the fake Confluence and fake Ollama over HTTP,
the real procrastinate worker running the follow-up jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from app.queue import INDEX_PAGE, PAGES_QUEUE, PageJobRequest, enqueue_pages
from app.runtime import Runtime
from app.tasks import runtime_context
from tests.conftest import open_runtime
from tests.e2e.conftest import page_body
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama

PAGE = "9101"
#: More failed jobs than JOB_MAX_ATTEMPTS: a service fault must never exhaust into a final failure.
MAX_ATTEMPTS = 3


@pytest.fixture()
def fakes() -> Iterator[tuple[FakeConfluence, FakeOllama]]:
    with FakeConfluence("cloud") as confluence, FakeOllama() as ollama:
        yield confluence, ollama


@pytest.fixture()
async def rt(db_url: str, fakes: tuple[FakeConfluence, FakeOllama]) -> AsyncIterator[Runtime]:
    confluence, ollama = fakes
    async with open_runtime(
        database_url=db_url,
        confluence_base_url=confluence.base_url,
        ollama_base_url=ollama.base_url,
        job_max_attempts=MAX_ATTEMPTS,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        **confluence.credentials,
    ) as runtime:
        yield runtime


async def _page_jobs(rt: Runtime) -> list[tuple[str, str | None]]:
    """(status, event) of the page's jobs still in the table (successful ones are deleted by the worker)."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status::text, args->>'event' FROM procrastinate_jobs WHERE task_name = %s "
            "AND args->>'page_id' = %s ORDER BY id",
            (INDEX_PAGE, PAGE),
        )
        return [(row[0], row[1]) for row in await cur.fetchall()]


async def _run_due_jobs(rt: Runtime) -> None:
    """Let the follow-up's backoff elapse (it is at most RETRY_MAX_SECONDS = 0.2 s here, moved to now instead
    of waited for) and run the worker until no page job is due."""
    async with rt.pool.connection() as conn:
        await conn.execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE status = 'todo'")
    await rt.queue.run_worker_async(
        queues=[PAGES_QUEUE],
        wait=False,
        install_signal_handlers=False,
        delete_jobs="successful",
        additional_context=runtime_context(rt),
    )


def _model_missing(ollama: FakeOllama, on: bool) -> None:
    """`ollama rm bge-m3` (or a fresh server before `ollama pull`): Ollama answers 404 "model not found"."""
    ollama.models = set() if on else {"bge-m3"}


def _proxy_401(ollama: FakeOllama, on: bool) -> None:
    if on:
        ollama.fail_next(1000, status=401)
    else:
        ollama.reset()


def _confluence_token_expired(confluence: FakeConfluence, on: bool) -> None:
    confluence.api_token = "rotated-token" if on else "cloud-token"


FAULTS: dict[str, tuple[str, Callable[..., None], str]] = {
    "model_missing": ("ollama", _model_missing, "EmbeddingModelMissing"),
    "proxy_401": ("ollama", _proxy_401, "EmbeddingRejected"),
    "confluence_401": ("confluence", _confluence_token_expired, "ConfluenceCredentialsRejected"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_service_fault_keeps_the_rows_and_the_page_recovers_by_itself(
    rt: Runtime, fakes: tuple[FakeConfluence, FakeOllama], fault: str
) -> None:
    confluence, ollama = fakes
    target, toggle, error_name = FAULTS[fault]
    server: Any = ollama if target == "ollama" else confluence

    confluence.put_page(PAGE, title="Runbook", body=page_body(3, 2, seed="v1"), space_key="ENG")
    await enqueue_pages(rt.pool, [PageJobRequest(PAGE, event="page_created")])
    await _run_due_jobs(rt)
    state = await rt.store.page_state(PAGE)
    assert state is not None and state.status == "indexed" and state.version == 1, state
    rows_v1 = await rt.store.count_rows(PAGE)
    assert rows_v1 > 0

    toggle(server, True)
    latest = confluence.put_page(PAGE, title="Runbook", body=page_body(3, 2, seed="v2"), space_key="ENG")
    await enqueue_pages(rt.pool, [PageJobRequest(PAGE, event="page_updated")])
    # More follow-ups than JOB_MAX_ATTEMPTS run while the fault lasts: none may end the page.
    for _ in range(MAX_ATTEMPTS + 2):
        await _run_due_jobs(rt)
        state = await rt.store.page_state(PAGE)
        assert state is not None and state.status != "failed", state
        assert state.last_error is not None and state.last_error.startswith(error_name), state.last_error
        assert await rt.store.count_rows(PAGE) == rows_v1, "a service fault deleted the page's rows"
        assert [status for status, _ in await _page_jobs(rt)] == ["todo"], await _page_jobs(rt)
    assert state.attempts > MAX_ATTEMPTS

    toggle(server, False)  # the operator fixes the service; nobody retries the page by hand
    await _run_due_jobs(rt)
    state = await rt.store.page_state(PAGE)
    assert state is not None and state.status == "indexed" and state.version == latest, state
    assert state.attempts == 0 and state.last_error is None, state
    assert await rt.store.count_rows(PAGE) > 0
    assert await _page_jobs(rt) == []


async def test_page_level_permanent_failure_still_ends_the_page(
    rt: Runtime, fakes: tuple[FakeConfluence, FakeOllama]
) -> None:
    """A 403 for this page alone (it became forbidden to us) stays final: rows deleted, page `failed`, no
    follow-up; only service faults changed."""
    confluence, _ = fakes
    confluence.put_page(PAGE, title="Runbook", body=page_body(2, 2, seed="v1"), space_key="ENG")
    await enqueue_pages(rt.pool, [PageJobRequest(PAGE, event="page_created")])
    await _run_due_jobs(rt)
    assert await rt.store.count_rows(PAGE) > 0

    confluence.fail_next(1000, status=403, path_contains=PAGE)
    await enqueue_pages(rt.pool, [PageJobRequest(PAGE, event="page_updated")])
    await _run_due_jobs(rt)
    state = await rt.store.page_state(PAGE)
    assert state is not None and state.status == "failed" and state.last_error is not None, state
    assert state.last_error.startswith("ConfluenceAuthError"), state.last_error
    assert await rt.store.count_rows(PAGE) == 0
    assert [status for status, _ in await _page_jobs(rt)] == ["failed"]
