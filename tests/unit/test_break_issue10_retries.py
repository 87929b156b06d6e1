"""Issue 10 fault injection: the tenacity retry loops of the Confluence client and the embedder, over real HTTP.

What the conversion to tenacity must keep: a `Retry-After` honoured and capped (whatever shape the header
takes: delta-seconds, a huge number, an HTTP-date in the past, junk), ConfluenceUnavailable (never tenacity's
RetryError) when the retries run out, no retry of a 4xx other than 429, and the embedder stopping at once on
a 4xx. Every wait goes through a recording sleep, so nothing here really sleeps.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import tenacity

from app.confluence import ConfluenceClient
from app.embeddings import OllamaBgeM3Embedding
from app.errors import (
    ConfluenceAuthError,
    ConfluenceProtocolError,
    ConfluenceUnavailable,
    EmbeddingError,
    EmbeddingUnavailable,
    PageNotFound,
    RetryableError,
)
from app.queue import plan_retry
from tests import conftest
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama


class RecordingSleep:
    """Stands in for asyncio.sleep: remembers each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def client_for(base_url: str, deployment: str, credentials: dict[str, Any], sleep: RecordingSleep) -> ConfluenceClient:
    settings = conftest.make_settings(
        confluence_base_url=base_url,
        confluence_deployment=deployment,
        confluence_timeout=5.0,
        confluence_max_retries=3,
        confluence_max_backoff=30.0,
        **credentials,
    )
    return ConfluenceClient(settings, sleep=sleep)


