"""Issue 12 break attempt on the MCP tools: a refusal of a page the person may not read must be word for word
the refusal of a page that does not exist (by id, by URL, with a section or a cursor, through the resource),
and a page another person's read put in the rebuilt-page cache must not be served from it.

Uses the access world of `test_mcp_access` (bob may read HR page 102 only; OPS pages 101 and LONG_ID are not
his) with the real tools through the SDK's in-process client."""

from __future__ import annotations

from typing import Any

from mcp import Client
from mcp.types import TextContent

from app.mcp_server import build_server
from tests.e2e.test_mcp import LONG_ID
from tests.integration.test_mcp_access import _Runtime, rt  # noqa: F401  (the fixture)

MISSING = "999999999"


def _refusal(text: str, reference: str) -> str:
    """The refusal with the reference it echoes taken out (that is the caller's own input)."""
    return text.replace(repr(reference), "<ref>").replace(reference, "<ref>")


async def _call(runtime: _Runtime, person: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    async with Client(build_server(lambda: runtime, default_person=person)) as client:  # type: ignore[arg-type, return-value]
        result = await client.call_tool("get_page", arguments)
    content = result.content[0]
    assert isinstance(content, TextContent)
    return result.is_error, content.text


async def test_refusals_of_unreadable_and_missing_pages_are_identical(rt: _Runtime) -> None:  # noqa: F811
    def url(page_id: str) -> str:
        return f"https://wiki.example.com/wiki/spaces/OPS/pages/{page_id}/Anything"

    assert (await _call(rt, "alice", {"page": "101", "max_chars": 500}))[0] is False  # alice's read fills the cache
    cases = [
        ({"page": "101"}, {"page": MISSING}),
        ({"page": url("101")}, {"page": url(MISSING)}),
        ({"page": LONG_ID, "section": "Connect"}, {"page": MISSING, "section": "Connect"}),
        ({"page": LONG_ID, "cursor": "500"}, {"page": MISSING, "cursor": "500"}),
        ({"page": "101", "cursor": "junk"}, {"page": MISSING, "cursor": "junk"}),
    ]
    for unreadable, missing in cases:
        refused, text = await _call(rt, "bob", {**unreadable, "max_chars": 500})
        gone, missing_text = await _call(rt, "bob", {**missing, "max_chars": 500})
        assert refused and gone, (unreadable, text)
        assert _refusal(text, str(unreadable["page"])) == _refusal(missing_text, str(missing["page"])), unreadable


async def test_resource_refuses_unreadable_page_as_missing(rt: _Runtime) -> None:  # noqa: F811
    async with Client(build_server(lambda: rt, default_person="bob")) as client:  # type: ignore[arg-type, return-value]
        texts = []
        for page_id in ("101", MISSING):
            try:
                await client.read_resource(f"confluence://page/{page_id}")
            except Exception as exc:  # the SDK raises the server's resource error to the client
                texts.append(_refusal(str(exc), page_id))
            else:
                texts.append("read")
        assert texts[0] != "read" and texts[0] == texts[1], texts
