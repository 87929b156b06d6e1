"""Contract tests: real captured Confluence responses (`shared/corpus/api`) replayed through `ConfluenceClient`.

The fake server is written from Atlassian's documentation; these tests hold the client against what real sites
actually sent. Each request the client makes is answered by an `httpx.MockTransport` from the captures (the
page, its breadcrumb), and the few resources nobody captured (space, restrictions, users) by minimal bodies of
the documented shape. The transport also checks every request against the spec rules the fake enforces
(repeated `status` values within the operation's enum), so a capture replayed here exercises the same client
code as production. Skipped cleanly when the corpus is absent (a fresh clone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.confluence import ConfluenceClient
from app.confluence_parse import dc_ancestor_ids
from tests import conftest

CLOUD_BASE = "https://querypie.atlassian.net/wiki"
V2_PAGE_STATUSES = {"current", "archived", "trashed", "deleted", "historical", "draft"}
QUERYPIE_IDS = ["1911652402", "544375741", "544379140", "544381877", "544382364", "568918170"]


def corpus_file(*parts: str) -> Path:
    path = conftest.corpus_dir().joinpath("api", *parts)
    if not path.is_file():
        pytest.skip(f"corpus sample {path} is absent (set CORPUS_DIR to the shared corpus)")
    return path


def load(*parts: str) -> Any:
    return json.loads(corpus_file(*parts).read_text(encoding="utf-8"))


class Replay:
    """Answers the client's requests from captured bodies; remembers every request it saw."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        statuses = request.url.params.get_list("status")
        if path.startswith("/wiki/api/v2/pages/") and path.count("/") == 5:
            # V2 Page "Get page by id": `status` is repeated, each value in the enum (the fake's rule too).
            assert statuses and set(statuses) <= V2_PAGE_STATUSES, statuses
        body = self.routes.get(path)
        if body is None and path.endswith("/restriction/byOperation/read"):
            empty = {"results": [], "start": 0, "limit": 100, "size": 0}
            body = {"operation": "read", "restrictions": {"user": empty, "group": empty}}
        if body is None:
            return httpx.Response(404, json={"statusCode": 404, "message": f"nothing captured for {path}"})
        return httpx.Response(200, json=body(request) if callable(body) else body)


def client_for(base_url: str, replay: Replay, **credentials: str) -> ConfluenceClient:
    settings = conftest.make_settings(confluence_base_url=base_url, **credentials)
    return ConfluenceClient(settings, transport=httpx.MockTransport(replay))


@pytest.mark.parametrize("page_id", QUERYPIE_IDS)
async def test_real_cloud_pages_and_breadcrumbs_through_the_client(page_id: str) -> None:
    page_v2 = load("querypie", f"{page_id}.page.v2.json")
    ancestors_v1 = load("querypie", f"{page_id}.ancestors.v1.json")["results"]
    space_key = page_v2["_links"]["webui"].split("/")[2]
    author = page_v2["version"]["authorId"]
    routes: dict[str, Any] = {
        f"/wiki/api/v2/pages/{page_id}": page_v2,
        # V2 Ancestors answers {id, type} only, root first: the captured v1 breadcrumb in that shape.
        f"/wiki/api/v2/pages/{page_id}/ancestors": {
            "results": [{"id": a["id"], "type": a["type"]} for a in ancestors_v1],
            "_links": {},
        },
        "/wiki/api/v2/pages": {"results": [{"id": a["id"], "title": a["title"]} for a in ancestors_v1], "_links": {}},
        f"/wiki/api/v2/spaces/{page_v2['spaceId']}": {"id": page_v2["spaceId"], "key": space_key, "name": "QueryPie"},
        "/wiki/rest/api/user/bulk": {"results": [{"accountId": author, "displayName": "Editor"}], "_links": {}},
    }
    replay = Replay(routes)
    async with client_for(CLOUD_BASE, replay, confluence_email="bot@example.com", confluence_api_token="t") as client:
        page = await client.get_page(page_id, "page")

    assert (page.id, page.title, page.status, page.content_type) == (page_id, page_v2["title"], "current", "page")
    assert page.version == page_v2["version"]["number"]
    assert page.last_modified.isoformat().startswith(page_v2["version"]["createdAt"][:19])
    assert (page.space_key, page.author_id, page.author) == (space_key, author, "Editor")
    assert page.url == page_v2["_links"]["base"] + page_v2["_links"]["webui"]
    assert page.ancestors == tuple(a["title"] for a in ancestors_v1)
    # Real Cloud breadcrumbs start at the space's home page (its web UI link is the space overview).
    assert ancestors_v1[0]["_links"]["webui"] == f"/spaces/{space_key}/overview"
    # The capture asked for atlas_doc_format, not storage: no storage body, and nothing invented.
    assert "storage" not in page_v2.get("body", {}) and page.body_storage == ""
    assert not page.restricted
    checked = {r.url.path for r in replay.seen if r.url.path.endswith("/restriction/byOperation/read")}
    assert checked == {
        f"/wiki/rest/api/content/{i}/restriction/byOperation/read" for i in [page_id, *routes_ids(ancestors_v1)]
    }
    assert {urlsplit(str(r.url)).netloc for r in replay.seen} == {"querypie.atlassian.net"}