@pytest.fixture(params=["cloud", "datacenter"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeConfluence]:
    with FakeConfluence(request.param) as server:
        server.add_space("ENG", "Engineering")
        server.put_page("100", title="Home", body="<p>hello</p>")
        yield server


# --- Confluence: which statuses are retried -----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 405, 409, 410, 413, 422])
async def test_a_4xx_other_than_429_is_not_retried(fake: FakeConfluence, status: int) -> None:
    sleep = RecordingSleep()
    fake.fail_next(5, status=status, path_contains="/100")
    async with client_for(fake.base_url, fake.deployment, fake.credentials, sleep) as client:
        with pytest.raises(ConfluenceProtocolError):
            await client.get_page("100")
    assert sleep.waits == [] and fake.count() == 1


@pytest.mark.parametrize(("status", "error"), [(403, ConfluenceAuthError), (404, PageNotFound)])
async def test_forbidden_and_missing_are_not_retried(fake: FakeConfluence, status: int, error: type[Exception]) -> None:
    sleep = RecordingSleep()
    fake.fail_next(5, status=status, path_contains="/100")
    async with client_for(fake.base_url, fake.deployment, fake.credentials, sleep) as client:
        with pytest.raises(error):
            await client.get_page("100", "page")  # the type given: an unknown one would also ask for a blog post
    assert sleep.waits == [] and fake.count() == 1


async def test_a_retry_after_of_a_billion_seconds_goes_to_the_queue_capped(fake: FakeConfluence) -> None:
    """Not slept through, not a RetryError, one request only; the queue's follow-up waits at most
    RETRY_MAX_SECONDS, never 31 years."""
    sleep = RecordingSleep()
    fake.fail_next(1, status=429, retry_after=1e9, path_contains="/100")
    async with client_for(fake.base_url, fake.deployment, fake.credentials, sleep) as client:
        with pytest.raises(ConfluenceUnavailable) as caught:
            await client.get_page("100")
    assert not isinstance(caught.value, tenacity.RetryError)
    assert caught.value.retry_after == 1e9 and sleep.waits == [] and fake.count() == 1
    settings = conftest.make_settings(retry_max_seconds=900.0)
    delay = plan_retry(caught.value, attempts=1, settings=settings)
    assert delay is not None and 0 < delay <= 900.0


async def test_a_5xx_storm_ends_in_unavailable_after_exactly_the_configured_retries(fake: FakeConfluence) -> None:
    sleep = RecordingSleep()
    fake.fail_next(50, status=502, path_contains="/100")
    async with client_for(fake.base_url, fake.deployment, fake.credentials, sleep) as client:
        with pytest.raises(ConfluenceUnavailable) as caught:
            await client.get_page("100")
    assert type(caught.value) is ConfluenceUnavailable and "after 4 attempts" in str(caught.value)
    assert fake.count() == 4 and len(sleep.waits) == 3
    assert all(0 <= w <= 30.0 for w in sleep.waits)


async def test_a_5xx_storm_on_a_download_ends_in_unavailable(fake: FakeConfluence) -> None:
    sleep = RecordingSleep()
    fake.fail_next(50, status=503, retry_after=2, path_contains="/download/")
    async with client_for(fake.base_url, fake.deployment, fake.credentials, sleep) as client:
        with pytest.raises(ConfluenceUnavailable) as caught:
            await client.download(fake.base_url + "/download/attachments/100/a.pdf", 1_000)
    assert caught.value.retry_after == 2.0 and sleep.waits == [2.0, 2.0, 2.0] and fake.count() == 4


# --- Confluence: Retry-After headers of every shape, from a server that sends exactly what it is told -------


class _RateLimited(BaseHTTPRequestHandler):
    """Answers every GET 429 with the class's `retry_after` header verbatim (an HTTP-date, junk...)."""

    retry_after = ""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b'{"message": "rate limited"}'
        self.send_response(429)
        self.send_header("Retry-After", self.retry_after)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture()
def rate_limited() -> Iterator[tuple[str, type[_RateLimited]]]:
    handler = type("Handler", (_RateLimited,), {"hits": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("header", "expected_wait"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # an HTTP-date in the past: retry now (RFC 9110 10.2.3)
        ("0", 0.0),
        ("-5", 0.0),
        ("nan", 0.0),
        ("12", 12.0),
    ],
)
async def test_retry_after_shapes_give_finite_waits_within_the_cap(
    rate_limited: tuple[str, type[_RateLimited]], header: str, expected_wait: float
) -> None:
    url, handler = rate_limited
    handler.retry_after = header
    sleep = RecordingSleep()
    creds = {"confluence_email": "a@b.c", "confluence_api_token": "t"}
    async with client_for(url, "cloud", creds, sleep) as client:
        with pytest.raises(ConfluenceUnavailable) as caught:
            await client.get_json("v2", "/pages/1")
    assert handler.hits == 4 and sleep.waits == [expected_wait] * 3
    assert caught.value.retry_after == expected_wait


@pytest.mark.parametrize("header", ["inf", "1e400", "99999999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_retry_after_beyond_any_cap_is_left_to_the_queue_which_caps_it(
    rate_limited: tuple[str, type[_RateLimited]], header: str
) -> None:
    url, handler = rate_limited
    handler.retry_after = header
    sleep = RecordingSleep()
    creds = {"confluence_email": "a@b.c", "confluence_api_token": "t"}
    async with client_for(url, "cloud", creds, sleep) as client:
        with pytest.raises(ConfluenceUnavailable) as caught:
            await client.get_json("v2", "/pages/1")
    assert handler.hits == 1 and sleep.waits == []
    delay = plan_retry(caught.value, attempts=1, settings=conftest.make_settings(retry_max_seconds=60.0))
    assert delay is not None and math.isfinite(delay) and 0 < delay <= 60.0


@pytest.mark.parametrize("header", ["soon", "", "Wed, 99 Foo 2015 07:28:00 GMT"])
async def test_an_unreadable_retry_after_falls_back_to_jittered_backoff(
    rate_limited: tuple[str, type[_RateLimited]], header: str
) -> None:
    url, handler = rate_limited
    handler.retry_after = header
    sleep = RecordingSleep()
    creds = {"confluence_email": "a@b.c", "confluence_api_token": "t"}
    async with client_for(url, "cloud", creds, sleep) as client:
        with pytest.raises(ConfluenceUnavailable) as caught:
            await client.get_json("v2", "/pages/1")
    assert handler.hits == 4 and len(sleep.waits) == 3 and all(0 <= w <= 30.0 for w in sleep.waits)
    assert caught.value.retry_after is None


# --- the embedder ------------------------------------------------------------------------------------------


@pytest.fixture()
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


def embedder_for(ollama: FakeOllama) -> OllamaBgeM3Embedding:
    return OllamaBgeM3Embedding.from_settings(
        conftest.make_settings(ollama_base_url=ollama.base_url), backoff_base=0.001, backoff_cap=0.01
    )


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
async def test_the_embedder_does_not_retry_a_4xx(ollama: FakeOllama, status: int) -> None:
    ollama.fail_next(5, status=status)
    embedder = embedder_for(ollama)
    try:
        with pytest.raises(EmbeddingError) as caught:
            await embedder.aembed_many(["hello"])
    finally:
        await embedder.aclose()
    assert not isinstance(caught.value, EmbeddingUnavailable | RetryableError)
    assert ollama.calls == 1


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
def test_the_sync_embedder_does_not_retry_a_4xx(ollama: FakeOllama, status: int) -> None:
    ollama.fail_next(5, status=status)
    embedder = embedder_for(ollama)
    try:
        with pytest.raises(EmbeddingError) as caught:
            embedder.embed_many(["hello"])
    finally:
        embedder.close()
    assert not isinstance(caught.value, EmbeddingUnavailable | RetryableError)
    assert ollama.calls == 1


async def test_the_embedder_gives_up_a_5xx_storm_with_its_own_error_not_retry_error(ollama: FakeOllama) -> None:
    ollama.fail_next(50, status=503)
    embedder = embedder_for(ollama)
    try:
        with pytest.raises(EmbeddingUnavailable):
            await embedder.aembed_many(["hello"])
    finally:
        await embedder.aclose()
    assert ollama.calls == embedder.max_retries + 1
