"""The MCP server over the real protocol, driven by the SDK's own client: stdio (`confluence-vectors mcp` as a
subprocess) and streamable HTTP (`/mcp` of a running API, behind the API token), on real Postgres with pages
written by the real write path and a query embedder served by the fake Ollama over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from app.api import create_app
from app.chunking import chunk_page, embed_text
from app.models import Page
from app.page_text import Chunk, assemble
from app.vector_store import VectorStore, metadata_hash
from tests.conftest import make_settings
from tests.e2e.harness import cli_path, free_port
from tests.fakes import ollama
from tests.unit.test_page_text import runbook

API_TOKEN = "mcp-test-token-0123456789"
CHUNK_SIZE, CHUNK_OVERLAP = 128, 32
LONG_ID = "4242"
TOOLS = {"search", "get_page", "list_spaces", "recent_changes"}


def _page(page_id: str, space: str, title: str, days_ago: int) -> Page:
    return Page(
        id=page_id,
        title=title,
        space_key=space,
        version=2,
        last_modified=datetime.now(UTC) - timedelta(days=days_ago),
        url=f"https://wiki.example.com/wiki/spaces/{space}/pages/{page_id}/{title.replace(' ', '+')}",
        body_storage="",
        space_name=f"{space} team",
        labels=("runbook",) if page_id == LONG_ID else (),
    )


PAGES = [
    (_page("101", "OPS", "VPN access", 1), "# Connect\n\nInstall the client, then sign in with ERR-4711 in mind."),
    (_page("102", "HR", "Parental leave", 30), "# Policy\n\nParental leave is sixteen weeks, paid in full."),
    (_page(LONG_ID, "OPS", "Big runbook", 2), runbook(7, sections=30)),
]


async def _index(pool: Any) -> None:
    """Write the pages through `VectorStore.replace_page`, embedded as the fake Ollama would embed them."""
    store = VectorStore(pool, "confluence")
    for page, markdown in PAGES:
        nodes = chunk_page(page, markdown, chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP, max_tokens=8192)
        vectors = {n.node_id: ollama.embed_text(embed_text(n)) for n in nodes}
        assert (await store.replace_page(page, nodes, vectors, page_meta_hash=metadata_hash({"v": 1}))).written


def _long_page_text() -> str:
    page, markdown = PAGES[2]
    nodes = chunk_page(page, markdown, chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP, max_tokens=8192)
    return assemble([Chunk(n.text, n.metadata["header_path"]) for n in nodes], overlap=True).text


@pytest.fixture()
async def indexed(pool: Any, db_url: str) -> AsyncIterator[tuple[str, str]]:
    await _index(pool)
    with ollama.FakeOllama() as fake:
        yield db_url, fake.base_url


def _data(result: Any) -> Any:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        content = result.structured_content
        return content.get("result", content) if set(content) == {"result"} else content
    return json.loads(result.content[0].text)


async def _exercise(session: ClientSession) -> None:
    """What every transport must do: tools with schemas, each tool, budgets, paging, errors, the resource."""
    await session.initialize()
    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40, tool.name
        assert tool.input_schema["type"] == "object" and tool.output_schema is not None, tool.name
    search_props = tools["search"].input_schema["properties"]
    assert tools["search"].input_schema["required"] == ["query"]
    assert {"query", "spaces", "label", "k", "mode", "max_chars"} <= set(search_props)
    assert "ctx" not in search_props
    assert tools["get_page"].input_schema["required"] == ["page"]

    found = _data(await session.call_tool("search", {"query": "ERR-4711 vpn client", "k": 3}))
    assert found["passages"][0]["page_id"] == "101"
    first = found["passages"][0]
    assert first["url"].endswith("/pages/101/VPN+access") and first["section"] == "Connect" and first["version"] == 2
    only_hr = _data(await session.call_tool("search", {"query": "leave weeks", "spaces": ["HR"]}))
    assert {p["space_key"] for p in only_hr["passages"]} == {"HR"}
    budget = _data(await session.call_tool("search", {"query": "restore database backup", "k": 20, "max_chars": 600}))
    assert sum(len(p["text"]) for p in budget["passages"]) <= 602 and budget["truncated"] and budget["omitted"] > 0

    expected = _long_page_text()
    assert len(expected) > 20_000
    pieces, cursor, calls = [], None, 0
    while True:
        args: dict[str, Any] = {"page": f"https://wiki.example.com/wiki/spaces/OPS/pages/{LONG_ID}/Big+runbook"}
        args |= {"max_chars": 4000} | ({"cursor": cursor} if cursor else {})
        piece = _data(await session.call_tool("get_page", args))
        assert len(piece["text"]) <= 4000 and piece["total_chars"] == len(expected)
        assert bool(piece["outline"]) == (cursor is None)
        assert piece["sections_total"] == 30 and len(piece["outline"]) == (30 if cursor is None else 0)
        pieces.append(piece["text"])
        calls += 1
        cursor = piece["next_cursor"]
        if cursor is None:
            break
    assert "".join(pieces) == expected and calls >= 5
    section = _data(await session.call_tool("get_page", {"page": LONG_ID, "section": "Section 0"}))
    heading = section["text"].splitlines()[0]
    assert section["section"] == "Section 0" and heading.lstrip("#") == " Section 0", heading
    assert expected.startswith(section["text"]) or section["next_cursor"] is not None

    spaces = _data(await session.call_tool("list_spaces", {}))
    assert [(s["space_key"], s["pages"], s["name"]) for s in spaces] == [("HR", 1, "HR team"), ("OPS", 2, "OPS team")]
    recent = _data(await session.call_tool("recent_changes", {"since": "7d"}))
    assert [c["page_id"] for c in recent["changes"]] == ["101", LONG_ID]

    resource = await session.read_resource(f"confluence://page/{LONG_ID}")
    assert resource.contents[0].text == expected

    # Bad arguments: a clear tool error, and the server answers the next call.
    for name, arguments, says in [
        ("search", {"query": "x", "k": 1000}, "k"),
        ("search", {}, "query"),
        ("get_page", {"page": "999999"}, "not in the index"),
        ("get_page", {"page": LONG_ID, "cursor": "abc"}, "invalid cursor"),
        ("get_page", {"page": LONG_ID, "cursor": "99999999"}, "outside"),
        ("get_page", {"page": LONG_ID, "section": "No such"}, "no section"),
        ("recent_changes", {"since": "last tuesday"}, "ISO 8601"),
        ("no_such_tool", {}, "no_such_tool"),
    ]:
        result = await session.call_tool(name, arguments)
        assert result.is_error, (name, arguments)
        assert says in result.content[0].text, (name, result.content[0].text)
    assert _data(await session.call_tool("search", {"query": "parental leave"}))["passages"][0]["page_id"] == "102"


def _env(db_url: str, ollama_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db_url,
        "OLLAMA_BASE_URL": ollama_url,
        "CONFLUENCE_BASE_URL": "http://127.0.0.1:9/wiki",
        "CHUNK_SIZE": str(CHUNK_SIZE),
        "CHUNK_OVERLAP": str(CHUNK_OVERLAP),
        "LOG_FORMAT": "text",
        "RECONCILE_INTERVAL": "0",
        "SEARCH_SERVICE_IDENTITY": "service-account",  # the operator's explicit unfiltered view (issue 12)
    }


async def test_stdio_transport(indexed: tuple[str, str], tmp_path: Path) -> None:
    db_url, ollama_url = indexed
    params = StdioServerParameters(command=cli_path(), args=["mcp"], env=_env(db_url, ollama_url), cwd=tmp_path)
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await _exercise(session)


@contextlib.asynccontextmanager
async def _running_api(db_url: str, ollama_url: str) -> AsyncIterator[str]:
    settings = make_settings(
        database_url=db_url,
        ollama_base_url=ollama_url,
        api_token=API_TOKEN,
        chunk_size=CHUNK_SIZE,
        chunk_overlap=CHUNK_OVERLAP,
        reconcile_interval=0,
        search_service_identity="service-account",
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, worker=False), host="127.0.0.1", port=port, log_config=None)
    )
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 60
    while not server.started:
        assert not task.done() and asyncio.get_running_loop().time() < deadline, "the API did not start"
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_http_transport_behind_the_api_token(indexed: tuple[str, str]) -> None:
    db_url, ollama_url = indexed
    async with _running_api(db_url, ollama_url) as base:
        url = f"{base}/mcp"
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        headers = {"Accept": "application/json, text/event-stream"}
        async with httpx.AsyncClient() as raw:
            refused = await raw.post(url, json=initialize, headers=headers)
            assert refused.status_code == 401 and "bearer" in refused.headers["www-authenticate"].lower()
            wrong = await raw.post(url, json=initialize, headers=headers | {"Authorization": "Bearer wrong"})
            assert wrong.status_code == 401 and API_TOKEN not in wrong.text
            # Behind a reverse proxy the Host is the public name: with the token, that is no reason to refuse.
            proxied = headers | {"Authorization": f"Bearer {API_TOKEN}", "Host": "vectors.example.com"}
            answered = await raw.post(url, json=initialize, headers=proxied)
            assert (
                answered.status_code == 200 and answered.json()["result"]["serverInfo"]["name"] == "confluence-vectors"
            )

        with pytest.raises(BaseException) as refusal:  # the SDK wraps transport errors in groups
            async with (
                httpx2.AsyncClient() as anonymous,
                streamable_http_client(url, http_client=anonymous) as (read, write),
                ClientSession(read, write) as session,
            ):
                await asyncio.wait_for(session.initialize(), 30)
        assert "MCPError" in repr(refusal.value), repr(refusal.value)  # the SDK's error for the 401 answer

        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with (
            httpx2.AsyncClient(headers=auth, timeout=60) as client,
            streamable_http_client(url, http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await _exercise(session)
