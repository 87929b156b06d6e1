"""Webhook bodies as Confluence really sends them, and the ones it must refuse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import WebhookRejected
from app.webhook import CommentEvent, Ignored, PageEvent, normalise_event, parse_event
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
    if "comment" in path.name and b'"parent"' not in _load(path):
        assert isinstance(result, CommentEvent)  # names only its comment: the page is looked up
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
        {"event": "comment_created", "comment": {"text": "no id"}},
        {"event": "space_created", "space": {"key": "X"}},
        {"event": "attachment_created", "attachment": {"id": 3}},
    ],
)
def test_ignored_events(body: dict[str, object]) -> None:
    assert isinstance(parse_event(json.dumps(body).encode(), None), Ignored)


@pytest.mark.parametrize(
    ("body", "param", "expected"),
    [
        ({"comment": {"id": "1", "parent": {"id": "2"}}}, "comment_created", PageEvent("comment_created", "2", "page")),
        ({"comment": {"id": "1", "parent": {"id": "2"}}}, None, PageEvent("comment_updated", "2", "page")),
        (
            {"event": "comment_removed", "comment": {"id": 9, "parent": {"id": 7, "contentType": "blogpost"}}},
            None,
            PageEvent("comment_removed", "7", "blogpost"),
        ),
        (
            {"event": "attachment_updated", "attachment": {"id": "att3", "container": {"id": "44"}}},
            None,
            PageEvent("attachment_updated", "44", "page"),
        ),
        (
            {"event": "attachment_trashed", "attachments": [{"id": "att3"}], "page": {"id": 45}},
            None,
            PageEvent("attachment_trashed", "45", "page"),
        ),
        (
            {"attachment": {"id": "att3", "container": {"id": "46", "type": "page"}}},
            "avi:confluence:restored:attachment",
            PageEvent("attachment_restored", "46", "page"),
        ),
    ],
)
def test_comment_and_attachment_events_reindex_their_page(
    body: dict[str, object], param: str | None, expected: PageEvent
) -> None:
    assert parse_event(json.dumps(body).encode(), param) == expected


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


# --- malformed and hostile bodies: always a 4xx with a reason, never another exception (issue 10) ------------
@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b'{"event": "page_updated", "page": {"id": ' + b"7" * 5000 + b"}}", 400, "too many digits"),
        (b'{"pad": ' + b"1" * 4301 + b', "page": {"id": 1}}', 400, "too many digits"),  # anywhere in the body
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        (b'{"page": ' * 50_000 + b"1" + b"}" * 50_000, 400, "nested too deeply"),
        (b'{"page": {"id": ' + b"9" * 33 + b"}}", 422, "longer than 32 digits"),  # as long as a string id may be
        (b'{"page": {"id": "' + b"9" * 33 + b'"}}', 422, "longer than 32 digits"),
        ('{"page": {"id": "\u00b2\u00b3"}}'.encode(), 422, "string of digits"),  # superscripts pass str.isdigit
        ('{"page": {"id": "\u0661\u0662"}}'.encode(), 422, "string of digits"),  # Arabic-Indic digits too
        (b'{"event": "page_updated\\u0000", "page": {"id": 1}}', 422, "event name"),  # Postgres text holds no NUL
        (b'{"event": "page_updated\\ud800", "page": {"id": 1}}', 422, "event name"),  # nor a lone surrogate
        (b'{"event": "' + b"e" * 101 + b'", "page": {"id": 1}}', 422, "event name"),
    ],
)
def test_hostile_bodies_get_a_4xx_with_a_reason(raw: bytes, status: int, reason: str) -> None:
    with pytest.raises(WebhookRejected) as info:
        parse_event(raw, None)
    assert info.value.status_code == status
    assert reason in str(info.value)


def test_numeric_ids_up_to_the_cap_are_accepted() -> None:
    body = b'{"page": {"id": ' + b"9" * 32 + b"}}"
    assert parse_event(body, "page_updated") == PageEvent("page_updated", "9" * 32, "page")


def test_event_from_the_url_obeys_the_same_rule() -> None:
    with pytest.raises(WebhookRejected) as info:
        parse_event(b'{"page": {"id": 1}}', "page_updated\x00")
    assert info.value.status_code == 422


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_ids = st.integers(min_value=-(10**60), max_value=10**60) | st.text(max_size=40) | _scalars
_shaped = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(["page_updated", "blog_created", "label_added", "comment_created"]) | st.text(),
        "page": st.fixed_dictionaries({}, optional={"id": _ids, "idAsString": _ids, "contentType": _json_values}),
        "blogpost": st.dictionaries(st.sampled_from(["id", "contentType"]), _ids, max_size=2),
        "labeled": _json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(
    body=_shaped.map(lambda d: json.dumps(d).encode())
    | _json_values.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=300),
    event=st.none() | st.text(max_size=120),
)
def test_parse_event_fuzz_answers_or_rejects_with_4xx(body: bytes, event: str | None) -> None:
    """Whatever the bytes: a PageEvent with a canonical id, an Ignored, or a 4xx WebhookRejected with a
    reason. Any other exception would be a 500 from the route."""
    try:
        result = parse_event(body, event)
    except WebhookRejected as exc:
        assert 400 <= exc.status_code < 500 and str(exc)
        return
    if isinstance(result, PageEvent):
        assert result.page_id.isascii() and result.page_id.isdigit() and len(result.page_id) <= 32
        assert re.fullmatch(r"[a-z0-9_:.\-]{1,100}", result.event)
