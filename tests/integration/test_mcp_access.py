"""The MCP tools answer as the caller's person: nothing they may not read shows in any tool (issue 13,
"Permission-aware"), with access data in the tables `cv_may_read` reads (app/sql/schema.sql, issue 12).

The person -> principal set step (`app.viewer`, which asks Confluence) is replaced by a table here; the rule,
the SQL and the tools are the real ones, driven through the SDK's in-process client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from mcp import Client

from app import mcp_server
from app.config import Settings
from app.mcp_server import build_server, caller_person
from tests.conftest import make_settings
from tests.e2e.test_mcp import CHUNK_OVERLAP, CHUNK_SIZE, LONG_ID, _data, _index
from tests.fakes import ollama

PEOPLE = {
    "alice": frozenset({"user:alice", "group:ops", "anyone"}),  # OPS and HR
    "bob": frozenset({"user:bob", "anyone"}),  # HR only
}


@dataclass
class _Runtime:
    pool: Any
    settings: Settings
    embedder: Any
    search_db: Any = None

    def __post_init__(self) -> None:
        from app.replica import SearchDatabase

        self.search_db = SearchDatabase(self.pool, None, max_lag=self.settings.search_replica_max_lag)


class _Embedder:
    async def aget_query_embedding(self, query: str) -> list[float]:
        return ollama.embed_text(query)


@pytest.fixture()
async def rt(pool: Any, monkeypatch: pytest.MonkeyPatch) -> _Runtime:
    await _index(pool)
    async with pool.connection() as conn:
        await conn.execute(
            """INSERT INTO cv_space_access (space_key, principals) VALUES ('OPS', '{group:ops}'), ('HR', '{anyone}')"""
        )
        for page_id, space in (("101", "OPS"), (LONG_ID, "OPS"), ("102", "HR")):
            await conn.execute(
                "INSERT INTO cv_page_access (page_id, space_key, path) VALUES (%s, %s, %s)", (page_id, space, [page_id])
            )
            await conn.execute(  # answers the denying placeholder the path's write created (schema trigger)
                "UPDATE cv_restrictions SET restricted = false, checked_at = now() WHERE content_id = %s", (page_id,)
            )

    async def principals(_rt: Any, person: str | None) -> frozenset[str] | None:
        if person is None:
            raise mcp_server.ConfluenceVectorsError("name the person this search is for")
        return PEOPLE[person]

    monkeypatch.setattr(mcp_server, "viewer_principals", principals)
    settings = make_settings(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
    return _Runtime(pool=pool, settings=settings, embedder=_Embedder())


async def _seen(rt: _Runtime, person: str) -> dict[str, Any]:
    async with Client(build_server(lambda: rt, default_person=person)) as client:  # type: ignore[arg-type, return-value]
        found = _data(await client.call_tool("search", {"query": "vpn client ERR-4711 parental leave weeks", "k": 20}))
        spaces = _data(await client.call_tool("list_spaces", {}))
        recent = _data(await client.call_tool("recent_changes", {"since": "90d"}))
        pages = {}
        for page_id in ("101", "102", LONG_ID):
            result = await client.call_tool("get_page", {"page": page_id, "max_chars": 500})
            pages[page_id] = "refused" if result.is_error else "read"
            if result.is_error:
                assert "not in the index, or not readable by you" in result.content[0].text
        return {
            "search": {p["page_id"] for p in found["passages"]},
            "spaces": {(s["space_key"], s["pages"]) for s in spaces},
            "recent": {c["page_id"] for c in recent["changes"]},
            "pages": pages,
        }


async def test_tools_show_only_what_the_person_may_read(rt: _Runtime) -> None:
    bob = await _seen(rt, "bob")
    assert bob == {
        "search": {"102"},
        "spaces": {("HR", 1)},
        "recent": {"102"},
        "pages": {"101": "refused", "102": "read", LONG_ID: "refused"},
    }
    alice = await _seen(rt, "alice")
    assert alice["search"] >= {"101", "102"} and alice["spaces"] == {("HR", 1), ("OPS", 2)}
    assert alice["pages"] == {"101": "read", "102": "read", LONG_ID: "read"}


async def test_no_person_is_a_tool_error(rt: _Runtime) -> None:
    async with Client(build_server(lambda: rt)) as client:  # type: ignore[arg-type, return-value]
        for name, arguments in (("search", {"query": "vpn"}), ("get_page", {"page": "102"}), ("list_spaces", {})):
            result = await client.call_tool(name, arguments)
            assert result.is_error and "name the person" in result.content[0].text, name


def test_person_comes_from_the_header_else_the_default() -> None:
    @dataclass
    class _Ctx:
        headers: dict[str, str] | None

    assert caller_person(_Ctx({"x-confluence-user": " carol "}), "dave") == "carol"  # type: ignore[arg-type]
    assert caller_person(_Ctx({"x-confluence-user": "  "}), "dave") == "dave"  # type: ignore[arg-type]
    assert caller_person(_Ctx(None), None) is None  # type: ignore[arg-type]
