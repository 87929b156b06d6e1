"""Which webhooks say that who may read something changed, and what they name.

Names, after `app.webhook.normalise_event` (Forge/Connect `avi:confluence:<action>:<type>` becomes
`<type>_<action>`):

- a page's or blog post's read restrictions: Forge `avi:confluence:permissions_updated:page` (and `:blogpost`)
  → `page_permissions_updated`; Connect and Data Center `content_permissions_updated` and
  `content_restrictions_updated` (also `page_restrictions_updated`, `blogpost_restrictions_updated`, names some
  Data Center versions use). The content is in `content`, `page` or `blogpost`. The page job that follows
  re-reads that page's restriction; its descendants follow through their stored paths, and nothing is
  re-embedded unless the content changed too.
- a space's permissions: `space_permissions_updated` (Connect/Forge `avi:confluence:permissions_updated:space`),
  naming `space.key`: the space's read permission is re-read (`refresh_space_access`).

- a folder on a path (Cloud only): Forge `avi:confluence:<action>:folder` (`folder_moved`,
  `folder_permissions_updated`, ...) or a content permission event about content of type `folder`: the folder's
  restriction and path are re-read and its indexed descendants' paths follow (`refresh_folder_access`).

Neither product sends an event when group membership changes: that is what `PERMISSION_SYNC_INTERVAL` is for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONTENT_PERMISSION_EVENTS = frozenset(
    {
        "page_permissions_updated",
        "blogpost_permissions_updated",
        "content_permissions_updated",
        "content_restrictions_updated",
        "page_restrictions_updated",
        "blogpost_restrictions_updated",
    }
)
SPACE_PERMISSION_EVENTS = frozenset({"space_permissions_updated"})
#: Forge `avi:confluence:<action>:folder` normalises to `folder_<action>` (moved, permissions_updated, ...).
FOLDER_EVENT_PREFIX = "folder_"
_MAX_SPACE_KEY = 255


@dataclass(frozen=True, slots=True)
class SpacePermissionEvent:
    event: str
    space_key: str


@dataclass(frozen=True, slots=True)
class FolderEvent:
    """A folder changed (moved, restricted, removed). Folders are not indexed, but they sit on their pages'
    paths: the job re-reads the folder's restriction and path and rewrites its descendants' stored paths."""

    event: str
    folder_id: str


def folder_object(event: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The folder an event is about: any `folder_*` event's `folder` (or `content`) object, or a content
    permission event (Connect `content_permissions_updated`) whose `content.type` is `folder`."""
    folder = payload.get("folder")
    content = payload.get("content")
    if event.startswith(FOLDER_EVENT_PREFIX):
        for value in (folder, content):
            if isinstance(value, dict):
                return value
        return None
    if event in CONTENT_PERMISSION_EVENTS:
        if isinstance(folder, dict):
            return folder
        if isinstance(content, dict) and (content.get("type") or content.get("contentType")) == "folder":
            return content
    return None


def content_object(payload: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The changed content and its type ('page' | 'blogpost') from a permission event body, if any."""
    for key in ("content", "page", "blogpost", "blog"):
        value = payload.get(key)
        if isinstance(value, dict):
            kind = value.get("type") or value.get("contentType") or ("blogpost" if key.startswith("blog") else "page")
            return value, "blogpost" if kind == "blogpost" else "page"
    return None


def space_key_of(payload: dict[str, Any]) -> str | None:
    """`space.key` (Connect, Data Center) or `space.spaceKey`; None when absent or not a plausible key."""
    space = payload.get("space")
    if not isinstance(space, dict):
        return None
    key = space.get("key", space.get("spaceKey"))
    if isinstance(key, str) and 0 < len(key.strip()) <= _MAX_SPACE_KEY and "\x00" not in key:
        return key.strip()
    return None
