"""Permission webhooks: which page or space they name (app.permission_events via app.webhook.parse_event)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from app.errors import WebhookRejected
from app.permission_events import FolderEvent, SpacePermissionEvent
from app.webhook import PageEvent, parse_event


def parse(body: Mapping[str, object], event: str | None = None) -> object:
    return parse_event(json.dumps(body).encode(), event)


def test_forge_page_permissions_event_names_the_page() -> None:
    body = {"eventType": "avi:confluence:permissions_updated:page", "content": {"id": "123", "type": "page"}}
    assert parse(body) == PageEvent("page_permissions_updated", "123", "page")


@pytest.mark.parametrize("name", ["content_permissions_updated", "content_restrictions_updated"])
def test_connect_and_data_center_restriction_events(name: str) -> None:
    assert parse({"event": name, "content": {"id": 77, "contentType": "blogpost"}}) == PageEvent(name, "77", "blogpost")
    assert parse({"page": {"id": "78"}}, event=name) == PageEvent(name, "78", "page")  # Cloud REST hook: URL event


def test_space_permission_event_names_the_space() -> None:
    assert parse({"event": "space_permissions_updated", "space": {"key": "OPS"}}) == SpacePermissionEvent(
        "space_permissions_updated", "OPS"
    )
    with pytest.raises(WebhookRejected) as rejected:
        parse({"event": "space_permissions_updated", "space": {}})
    assert rejected.value.status_code == 422


def test_permission_event_without_content_is_rejected() -> None:
    with pytest.raises(WebhookRejected) as rejected:
        parse({"event": "content_permissions_updated"})
    assert rejected.value.status_code == 422


def test_other_space_events_are_still_ignored() -> None:
    assert type(parse({"event": "space_updated", "space": {"key": "OPS"}})).__name__ == "Ignored"


@pytest.mark.parametrize(
    "body",
    [
        {"eventType": "avi:confluence:permissions_updated:folder", "content": {"id": "900", "type": "folder"}},
        {"eventType": "avi:confluence:permissions_updated:folder", "folder": {"id": "900"}},
        {"eventType": "avi:confluence:moved:folder", "folder": {"id": "900"}},
        {"event": "content_permissions_updated", "content": {"id": 900, "type": "folder"}},
    ],
)
def test_folder_events_name_the_folder_not_a_page(body: Mapping[str, object]) -> None:
    """A folder sits on its pages' paths: its restriction or move must be re-evaluated as a folder (fetching
    it as a page answers 404, and rejecting the event leaves its pages under their old path)."""
    parsed = parse(body)
    assert isinstance(parsed, FolderEvent) and parsed.folder_id == "900"


def test_folder_event_without_a_folder_is_rejected() -> None:
    with pytest.raises(WebhookRejected) as rejected:
        parse({"eventType": "avi:confluence:moved:folder", "space": {"key": "ENG"}})
    assert rejected.value.status_code == 422
