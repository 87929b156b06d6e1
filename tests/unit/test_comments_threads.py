"""Comment threads against the fake Confluence over real HTTP (issue 11 gaps): Cloud replies come from
`/{footer|inline}-comments/{id}/children`, cursor-paginated, nested; a reply follows its thread (resolved
inline threads stay out, the anchored passage is carried); and a comment named alone (a webhook without its
page) resolves to the page it is on, or to None once it is gone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from app.comments import (
    comment_container,
    fetch_comments,
    indexed,
    nodes_for_comment,
    pages_with_changed_children,
    parse_dc_comment,
    threaded,
)
from app.confluence import ConfluenceClient
from app.models import Comment, Page
from tests import conftest
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_content import content_of


@pytest.fixture(params=["cloud", "datacenter"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeConfluence]:
    with FakeConfluence(request.param) as server:
        server.add_space("ENG", "Engineering")
        server.add_user("acc-1", "Ada Lovelace")
        server.max_limit = 2  # every list of more than two comments is paginated
        yield server


def client_of(fake: FakeConfluence) -> ConfluenceClient:
    settings = conftest.make_settings(
        confluence_base_url=fake.base_url, confluence_deployment=fake.deployment, **fake.credentials
    )
    return ConfluenceClient(settings)


async def page_comments(fake: FakeConfluence, page_id: str) -> list[Comment]:
    async with client_of(fake) as client:
        page = await client.get_page(page_id)
        return await fetch_comments(client, page)


async def test_replies_nested_and_paginated_are_fetched_with_their_thread(fake: FakeConfluence) -> None:
    fake.put_page("501", title="Design", body="<p>Cache for ten minutes.</p>", space_key="ENG")
    content = content_of(fake)
    root = content.add_comment("501", "<p>Why ten?</p>", author_id="acc-1")
    replies = [content.add_reply(root, f"<p>Reply {n} says marmot {n}.</p>") for n in range(3)]
    nested = content.add_reply(replies[1], "<p>Nested pangolin answer.</p>")
    inline = content.add_comment("501", "<p>Unit?</p>", kind="inline", selection="ten minutes")
    inline_reply = content.add_reply(inline, "<p>Seconds, says the narwhal.</p>")
    closed = content.add_comment("501", "<p>Typo.</p>", kind="inline", selection="Cache", resolution="resolved")
    closed_reply = content.add_reply(closed, "<p>Fixed, the okapi says.</p>")

    comments = await page_comments(fake, "501")
    by_id = {c.id: c for c in comments}
    assert set(by_id) == {root, *replies, nested, inline, inline_reply, closed, closed_reply}
    assert [by_id[r].parent_id for r in replies] == [root] * 3 and by_id[nested].parent_id == replies[1]
    assert by_id[inline_reply].kind == "inline" and by_id[inline_reply].highlighted == "ten minutes"
    assert by_id[closed_reply].resolved, "a reply in a resolved inline thread is closed with it"
    assert {c.id for c in indexed(comments)} == {root, *replies, nested, inline, inline_reply}
    if fake.deployment == "cloud":
        assert fake.count("/children") >= 1 + 3 + 1 + 1, "one children list per comment, replies included"
    else:  # Data Center: `depth=all` lists replies with the roots, `ancestors` names their parents
        assert fake.count("/children") == 0 and fake.count("/child/comment") >= 1

    settings = conftest.make_settings()
    page = await _page(fake, "501")
    reply_nodes = nodes_for_comment(page, settings, by_id[inline_reply], {})
    assert reply_nodes and reply_nodes[0].metadata["header_path"].startswith("Design > Reply by")
    assert "ten minutes" in reply_nodes[0].text and "narwhal" in reply_nodes[0].text


async def _page(fake: FakeConfluence, page_id: str) -> Page:
    async with client_of(fake) as client:
        return await client.get_page(page_id)


async def test_a_comment_named_alone_resolves_to_its_page_or_to_none_when_gone(fake: FakeConfluence) -> None:
    fake.put_page("502", title="Runbook", body="<p>Restart the pump.</p>", space_key="ENG")
    content = content_of(fake)
    footer = content.add_comment("502", "<p>Which pump?</p>")
    inline = content.add_comment("502", "<p>Pump two.</p>", kind="inline", selection="the pump")
    async with client_of(fake) as client:
        assert await comment_container(client, footer) == ("502", "page")
        assert await comment_container(client, inline) == ("502", "page")
        content.remove_comment(footer)
        assert await comment_container(client, footer) is None
        assert await comment_container(client, "999999999") is None


def test_a_data_center_reply_joins_its_thread() -> None:
    """A v1 reply names its parent in `ancestors` (root first); whatever its own `extensions` say, it is
    closed with a resolved inline root and carries the root's anchored passage."""
    root = parse_dc_comment(
        {
            "id": "1",
            "extensions": {
                "location": "inline",
                "resolution": {"status": "resolved"},
                "inlineProperties": {"originalSelection": "ten minutes"},
            },
        }
    )
    reply = parse_dc_comment({"id": "2", "ancestors": [{"id": "1", "type": "comment"}], "extensions": {}})
    deeper = parse_dc_comment(
        {"id": "3", "ancestors": [{"id": "1", "type": "comment"}, {"id": "2", "type": "comment"}], "extensions": {}}
    )
    on_page = parse_dc_comment({"id": "4", "ancestors": [{"id": "501", "type": "page"}], "extensions": {}})
    assert (reply.parent_id, deeper.parent_id, on_page.parent_id) == ("1", "2", None)
    threads = {c.id: c for c in threaded([deeper, root, reply, on_page])}
    assert all(threads[i].resolved and threads[i].kind == "inline" for i in "123")
    assert threads["3"].highlighted == "ten minutes" and not threads["4"].resolved
    assert [c.id for c in indexed(list(threads.values()))] == ["4"]


async def test_pages_with_changed_children_by_cql(fake: FakeConfluence) -> None:
    """One CQL search lists pages whose comments or attachments changed since a time, each page once; the
    query starts a day early (CQL dates are in the user's time zone) and `version.when` decides."""
    fake.put_page("503", title="Log", body="<p>x</p>", space_key="ENG")
    fake.put_page("504", title="News", body="<p>y</p>", space_key="ENG", content_type="blogpost")
    fake.put_page("505", title="Quiet", body="<p>z</p>", space_key="ENG")
    content = content_of(fake)
    before = datetime.now(UTC) - timedelta(minutes=1)
    content.add_comment("503", "<p>a</p>")
    content.add_comment("503", "<p>b</p>")
    content.add_attachment("504", "n.txt", "text/plain", b"n")
    async with client_of(fake) as client:
        assert sorted(await pages_with_changed_children(client, before)) == [("503", "page"), ("504", "blogpost")]
        assert await pages_with_changed_children(client, datetime.now(UTC) + timedelta(minutes=5)) == []
    assert fake.count("/content/search") >= 2