def routes_ids(ancestors: list[dict[str, Any]]) -> list[str]:
    return [a["id"] for a in ancestors]


async def test_real_cloud_v2_page_with_a_storage_body() -> None:
    page_v2 = load("cloud_v2_get_page_aai-cli.json")
    base = page_v2["_links"]["base"]
    prefix = urlsplit(base).path
    routes: dict[str, Any] = {
        f"{prefix}/api/v2/pages/{page_v2['id']}": page_v2,
        f"{prefix}/api/v2/pages/{page_v2['id']}/ancestors": {"results": [], "_links": {}},
        f"{prefix}/api/v2/spaces/{page_v2['spaceId']}": {"id": page_v2["spaceId"], "key": "SD", "name": "Service Desk"},
        f"{prefix}/rest/api/user/bulk": {"results": [], "_links": {}},
    }
    replay = Replay(routes)
    async with client_for(base, replay, confluence_email="bot@example.com", confluence_api_token="t") as client:
        page = await client.get_page(page_v2["id"])
    assert page.body_storage == page_v2["body"]["storage"]["value"]
    assert (page.title, page.version, page.space_key) == (page_v2["title"], page_v2["version"]["number"], "SD")
    assert page.author is None and page.author_id == page_v2["version"]["authorId"]  # unknown to user/bulk


async def test_real_datacenter_page_through_the_client() -> None:
    data = load("dc_zulip_page_api_response.json")
    base = data["_links"]["base"]
    replay = Replay({f"/rest/api/content/{data['id']}": data})
    async with client_for(base, replay, confluence_pat="pat") as client:
        page = await client.get_page(data["id"])
    assert (page.id, page.title, page.space_key, page.version) == ("123456", "Architecture Overview", "ENG", 1)
    assert page.url == f"{base}/spaces/ENG/pages/123456/Architecture+Overview"
    request = replay.seen[0]
    assert request.url.params["status"] == "any"
    expand = request.url.params["expand"].split(",")
    # Data Center expands only groups unless users are named: both subject kinds must be asked for.
    assert {"restrictions.read.restrictions.user", "restrictions.read.restrictions.group"} <= set(expand)


@pytest.mark.parametrize("page_id", QUERYPIE_IDS)
def test_real_v1_ancestors_read_root_first(page_id: str) -> None:
    page_v1 = load("querypie", f"{page_id}.page.v1.json")
    expected = [a["id"] for a in load("querypie", f"{page_id}.ancestors.v1.json")["results"]]
    assert dc_ancestor_ids(page_v1) == expected
