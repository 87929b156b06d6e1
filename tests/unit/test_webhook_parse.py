"""Webhook bodies as Confluence really sends them, and the ones it must refuse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.errors import WebhookRejected
from app.webhook import Ignored, PageEvent, normalise_event, parse_event
from tests.conftest import corpus_dir


def _corpus_bodies() -> list[Path]:
    folder = corpus_dir() / "webhooks"
    return sorted(folder.glob("*")) if folder.is_dir() else []


def _load(path: Path) -> bytes:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".mjs":  # `export default {...}`: a JS module around a JSON object
        text = re.sub(r"^\s*export\s+default\s+", "", text.strip()).rstrip(";")
    return text.encode()


@pytest.mark.parametrize("path", _corpus_bodies(), ids=lambda p: p.name)
def test_every_real_body_is_understood(path: Path) -> None:
    result = parse_event(_load(path), None)
    if "comment" in path.name:
        assert isinstance(result, Ignored)
    else:
        assert isinstance(result, PageEvent)
        assert result.page_id.isdigit()


def test_corpus_present_or_skipped() -> None:
    if not _corpus_bodies():
        pytest.skip(f"no webhook corpus at {corpus_dir() / 'webhooks'} (shared/ is beside the repo in CI)")


@pytest.mark.parametrize(
    ("body", "param", "expected"),
    [
        (
            {"event": "page_created", "page": {"id": 123456}},
            None,
            PageEvent("page_created", "123456", "page"),
        ),
        (
            {"page": {"id": "10000001", "contentType": "page"}},
            "page_updated",
            PageEvent("page_updated", "10000001", "page"),
        ),
        ({"page": {"id": 13139970}}, None, PageEvent("page_updated", "13139970", "page")),
        ({"event": "blog_created", "blog": {"id": 77}}, None, PageEvent("blog_created", "77", "blogpost")),
        (
            {"blogpost": {"id": "78", "contentType": "blogpost"}},
            "blog_updated",
            PageEvent("blog_updated", "78", "blogpost"),
        ),
        ({"page": {"id": 5}}, "avi:confluence:trashed:page", PageEvent("page_trashed", "5", "page")),
        (
            {"event": "page_moved", "page": {"id": 9}, "oldParent": {"id": 1}},
            None,
            PageEvent("page_moved", "9", "page"),
        ),
        ({"page": {"idAsString": "0042"}}, "page_removed", PageEvent("page_removed", "42", "page")),
    ],
)
def test_page_events(body: dict[str, object], param: str | None, expected: PageEvent) -> None:
    assert parse_event(json.dumps(body).encode(), param) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"event": "comment_created", "comment": {"id": 1}},
        {"event": "space_created", "space": {"key": "X"}},
        {"event": "attachment_created", "attachment": {"id": 3}},
        {"comment": {"id": "1", "parent": {"id": "2"}}},
    ],
)
def test_ignored_events(body: dict[str, object]) -> None:
    assert isinstance(parse_event(json.dumps(body).encode(), None), Ignored)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"not json", 400),
        (b"\xff\xfe", 400),
        (b"[1, 2]", 422),
        (b'{"event": "page_updated"}', 422),
        (b'{"event": "page_updated", "page": {}}', 422),
        (b'{"event": "page_updated", "page": {"id": "abc"}}', 422),
        (b'{"event": "page_updated", "page": {"id": -4}}', 422),
        (b'{"event": "page_updated", "page": {"id": true}}', 422),
        (b'{"event": "page_updated", "page": {"id": "1; DROP TABLE x"}}', 422),
        (b'{"event": "page_updated", "page": {"id": "' + b"9" * 40 + b'"}}', 422),
    ],
)
def test_bad_bodies(raw: bytes, status: int) -> None:
    with pytest.raises(WebhookRejected) as info:
        parse_event(raw, None)
    assert info.value.status_code == status
    assert str(info.value)


def test_normalise_event() -> None:
    assert normalise_event(" Page_Updated ") == "page_updated"
    assert normalise_event("avi:confluence:created:blogpost") == "blogpost_created"
