"""Trying to break issue 11's byte cap on attachment downloads (`ConfluenceClient.download`) over real HTTP:
a body with no `Content-Length` (chunked), and a small gzip-encoded body that inflates far past the cap.
The cap must stop each early, with memory near the cap and the transfer cut short."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.confluence import ConfluenceClient, DownloadTooLarge, DownloadUndecodable
from tests import conftest

CAP = 1024 * 1024
PIECE = 64 * 1024


@dataclass
class HostileFiles:
    """A server of hostile downloads on 127.0.0.1."""

    url: str = ""
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


def _app() -> Starlette:
    async def chunked(_: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(50 * CAP // PIECE):  # 50 MiB offered, never a Content-Length
                yield b"a" * PIECE

        return StreamingResponse(body(), media_type="application/pdf")

    bomb = gzip.compress(b"\0" * (200 * CAP), compresslevel=9)  # ~200 KiB on the wire, 200 MiB inflated
    small = b"%PDF-1.7 small and honest"

    async def gzipped(_: Request) -> Response:
        return Response(bomb, media_type="application/pdf", headers={"Content-Encoding": "gzip"})

    async def gzipped_small(_: Request) -> Response:
        return Response(gzip.compress(small), media_type="application/pdf", headers={"Content-Encoding": "gzip"})

    async def brotli(_: Request) -> Response:
        return Response(b"\x0b\x02\x80", media_type="application/pdf", headers={"Content-Encoding": "br"})

    async def corrupt(_: Request) -> Response:
        return Response(b"\x1f\x8bnot gzip at all", media_type="application/pdf", headers={"Content-Encoding": "gzip"})

    return Starlette(
        routes=[
            Route("/download/chunked", chunked),
            Route("/download/bomb", gzipped),
            Route("/download/small", gzipped_small),
            Route("/download/br", brotli),
            Route("/download/corrupt", corrupt),
        ]
    )


@pytest.fixture()
def hostile() -> Iterator[HostileFiles]:
    state = HostileFiles()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    state.server = uvicorn.Server(uvicorn.Config(_app(), log_level="warning", lifespan="off"))
    state.thread = threading.Thread(target=state.server.run, kwargs={"sockets": [sock]}, daemon=True)
    state.thread.start()
    deadline = time.monotonic() + 10
    while not state.server.started:
        assert time.monotonic() < deadline, "hostile server did not start"
        time.sleep(0.01)
    yield state
    state.server.should_exit = True
    state.thread.join(timeout=10)


def client(base_url: str) -> ConfluenceClient:
    settings = conftest.make_settings(
        confluence_base_url=base_url, confluence_deployment="datacenter", confluence_pat="pat", confluence_timeout=5.0
    )
    return ConfluenceClient(settings)


async def _download(base_url: str, path: str) -> tuple[DownloadTooLarge | None, int]:
    """(the error raised, the peak of Python allocations during the download in bytes)."""
    tracemalloc.start()
    try:
        async with client(base_url) as confluence:
            try:
                await confluence.download(base_url + path, CAP)
            except DownloadTooLarge as exc:
                return exc, tracemalloc.get_traced_memory()[1]
        return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_chunked_body_without_content_length_is_cut_at_the_cap(hostile: HostileFiles) -> None:
    error, peak = asyncio.run(_download(hostile.url, "/download/chunked"))
    assert error is not None and error.limit == CAP, error
    assert peak < 8 * CAP, f"peak {peak} bytes for a {CAP}-byte cap"


def test_a_gzip_bomb_is_cut_at_the_cap_with_memory_near_it(hostile: HostileFiles) -> None:
    """The cap counts decoded bytes (httpx inflates `Content-Encoding: gzip`), so the bomb is refused, but the
    memory must stay near the cap: a hostile server, or a proxy in front of Confluence, chooses the encoding."""
    error, peak = asyncio.run(_download(hostile.url, "/download/bomb"))
    assert error is not None and error.limit == CAP, error
    assert peak < 8 * CAP, f"peak {peak / CAP:.0f} MiB of allocations for a 1 MiB cap"


def test_a_gzip_encoded_file_within_the_cap_arrives_inflated(hostile: HostileFiles) -> None:
    async def run() -> bytes:
        async with client(hostile.url) as confluence:
            return await confluence.download(hostile.url + "/download/small", CAP)

    assert asyncio.run(run()) == b"%PDF-1.7 small and honest"


@pytest.mark.parametrize("path", ["/download/br", "/download/corrupt"])
def test_an_undecodable_encoding_is_refused_as_such(hostile: HostileFiles, path: str) -> None:
    """Skipped as corrupt by the attachment pipeline (app/attachments/index.py), never a page failure."""

    async def run() -> bytes:
        async with client(hostile.url) as confluence:
            return await confluence.download(hostile.url + path, CAP)

    with pytest.raises(DownloadUndecodable):
        asyncio.run(run())
