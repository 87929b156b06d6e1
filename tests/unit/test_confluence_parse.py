"""Reading Confluence responses: the captured real ones, and the edge cases of links and restrictions."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.confluence_parse import (
    SpaceInfo,
    build_cloud_page,
    has_read_restrictions,
    next_url,
    parse_ancestors,
    parse_cloud_content,
    parse_datetime,
    parse_dc_page,
    read_restricted,
)
from app.errors import ConfluenceProtocolError


def corpus_dir() -> Path:
    override = os.environ.get("CORPUS_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2].parent / "shared" / "corpus"


def load_sample(name: str) -> Any:
    path = corpus_dir() / "api" / name
    if not path.is_file():
        pytest.skip(f"corpus sample {path} is absent (set CORPUS_DIR to the shared corpus)")
    return json.loads(path.read_text(encoding="utf-8"))


def test_real_cloud_v2_page() -> None:
    content = parse_cloud_content(load_sample("cloud_v2_get_page_aai-cli.json"), "page")
    assert (content.id, content.version, content.space_id, content.status) == (
        "3964929",
        2,
        "98309",
        "current",
    )
    assert content.title == "aai-cli skill doc test page (updated)"
    assert content.body_storage == "Updated body content for skill documentation."
    assert content.author_id == "712020:3fd582db-3261-4930-b192-171d1cb74d1f"
    assert content.last_modified == datetime(2026, 5, 27, 7, 13, 32, 34000, tzinfo=UTC)
    page = build_cloud_page(
        content,
        space=SpaceInfo("98309", "SD", "Service Desk"),
        base_url="https://ignored.example",
        author="M. E.",
    )
    assert (
        page.url
        == "https://marsellewing.atlassian.net/wiki/spaces/SD/pages/3964929/aai-cli+skill+doc+test+page+updated"
    )
    assert (page.space_key, page.space_name, page.author, page.labels) == ("SD", "Service Desk", "M. E.", ())


def test_real_datacenter_page() -> None:
    page = parse_dc_page(load_sample("dc_zulip_page_api_response.json"), base_url="https://ignored.example")
    assert (page.id, page.title, page.version, page.content_type) == (
        "123456",
        "Architecture Overview",
        1,
        "page",
    )
    assert (page.space_key, page.space_name, page.status) == ("ENG", "Engineering", "current")
    assert page.url == "https://wiki.example.com/spaces/ENG/pages/123456/Architecture+Overview"
    assert page.last_modified == datetime(2019, 8, 16, 15, 41, 14, 448000, tzinfo=UTC)
    assert (page.author, page.author_id) == ("Anonymous", None)  # an anonymous edit has no user key
    assert (page.body_storage, page.labels, page.ancestors, page.restricted) == ("", (), (), False)


@pytest.mark.parametrize(
    ("base", "link", "expected"),
    [
        ("https://x.atlassian.net/wiki", "/wiki/api/v2/pages?cursor=abc", "https://x.atlassian.net/wiki/api/v2/pages?cursor=abc"),
        ("https://x.atlassian.net/wiki", "/rest/api/content/search?cursor=a", "https://x.atlassian.net/wiki/rest/api/content/search?cursor=a"),
        ("https://dc.example.com", "/rest/api/content/search?start=25", "https://dc.example.com/rest/api/content/search?start=25"),
        ("https://dc.example.com/confluence", "/rest/api/space?start=25", "https://dc.example.com/confluence/rest/api/space?start=25"),
        ("https://x.example", "https://y.example/next", "https://y.example/next"),
    ],
)  # fmt: skip
def test_next_url(base: str, link: str, expected: str) -> None:
    assert next_url({"_links": {"next": link}}, base) == expected


def test_no_next_url_on_the_last_page() -> None:
    assert next_url({"_links": {}}, "https://x") is None
    assert next_url({}, "https://x") is None


@pytest.mark.parametrize(
    ("restrictions", "restricted"),
    [
        ({"user": {"results": [], "size": 0}, "group": {"results": [], "size": 0}}, False),
        ({"user": {"results": [{"accountId": "a"}], "size": 1}, "group": {"results": []}}, True),
        ({"user": {"results": []}, "group": {"results": [{"name": "hr"}], "size": 1}}, True),
        ({"user": {"size": 2}}, True),
        ({}, False),
    ],
)
def test_read_restrictions(restrictions: dict[str, Any], restricted: bool) -> None:
    assert has_read_restrictions({"operation": "read", "restrictions": restrictions}) is restricted


def test_unusable_responses_are_protocol_errors() -> None:
    with pytest.raises(ConfluenceProtocolError, match=r"version\.number"):
        parse_cloud_content({"id": "1", "title": "t", "status": "current", "spaceId": "2"}, "page")
    with pytest.raises(ConfluenceProtocolError, match="status"):
        parse_dc_page(
            {
                "id": "1",
                "title": "t",
                "status": "weird",
                "space": {"key": "K"},
                "version": {"number": 1, "when": "2024-01-01T00:00:00Z"},
            },
            base_url="https://x",
        )
    with pytest.raises(ConfluenceProtocolError, match="timestamp"):
        parse_datetime("yesterday")


def test_naive_timestamps_are_read_as_utc() -> None:
    assert parse_datetime("2024-01-02T03:04:05") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_datetime("2024-01-02T05:04:05+02:00") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_ancestors_of_every_type_are_kept_root_first() -> None:
    data = {"results": [{"id": "1", "type": "page"}, {"id": "2", "type": "folder"}, {"id": "3"}]}
    assert parse_ancestors(data) == [("1", "page"), ("2", "folder"), ("3", "page")]


def test_restrictions_without_both_subject_kinds_are_refused_not_read_as_open() -> None:
    groups_only = {"restrictions": {"group": {"results": [], "size": 0}, "_expandable": {"user": "/x"}}}
    with pytest.raises(ConfluenceProtocolError, match="user"):
        read_restricted(groups_only)
    page = {
        "id": "1",
        "title": "t",
        "status": "current",
        "space": {"key": "K"},
        "version": {"number": 1, "when": "2024-01-01T00:00:00Z"},
        "restrictions": {"read": groups_only},
    }
    with pytest.raises(ConfluenceProtocolError):
        parse_dc_page(page, base_url="https://x")
    empty = {"results": [], "size": 0}
    assert read_restricted({"restrictions": {"user": empty, "group": {"results": [{"name": "hr"}], "size": 1}}})
